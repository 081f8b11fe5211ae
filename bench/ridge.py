#!/usr/bin/env python
"""Benchmark: brainrecon's shared-factorisation ridge vs the Brain-Diffuser reference.

The reference (Brain-Diffuser) standardises fMRI with the train mean/std (ddof=1) and fits
``sklearn.linear_model.Ridge(alpha, fit_intercept=True)`` once for the VDVAE latents
(alpha 5e4), once per CLIP-vision token (257 fits, alpha 6e4) and once per CLIP-text token
(77 fits, alpha 1e5). Ours factorises the design once and streams every target through
one hat matrix per alpha (:class:`brainrecon.regression.KernelRidgeDecoder`, the three
feature spaces sharing the factorisation).

Data are synthetic (a low-rank latent drives both X and the targets, plus noise and
per-target offsets). Targets are generated lazily, column block by column block, so the
process never holds them all; the time spent generating them is measured and excluded
from both sides.

Default: a scaled-down shape that runs in about a minute on a small CPU machine
(n=2000, p=4000, n_test=300, VDVAE-like block of 8192 + 16x768 vision + 8x768 text
tokens), every reference fit timed. ``--full``: the NSD shape (n=8859, p=15724,
n_test=982, 91168 + 257x768 + 77x768); there only ``--ref-tokens`` token fits per CLIP
space are timed and extrapolated to all tokens, and the VDVAE fit is extrapolated
linearly in the number of targets from a fit on ``--ref-vdvae-cols`` columns (the output
says so). Targets quoted by the project (NSD shape): >= 50x faster, <= 1e-4 relative
difference, <= 8 GB peak RSS.

Usage: python bench/ridge.py [--backend numpy|torch|torch_cuda] [--full] [...]
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import numpy as np

from brainrecon.regression import KernelRidgeDecoder

SMALL = dict(n=2000, p=4000, n_test=300, vdvae_dim=8192, vision_tokens=16, text_tokens=8, ref_tokens=None,
             ref_vdvae_cols=None)
FULL = dict(n=8859, p=15724, n_test=982, vdvae_dim=91168, vision_tokens=257, text_tokens=77, ref_tokens=2,
            ref_vdvae_cols=4 * 768)
ALPHA = {"vdvae": 5e4, "clipvision": 6e4, "cliptext": 1e5}


class Clock:
    """Accumulates the seconds spent generating synthetic data (excluded from timings)."""

    def __init__(self):
        self.seconds = 0.0


class SynthTargets:
    """Lazy (n, D) or (n, tokens, dim) float32 targets, generated block by block (deterministic).

    Block ``j`` (a token, or 768 columns of a 2-D block) is ``S @ B_j + noise + offset_j``
    with ``S`` the (n, k) latent shared with X. Supports ``Y[:, a:b]`` as numpy/h5py do.
    """

    def __init__(self, S, space_id, shape, seed, clock, width=768):
        self.S, self.space_id, self.seed, self.clock = S, space_id, seed, clock
        self.shape = (S.shape[0],) + tuple(shape)
        self.dtype = np.dtype("float32")
        self.width = width if len(shape) == 1 else shape[1]

    def block(self, j):
        t0 = time.perf_counter()
        n, k = self.S.shape
        D = self.shape[1] if len(self.shape) == 2 else self.shape[2]
        width = min(self.width, D - j * self.width) if len(self.shape) == 2 else self.width
        rng = np.random.default_rng([self.seed, self.space_id, j])
        Bj = rng.standard_normal((k, width), dtype=np.float32) * np.float32(1.2 / math.sqrt(k))
        Y = self.S @ Bj
        Y += rng.standard_normal((n, width), dtype=np.float32)
        Y += rng.normal(size=width).astype(np.float32) * 2
        self.clock.seconds += time.perf_counter() - t0
        return Y

    def __getitem__(self, key):
        rows, cols = key
        if rows != slice(None):
            raise NotImplementedError("only Y[:, a:b] is supported")
        if len(self.shape) == 3:
            i0, i1, _ = cols.indices(self.shape[1])
            return np.stack([self.block(i) for i in range(i0, i1)], 1)
        a, b, _ = cols.indices(self.shape[1])
        j0, j1 = a // self.width, (b - 1) // self.width + 1
        blk = np.concatenate([self.block(j) for j in range(j0, j1)], 1)
        return blk[:, a - j0 * self.width:b - j0 * self.width]


def make_design(n, n_test, p, k, seed, clock):
    """X (n, p), X_test (n_test, p) float32 and the latent S (n, k) of the training rows."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0])
    S = rng.standard_normal((n + n_test, k), dtype=np.float32)
    A = rng.standard_normal((k, p), dtype=np.float32) / np.float32(math.sqrt(k))
    scale = rng.uniform(0.5, 2.0, p).astype(np.float32)
    offset = rng.normal(size=p).astype(np.float32)
    X = np.empty((n + n_test, p), dtype=np.float32)
    for i in range(0, n + n_test, 1024):
        blk = S[i:i + 1024] @ A
        blk += 2.0 * rng.standard_normal(blk.shape, dtype=np.float32)
        X[i:i + 1024] = blk * scale + offset
    clock.seconds += time.perf_counter() - t0
    return X[:n], X[n:], np.ascontiguousarray(S[:n])


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="NSD shape (n=8859, p=15724, n_test=982, 91168+257x768+77x768)")
    ap.add_argument("--backend", default="numpy", help="himalaya backend for ours: numpy, torch, torch_cuda")
    ap.add_argument("--n", type=int, help="training rows")
    ap.add_argument("--p", type=int, help="voxels")
    ap.add_argument("--n-test", type=int, help="test rows")
    ap.add_argument("--vdvae-dim", type=int, help="VDVAE-like block width (one reference fit)")
    ap.add_argument("--vision-tokens", type=int, help="CLIP-vision tokens of 768 (one reference fit each)")
    ap.add_argument("--text-tokens", type=int, help="CLIP-text tokens of 768 (one reference fit each)")
    ap.add_argument("--ref-tokens", type=int, help="reference token fits timed per CLIP space (default: all; "
                                                   "--full: 2) — the rest is extrapolated")
    ap.add_argument("--ref-vdvae-cols", type=int, help="if set, the reference VDVAE fit is timed on this many columns "
                                                       "and extrapolated linearly in targets (default --full: 3072)")
    ap.add_argument("--ref-dtype", default="float64", choices=["float32", "float64"],
                    help="precision of the sklearn reference (Brain-Diffuser's averaged betas are float64 and "
                         "sklearn casts the targets to X's dtype; float32 is faster but less accurate)")
    ap.add_argument("--target-batch", type=int, default=4096)
    ap.add_argument("--latent", type=int, default=64, help="rank of the planted signal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ref", action="store_true", help="time ours only")
    ap.add_argument("--threads", type=int, help="BLAS/torch threads for both sides (default: libraries' default); "
                                                "on an oversubscribed machine 1 gives the steadiest timings")
    args = ap.parse_args(argv)
    if args.threads:
        import scipy.linalg  # noqa: F401 - load every BLAS/OpenMP library before limiting them
        import sklearn.linear_model  # noqa: F401
        import threadpoolctl
        import torch

        threadpoolctl.threadpool_limits(limits=args.threads)
        torch.set_num_threads(args.threads)
    prof = FULL if args.full else SMALL
    for key, val in prof.items():
        if getattr(args, key) is None:
            setattr(args, key, val)

    from sklearn.linear_model import Ridge

    clock = Clock()
    n, p, m = args.n, args.p, args.n_test
    spaces = [("vdvae", (args.vdvae_dim,)), ("clipvision", (args.vision_tokens, 768)),
              ("cliptext", (args.text_tokens, 768))]
    spaces = [(s, shp) for s, shp in spaces if math.prod(shp) > 0]
    T = sum(math.prod(shp) for _, shp in spaces)
    print(f"ridge bench: backend={args.backend} threads={args.threads or 'default'} n={n} p={p} n_test={m} targets: "
          + " + ".join(f"{s} {'x'.join(map(str, shp))}" for s, shp in spaces) + f" = {T}"
          + (" [NSD shape]" if args.full else " [scaled down; --full for the NSD shape]"), flush=True)

    X, Xt, S = make_design(n, m, p, args.latent, args.seed, clock)
    targets = {s: SynthTargets(S, i + 1, shp, args.seed, clock) for i, (s, shp) in enumerate(spaces)}

    # ------------------------------------------------------------------ ours
    gen0 = clock.seconds
    t0 = time.perf_counter()
    ours, factor, t_factor = {}, None, None
    for s, _ in spaces:
        dec = KernelRidgeDecoder(ALPHA[s], cv=None, backend=args.backend, target_batch=args.target_batch,
                                 x_ddof=1, dtype="float32", progress=False)
        tf = time.perf_counter()
        dec.fit(X, targets[s], factor=factor)
        if factor is None:
            factor, t_factor = dec.factor_, time.perf_counter() - tf
        ours[s] = dec.predict(Xt).reshape(m, -1)
    t_ours = time.perf_counter() - t0 - (clock.seconds - gen0)
    rss_ours = peak_rss_gb()
    print(f"ours: fit+predict {t_ours:.2f} s (regime {factor.regime}; standardisation + Gram matrix {t_factor:.2f} s, "
          f"once for all spaces; synthetic target generation {clock.seconds - gen0:.2f} s excluded)", flush=True)
    gpu = ""
    if args.backend.startswith("torch_cuda"):
        import torch

        gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GB"
    if args.no_ref:
        print(f"peak RSS: {rss_ours:.2f} GB{gpu}")
        return 0

    # ------------------------------------------------------------------ reference
    dt = np.dtype(args.ref_dtype)
    mu = X.mean(0, dtype=np.float64)
    sd = X.std(0, ddof=1, dtype=np.float64)
    Xs = ((X - mu) / sd).astype(dt)
    Xts = ((Xt - mu) / sd).astype(dt)
    t_ref, timed_fits, total_fits, notes = 0.0, 0, 0, []
    worst_abs, worst_target = 0.0, 0.0
    ref_max = 0.0

    def compare(ref, mine):
        nonlocal worst_abs, worst_target, ref_max
        d = np.abs(mine.astype(np.float64) - ref)
        worst_abs = max(worst_abs, float(d.max()))
        ref_max = max(ref_max, float(np.abs(ref).max()))
        den = np.linalg.norm(ref - ref.mean(0), axis=0)
        worst_target = max(worst_target, float((np.linalg.norm(mine - ref, axis=0) / den).max()))

    def fit_time(Y, alpha):
        Y = Y.astype(dt, copy=False)
        t = time.perf_counter()
        pred = Ridge(alpha=alpha, fit_intercept=True).fit(Xs, Y).predict(Xts)
        return time.perf_counter() - t, pred

    token_times, vd = [], None
    for s, shp in spaces:
        src, alpha = targets[s], ALPHA[s]
        if len(shp) == 2:  # one fit per token
            ntok = shp[0]
            todo = ntok if args.ref_tokens is None else min(ntok, args.ref_tokens)
            ts = []
            for i in range(todo):
                Y = src.block(i)
                sec, pred = fit_time(Y, alpha)
                ts.append(sec)
                compare(pred, ours[s][:, i * 768:(i + 1) * 768])
            token_times += ts
            total_fits += ntok
            timed_fits += todo
            t_ref += sum(ts) / todo * ntok
            if todo < ntok:
                notes.append(f"{s}: {todo} of {ntok} token fits timed, mean {np.mean(ts):.2f} s x {ntok} extrapolated")
        else:  # one fit for the whole block
            D = shp[0]
            cols = D if args.ref_vdvae_cols is None else min(D, args.ref_vdvae_cols)
            Y = src[:, 0:cols]
            sec, pred = fit_time(Y, alpha)
            compare(pred, ours[s][:, :cols])
            total_fits += 1
            timed_fits += 1
            if cols < D:
                vd = (s, cols, sec, D)
            else:
                t_ref += sec
    if vd is not None:
        s, cols, sec, D = vd
        if token_times:  # t(T) = c0 + c1 T through the token fits (T=768) and the partial block fit
            t768 = float(np.mean(token_times))
            c1 = max((sec - t768) / (cols - 768), 0.0) if cols != 768 else sec / cols
            est = sec + c1 * (D - cols)
        else:
            est = sec * D / cols
        t_ref += est
        notes.append(f"{s}: one fit timed on {cols} of {D} columns ({sec:.2f} s), extrapolated linearly in the "
                     f"number of targets to {est:.2f} s")
    print(f"reference (sklearn Ridge {args.ref_dtype}, X standardised ddof=1, {total_fits} fits: one per token + "
          f"one VDVAE fit): {t_ref:.2f} s ({timed_fits} fits timed)", flush=True)
    for note in notes:
        print(f"  extrapolated: {note}")
    ratio = t_ref / t_ours
    rel_abs = worst_abs / ref_max
    rss_all = peak_rss_gb()
    print(f"time ours vs reference: {t_ours:.2f} s vs {t_ref:.2f} s -> {ratio:.1f}x faster"
          f"   (project target at the NSD shape: >= 50x)")
    print(f"max relative difference of predictions: {rel_abs:.2e} (max|ours-ref| / max|ref|); "
          f"worst target {worst_target:.2e} (||ours-ref|| / ||ref - mean||)   (target: <= 1e-4)")
    print(f"peak RSS: {rss_ours:.2f} GB after ours (ru_maxrss){gpu}; {rss_all:.2f} GB after the reference"
          f"   (target at the NSD shape: <= 8 GB)")
    if args.full:
        ok = ratio >= 50 and max(rel_abs, worst_target) <= 1e-4 and rss_ours <= 8
        print("NSD-shape targets " + ("met" if ok else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
