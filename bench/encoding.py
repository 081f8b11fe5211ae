"""Time and peak memory of one subject's z / c / zc encoding fits at the real NSD shape.

Random data of the real shape (subj01): 24980 single training trials (``encoding.train_on: single_trial``),
982 test images, 6400 features per space, and the voxels of a voxel set: nsdgeneral (15724) or the whole
brain (``--voxels brainmask``: subj01's func1pt8mm volume is 81 x 104 x 83; the liberal brain mask of a
~1.4 l brain at 1.8 mm holds about 240000 voxels — an estimate, the exact count is that of
``brainmask.nii.gz``, not available here). Each space runs :func:`brainrecon.encoding.encoding_analysis`
(PCA when a space has more features than ``--n-components``, ridge with a CV alpha grid, Pearson r, p,
BH-FDR) and reports the wall time and the process's peak RSS so far (and peak CUDA memory with torch_cuda).

The training responses are generated column slab by column slab (seeded per slab) when the ridge asks for
them, as the workflow streams them from the prepared HDF5 file: a whole-brain Y (24980 x 240000 float32 =
24 GB) is never in memory. ``--fit-voxels N`` fits only the first N voxels (at two sizes, N/4 and N) and
extrapolates the time linearly in the number of voxels to ``--voxels`` (the ridge's work beyond its
factorisations is proportional to the targets), printing both the measured and the projected numbers.

    python bench/encoding.py --small                                   # quick run (~seconds)
    python bench/encoding.py                                           # nsdgeneral, CPU (numpy)
    python bench/encoding.py --voxels brainmask --fit-voxels 4096 --dims z=6400   # whole brain, projected
    python bench/encoding.py --voxels brainmask --backend torch_cuda   # whole brain on a GPU, measured
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time

import numpy as np

VOXEL_SETS = {"nsdgeneral": 15724, "brainmask": 240000}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class LazyColumns:
    """(n, V) float32 responses generated on demand, column slab by slab: ``Y[:, a:b]`` = noise seeded by the
    slab plus the space's weak linear signal ``X[:, :k] @ w[:, a:b]``. Only what the ridge reads is made."""

    def __init__(self, n, V, X, w, seed, slab=1024):
        self.shape, self.dtype = (n, V), np.dtype(np.float32)
        self.X, self.w, self.seed, self.slab = X, w, seed, slab

    def __getitem__(self, key):
        rows, cols = key
        if rows != slice(None) or not isinstance(cols, slice):
            raise IndexError("LazyColumns supports Y[:, a:b]")
        a, b = cols.start or 0, cols.stop if cols.stop is not None else self.shape[1]
        out = np.empty((self.shape[0], b - a), np.float32)
        for s0 in range(a - a % self.slab, b, self.slab):  # whole slabs, each from its own seed
            block = np.random.default_rng([self.seed, s0]).standard_normal((self.shape[0], self.slab), np.float32)
            lo, hi = max(a, s0), min(b, s0 + self.slab)
            out[:, lo - a:hi - a] = block[:, lo - s0:hi - s0]
        k = self.w.shape[0]
        out += self.X[:, :k] @ self.w[:, a:b]
        return out


def run_space(space, d, n_voxels, args, rng, cuda):
    import torch

    from brainrecon.encoding import encoding_analysis
    from brainrecon.encoding.plan import FitSettings

    Xtr = rng.standard_normal((args.n_train, d), dtype=np.float32)
    Xte = rng.standard_normal((args.n_test, d), dtype=np.float32)
    k = min(d, 64)
    w = np.random.default_rng([args.seed, 1]).standard_normal((k, n_voxels), dtype=np.float32) / 32
    Ytr = LazyColumns(args.n_train, n_voxels, Xtr, w, args.seed)
    Yte = np.random.default_rng([args.seed, 2]).standard_normal((args.n_test, n_voxels), np.float32)
    Yte += Xte[:, :k] @ w
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    settings = FitSettings(n_components=args.n_components, alphas=np.logspace(0, 9, args.n_alphas), cv=args.cv,
                           cv_score="l2_neg_loss", backend=args.backend, train_on="single_trial",
                           standardize_X=False, q=0.05, target_batch=args.target_batch, roi_files=())
    t = time.perf_counter()
    res = encoding_analysis(Xtr, Ytr, Xte, Yte, settings, progress=False)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    gpu = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return dt, gpu, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small shape: n=1000, m=200, V=2000, d=800 (PCA to 640)")
    ap.add_argument("--backend", default="numpy", help="himalaya backend: numpy | torch | torch_cuda")
    ap.add_argument("--n-train", type=int, default=24980, help="training rows (subj01: 24980 single trials)")
    ap.add_argument("--n-test", type=int, default=982)
    ap.add_argument("--voxels", default="nsdgeneral", help="nsdgeneral | brainmask | a number of voxels")
    ap.add_argument("--fit-voxels", type=int, default=None,
                    help="fit only this many voxels (and a quarter of it) and extrapolate the time to --voxels")
    ap.add_argument("--dims", default="z=6400,c=6400,zc=6400", help="space=d,... features per space")
    ap.add_argument("--n-components", type=int, default=6400)
    ap.add_argument("--n-alphas", type=int, default=10, help="alphas in logspace(0, 9) (encoding.alphas: 10)")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--target-batch", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n_full = VOXEL_SETS.get(args.voxels) or int(args.voxels)
    if args.small:
        args.n_train, args.n_test, n_full = 1000, 200, 2000
        args.dims, args.n_components = "z=640,c=800,zc=640", 640

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    dims = {k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))}
    cuda = args.backend == "torch_cuda"
    print(
        f"encoding bench: backend={args.backend} n_train={args.n_train} n_test={args.n_test} "
        f"voxels={args.voxels} ({n_full}) fit_voxels={args.fit_voxels or n_full} dims={dims} "
        f"n_components={args.n_components} alphas={args.n_alphas} cv={args.cv} target_batch={args.target_batch} "
        f"torch threads={torch.get_num_threads()}"
    )
    rng = np.random.default_rng(args.seed)
    total = 0.0
    for space, d in dims.items():
        if args.fit_voxels is None or args.fit_voxels >= n_full:
            dt, gpu, res = run_space(space, d, n_full, args, rng, cuda)
            total += dt
            g = f", peak CUDA {gpu:.2f} GB" if gpu is not None else ""
            print(f"{space}: d={d} -> {res['n_components_used']} | {n_full} voxels {dt:.1f} s | "
                  f"peak RSS {peak_rss_gb():.2f} GB{g} | median r {np.median(res['r']):.3f}", flush=True)
            continue
        v1, v2 = max(1, args.fit_voxels // 4), args.fit_voxels
        t1, _, _ = run_space(space, d, v1, args, rng, cuda)
        t2, gpu, res = run_space(space, d, v2, args, rng, cuda)
        per_voxel = max((t2 - t1) / (v2 - v1), 0.0)  # (timing noise can beat the slope at toy sizes)
        fixed = max(t2 - per_voxel * v2, 0.0)
        proj = fixed + per_voxel * n_full
        total += proj
        # memory beyond the measured run: test responses, predictions and per-voxel outputs grow with V
        extra_gb = (n_full - v2) * (args.n_test * 4 * 3 + 8 * 6) / 2**30
        g = f", peak CUDA {gpu:.2f} GB" if gpu is not None else ""
        print(f"{space}: d={d} | measured {v1} voxels {t1:.1f} s, {v2} voxels {t2:.1f} s (peak RSS "
              f"{peak_rss_gb():.2f} GB{g}) -> fixed {fixed:.1f} s + {per_voxel * 1e3:.2f} ms/voxel | projected "
              f"{n_full} voxels: {proj / 60:.1f} min ({proj:.0f} s), peak RSS ~{peak_rss_gb() + extra_gb:.1f} GB", flush=True)
    print(f"total {total / 60:.1f} min ({'projected' if args.fit_voxels else 'measured'}), "
          f"peak RSS {peak_rss_gb():.2f} GB (measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
