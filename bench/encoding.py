"""Time and peak memory of one subject's z / c / zc encoding fits at the real NSD shape.

Random data of the real shape (subj01): n = 8859 training images, 982 test images,
6400 features per space, 15724 nsdgeneral voxels. Each space runs
:func:`brainrecon.encoding.encoding_analysis` (PCA when a space has more features than
``--n-components``, ridge with a CV alpha grid, Pearson r, p, BH-FDR) and reports the
wall time and the process's peak RSS so far (and peak CUDA memory with torch_cuda).

    python bench/encoding.py --small                  # quick run (~seconds)
    python bench/encoding.py                          # real shape, CPU (numpy)
    python bench/encoding.py --backend torch_cuda     # on a GPU
    python bench/encoding.py --dims z=6400,c=59136,zc=6400   # c as raw 77x768 text tokens (PCA)
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time

import numpy as np


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--small", action="store_true", help="small shape: n=1000, m=200, V=2000, d=800 (PCA to 640)"
    )
    ap.add_argument("--backend", default="numpy", help="himalaya backend: numpy | torch | torch_cuda")
    ap.add_argument("--n-train", type=int, default=8859)
    ap.add_argument("--n-test", type=int, default=982)
    ap.add_argument("--voxels", type=int, default=15724)
    ap.add_argument("--dims", default="z=6400,c=6400,zc=6400", help="space=d,... features per space")
    ap.add_argument("--n-components", type=int, default=6400)
    ap.add_argument("--n-alphas", type=int, default=15, help="alphas in logspace(0, 7)")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--target-batch", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.small:
        args.n_train, args.n_test, args.voxels = 1000, 200, 2000
        args.dims, args.n_components = "z=640,c=800,zc=640", 640

    import torch

    from brainrecon.encoding import encoding_analysis
    from brainrecon.encoding.plan import FitSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dims = {k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))}
    cuda = args.backend == "torch_cuda"
    print(
        f"encoding bench: backend={args.backend} n_train={args.n_train} n_test={args.n_test} "
        f"voxels={args.voxels} dims={dims} n_components={args.n_components} alphas={args.n_alphas} cv={args.cv} "
        f"torch threads={torch.get_num_threads()}"
    )
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    # voxels: noise plus (below) a weak linear signal of each space's first 64 features
    Ytr = rng.standard_normal((args.n_train, args.voxels), dtype=np.float32)
    Yte = rng.standard_normal((args.n_test, args.voxels), dtype=np.float32)
    print(f"data: {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_gb():.2f} GB")
    alphas = np.logspace(0, 7, args.n_alphas)
    rows = []
    for space, d in dims.items():
        Xtr = rng.standard_normal((args.n_train, d), dtype=np.float32)
        Xte = rng.standard_normal((args.n_test, d), dtype=np.float32)
        w = rng.standard_normal((min(d, 64), args.voxels), dtype=np.float32) / 32
        Ytr_s = Ytr + Xtr[:, : w.shape[0]] @ w
        Yte_s = Yte + Xte[:, : w.shape[0]] @ w
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t = time.perf_counter()
        settings = FitSettings(n_components=args.n_components, alphas=alphas, cv=args.cv, cv_score="l2_neg_loss",
                               backend=args.backend,
                               train_on="single_trial", standardize_X=False, q=0.05, target_batch=args.target_batch,
                               roi_files=())
        res = encoding_analysis(Xtr, Ytr_s, Xte, Yte_s, settings, progress=False)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        gpu = f", peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if cuda else ""
        line = (
            f"{space}: d={d} -> {res['n_components_used']} | {dt:.1f} s | peak RSS {peak_rss_gb():.2f} GB{gpu} | "
            f"median r {np.median(res['r']):.3f}, significant {res['significant'].mean():.3f}"
        )
        print(line, flush=True)
        rows.append((space, dt))
        del Xtr, Xte, Ytr_s, Yte_s, res
    print(f"total {sum(t for _, t in rows):.1f} s, peak RSS {peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
