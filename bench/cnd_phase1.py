"""Time and peak memory of CnD Phase-1 training steps at the real size, and the paper's schedule in GPU-hours.

Real-size encoder (methods.cnd.phase1 defaults: patch 16, embed 1024, 24 blocks, decoder 512 x 8, MLP ratio
1.0) on subj01's 15724 nsdgeneral voxels (983 patches after wrap padding), random patterns. A step is the
whole Phase-1 step of the training loop: sparsification, two masked views through encoder and decoder, both
InfoNCE terms, backward, gradient clip, AdamW. The first step (allocation, warm-up) is reported apart; the
mean of the next ``--steps`` is the step time. The batch is what memory allows on this machine (``--batch``),
and the paper's batch of 250 is extrapolated linearly (the step's work is proportional to the batch).

The paper's schedule: 500 epochs over subj01's 24980 training trials at batch 250 (99 steps per epoch,
49500 steps). GPU-hours are projected from the FLOPs of a step (counted with torch's FLOP counter) and an
assumed sustained throughput (``--gpu-tflops``; default 200 = a conservative fraction of an H200's bf16 dense
peak) — an estimate until a lent GPU measures it (``--device cuda``).

    python bench/cnd_phase1.py --batch 4 --steps 2            # CPU, real size
    python bench/cnd_phase1.py --device cuda --batch 250       # on a GPU: measured, bf16 autocast
    python bench/cnd_phase1.py --small                         # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=15724)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after the first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train-trials", type=int, default=24980)
    ap.add_argument("--gpu-tflops", type=float, default=200.0, help="assumed sustained GPU throughput, TFLOP/s")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from brainrecon.reconstruct.cnd import Phase1Settings, build_model
    from brainrecon.reconstruct.cnd.losses import double_contrastive_loss
    from brainrecon.reconstruct.cnd.train import param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    over = {"batch_size": max(2, args.batch)}
    if args.small:
        over.update(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
        args.voxels = min(args.voxels, 500)
    s = Phase1Settings.from_mapping(over)
    dev = torch.device(args.device)
    t0 = time.perf_counter()
    model = build_model(s, args.voxels).to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=(s.beta1, s.beta2))
    print(f"cnd phase-1 bench: device={dev} threads={torch.get_num_threads()} voxels={args.voxels} "
          f"patches={model.config.num_patches} params={n_params / 1e6:.1f} M batch={s.batch_size} "
          f"(model built in {time.perf_counter() - t0:.1f} s)", flush=True)
    x = torch.randn(s.batch_size, args.voxels, generator=torch.Generator().manual_seed(0)).to(dev)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else
                torch.autocast("cpu", enabled=False))

    def step(k, count_flops=False):
        gen = torch.Generator().manual_seed(k)
        ctx = None
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            ctx = FlopCounterMode(display=False)
            ctx.__enter__()
        with autocast:
            terms = double_contrastive_loss(model, x, s, gen)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if ctx is not None:
            ctx.__exit__(None, None, None)
            return ctx.get_total_flops()
        return None

    t = time.perf_counter()
    flops = step(0, count_flops=True)
    first = time.perf_counter() - t
    times = []
    for k in range(args.steps):
        t = time.perf_counter()
        step(k + 1)
        times.append(time.perf_counter() - t)
    st = float(np.mean(times)) if times else first
    gpu_mem = f", peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if dev.type == "cuda" else ""
    print(f"first step {first:.1f} s (FLOP-counted), mean of {len(times)} more: {st:.2f} s/step | "
          f"peak RSS {peak_rss_gb():.2f} GB{gpu_mem} | {flops / 1e12:.2f} TFLOP/step at batch {s.batch_size}")
    if args.small:
        print("(--small: tiny sizes; the projection below is not of the real model)")
    paper = Phase1Settings.from_mapping({})
    steps = paper.epochs * (args.train_trials // paper.batch_size)
    scale = paper.batch_size / s.batch_size
    flops_paper = flops * scale
    print(f"paper schedule: {paper.epochs} epochs x {args.train_trials // paper.batch_size} steps of batch "
          f"{paper.batch_size} = {steps} steps, {flops_paper / 1e12:.1f} TFLOP/step (linear in the batch)")
    print(f"  on this device: {st * scale * steps / 3600:.0f} h (measured step x {scale:.1f} x steps)")
    print(f"  on a GPU at an assumed {args.gpu_tflops:.0f} TFLOP/s sustained: "
          f"{flops_paper * steps / (args.gpu_tflops * 1e12) / 3600:.1f} GPU-hours per subject (estimate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
