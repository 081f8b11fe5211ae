"""Brain-Diffuser reconstruction throughput at real model size (random weights, nothing downloaded).

Builds the Versatile Diffusion parts Brain-Diffuser uses from their real configurations —
the image UNet (``UNet2DConditionModel``: block channels 320/640/1280/1280, 2 layers per
block, cross-attention dim 768, 8 heads; diffusers' VD conversion script ``IMAGE_UNET_CONFIG``),
made dual-guided with a second set of transformer blocks of the same shape (the text UNet's
blocks in the real model: same class and sizes, so the same cost), the AutoKL VAE (128/256/
512/512, 2 layers per block, 4 latent channels, scaling 0.18215), CLIP ViT-L/14 text (12 ×
768) and vision (24 × 1024, 224 px / patch 14 → 257 tokens) with projection 768, and a DDIM
scheduler (scaled-linear betas 0.00085-0.012) — with random weights, then times the library's
stage 2 (:func:`brainrecon.reconstruct.braindiffuser.run_stage2`: VAE encode, 37 dual-guided
CFG UNet steps for 50 × 0.75, VAE decode) on random predicted contexts:

- per-image loop (batch 1, what the reference does) and batched calls (``--batch-sizes``);
- for each ``--dtypes`` (float16, bfloat16);
- optionally stage 1 (``--stage1``): the real-size VDVAE (ImageNet64) decoding image by image.

Prints a markdown table (images/s, s/image, UNet step time, peak GPU memory) and writes
``--json`` if given. Needs a CUDA GPU; without one it exits with a message, unless
``--cpu-probe``: one dual-guided CFG UNet call at batch 1 on CPU (float32) and the projected
per-image time, to check the set-up on a machine without a GPU (SPEC §9: ~21 s per step).

Usage::

    python bench/recon_gpu.py                       # GPU: fp16 + bf16, batch 1,2,4,8,16
    python bench/recon_gpu.py --dtypes float16 --batch-sizes 1,8,32 --n-images 64 --stage1
    python bench/recon_gpu.py --cpu-probe           # no GPU: one UNet step on CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ----------------------------------------------------------------------------- real-size parts
def image_unet_config() -> dict:
    return dict(
        sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8,
    )


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    )


class _DonorBlocks:
    """Stands in for the VD text UNet in ``convert_to_dual_guided``: a fresh copy of each
    transformer block of the image UNet (same class and shapes as the text UNet's blocks)."""

    def __init__(self, unet):
        self.unet = unet

    def get_submodule(self, name):
        return copy.deepcopy(self.unet.get_submodule(name))


def build_vd_parts(device, dtype, with_encoders: bool = True):
    """Real-size, random-weight VD parts in the layout of ``load_model("vd", ...)`` (dual-guided)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from brainrecon.models.registry import DDIM_OVERRIDES
    from brainrecon.models.tiny import tiny_clip_tokenizer
    from brainrecon.models.vd import convert_to_dual_guided, set_dual_guidance

    with torch.device(device):
        unet = UNet2DConditionModel(**image_unet_config())
        convert_to_dual_guided(unet, _DonorBlocks(unet))
        vae = AutoencoderKL(**vae_config())
        text = vision = None
        if with_encoders:
            text = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"))
            vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"))
    mods = [m for m in (unet, vae, text, vision) if m is not None]
    for m in mods:
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    set_dual_guidance(unet, 0.4, ("text", "image"), 77, 257)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", steps_offset=1, **DDIM_OVERRIDES)
    return SimpleNamespace(image_unet=unet, vae=vae, text_encoder=text, image_encoder=vision,
                           tokenizer=tiny_clip_tokenizer(77), image_feature_extractor=CLIPImageProcessor(),
                           scheduler=scheduler, text_len=77, image_len=257)


# ----------------------------------------------------------------------------- timing
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_stage2(parts, n_images: int, batch_size: int, dtype, device, steps: int, strength: float,
                guidance: float, image_size: int) -> dict:
    from brainrecon.models.vd import vd_unconditional
    from brainrecon.reconstruct.braindiffuser import context_shapes, run_stage2

    rng = np.random.default_rng(0)
    n = max(n_images, batch_size) // batch_size * batch_size
    (tl, td), (il, idim) = context_shapes(parts)  # (77, 768), (257, 768) at real size
    init = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    text = rng.standard_normal((n, tl, td)).astype(np.float32) * 0.05
    image = rng.standard_normal((n, il, idim)).astype(np.float32) * 0.05
    uncond = vd_unconditional(parts)
    calls = []
    handle = parts.image_unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        # warm-up (kernels, allocator): one batch, 2 steps
        run_stage2(parts, init[:batch_size], text[:batch_size], image[:batch_size], list(range(batch_size)),
                   steps=2, strength=1.0, guidance_scale=guidance, text_weight=0.4, uncond=uncond, dtype=dtype)
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        calls.clear()
        _sync(device)
        t0 = time.perf_counter()
        for i0 in range(0, n, batch_size):
            sl = slice(i0, i0 + batch_size)
            _, n_steps, _ = run_stage2(parts, init[sl], text[sl], image[sl], list(range(i0, i0 + batch_size)),
                                       steps=steps, strength=strength, guidance_scale=guidance, text_weight=0.4,
                                       uncond=uncond, dtype=dtype)
        _sync(device)
        dt = time.perf_counter() - t0
    finally:
        handle.remove()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else float("nan")
    return {"batch_size": batch_size, "n_images": n, "seconds": dt, "images_per_s": n / dt,
            "s_per_image": dt / n, "denoising_steps": n_steps, "unet_calls": len(calls),
            "s_per_unet_call": dt / max(len(calls), 1), "peak_gib": peak}


def time_stage1(device, n_images: int) -> dict:
    from brainrecon.models.vdvae import VDVAE, VDVAEConfig, latent_dims
    from brainrecon.reconstruct.braindiffuser import decode_stage1

    with torch.device(device):
        model = VDVAE(VDVAEConfig())
    model.to(device).eval().requires_grad_(False)
    d = latent_dims(model.config)
    lat = np.random.default_rng(1).standard_normal((n_images, d)).astype(np.float32)
    decode_stage1(model, lat[:1], [0])
    _sync(device)
    t0 = time.perf_counter()
    decode_stage1(model, lat, list(range(n_images)))
    _sync(device)
    dt = time.perf_counter() - t0
    return {"n_images": n_images, "seconds": dt, "images_per_s": n_images / dt, "latent_dims": d}


def cpu_probe(image_size: int, threads: int | None, calls: int = 1) -> dict:
    """Dual-guided CFG UNet calls (batch 1 image → 2 rows) on CPU, float32; the fastest of ``calls``
    (the first includes one-time allocations)."""
    from brainrecon.models.vd import vd_context

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    parts = build_vd_parts("cpu", torch.float32, with_encoders=False)
    build_s = time.perf_counter() - t0
    h = image_size // 8
    x = torch.randn(2, 4, h, h)
    ctx = vd_context(torch.randn(2, 77, 768), torch.randn(2, 257, 768))
    t = torch.tensor(741)
    times = []
    with torch.no_grad():
        for _ in range(max(1, calls)):
            t0 = time.perf_counter()
            parts.image_unet(x, t, encoder_hidden_states=ctx)
            times.append(time.perf_counter() - t0)
    step = min(times)
    return {"device": "cpu", "threads": torch.get_num_threads(), "build_s": build_s, "image_size": image_size,
            "calls_s": times, "s_per_cfg_unet_step": step, "projected_s_per_image_unet_only": 37 * step}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--n-images", type=int, default=16, help="images per measurement (rounded to the batch)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--strength", type=float, default=0.75)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--stage1", action="store_true", help="also time the real-size VDVAE decode (stage 1)")
    ap.add_argument("--cpu-probe", action="store_true", help="no GPU: time one UNet step on CPU")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for --cpu-probe")
    ap.add_argument("--probe-calls", type=int, default=1, help="UNet calls timed by --cpu-probe (fastest reported)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    env = {"torch": torch.__version__, "python": platform.python_version()}
    if args.cpu_probe:
        res = cpu_probe(args.image_size, args.threads, args.probe_calls)
        print(f"CPU probe ({res['threads']} threads, {args.image_size} px, float32): model build {res['build_s']:.1f} s, "
              f"one dual-guided CFG UNet step {res['s_per_cfg_unet_step']:.2f} s "
              f"-> ~{res['projected_s_per_image_unet_only']:.0f} s per image for 37 steps (UNet only)")
        out = {"env": env, "cpu_probe": res}
    else:
        if not torch.cuda.is_available():
            print("bench/recon_gpu.py needs a CUDA GPU (none found). Use --cpu-probe to time one UNet step on CPU.",
                  file=sys.stderr)
            return 2
        device = "cuda"
        env["gpu"] = torch.cuda.get_device_name(0)
        print(f"# Brain-Diffuser stage 2 at real size on {env['gpu']} (torch {env['torch']})\n")
        print(f"{args.steps} DDIM steps x strength {args.strength} = "
              f"{int(args.strength * args.steps)} denoising steps, CFG {args.guidance_scale}, "
              f"{args.image_size} px, dual guidance 0.4 text / 0.6 vision\n")
        print("| dtype | batch | images | images/s | s/image | s/UNet call | peak GiB | vs per-image loop |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            parts = build_vd_parts(device, dtype)
            base = None
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                try:
                    r = time_stage2(parts, args.n_images, bs, dtype, device, args.steps, args.strength,
                                    args.guidance_scale, args.image_size)
                except torch.cuda.OutOfMemoryError:
                    print(f"| {name} | {bs} | - | OOM | | | | |")
                    torch.cuda.empty_cache()
                    break
                if bs == 1:
                    base = r["images_per_s"]  # the per-image loop (the reference runs batch 1)
                speed = f"{r['images_per_s'] / base:.2f}x" if base else "-"
                r.update(dtype=name, speedup_vs_batch1=(r["images_per_s"] / base) if base else None)
                rows.append(r)
                print(f"| {name} | {bs} | {r['n_images']} | {r['images_per_s']:.3f} | {r['s_per_image']:.2f} | "
                      f"{r['s_per_unet_call']:.4f} | {r['peak_gib']:.1f} | {speed} |", flush=True)
            del parts
            torch.cuda.empty_cache()
        best = max(rows, key=lambda r: r["images_per_s"]) if rows else None
        if best:
            print(f"\nbest: {best['dtype']} batch {best['batch_size']}: {best['images_per_s']:.3f} images/s "
                  f"(982 test images ~ {982 / best['images_per_s'] / 60:.1f} min per variant and subject)")
        out = {"env": env, "stage2": rows, "best": best}
        if args.stage1:
            s1 = time_stage1(device, args.n_images)
            print(f"stage 1 (VDVAE ImageNet64, float32, image by image): {s1['images_per_s']:.2f} images/s")
            out["stage1"] = s1
    if args.json:
        from brainrecon.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
