"""Memory / throughput probe of brainrecon.nsd.prepare.prepare_subject at real NSD size.

Writes, into a temporary directory, one subject whose sessions have the real func1pt8mm
volume (81, 104, 83) with 750 trials each (int16, zeros outside a ~240k-voxel brain, so
the .nii.gz is about as large as a real one), an nsdgeneral ROI of 15724 voxels, the
other ROI files and ctabs, a brainmask and a matching experiment design. Then runs
``prepare_subject`` in a child process and reports its peak RSS (getrusage of children)
and the raw-betas throughput.

    python bench/prep_memory.py [--sessions 3] [--format nii.gz|hdf5] [--keep DIR]

Prints ``PASS`` if the child's peak RSS is <= --limit-gb (default 2) GB, else ``FAIL``
(exit status 1).
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (81, 104, 83)  # subj01 func1pt8mm
TPS = 750
N_NSDGENERAL = 15724


def _ellipsoid(shape, frac_radius):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    return (g**2 / np.asarray(frac_radius)[:, None, None, None] ** 2).sum(0) <= 1.0


def write_nifti_stream(path: Path, shape4, affine, blocks, level=1):
    """Write a gzipped int16 NIfTI-1 from an iterator of (X, Y, Z, tb) blocks (low memory)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape4)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=level) as fh:
        fh.write(hdr.binaryblock)
        fh.write(b"\x00" * (352 - len(hdr.binaryblock)))
        for b in blocks:
            fh.write(np.asarray(b, dtype="<i2").tobytes(order="F"))


def make_subject(root: Path, sessions: int, fmt: str, seed: int = 0) -> dict:
    import h5py
    import nibabel as nib
    import scipy.io

    from brainrecon.nsd import layout

    rng = np.random.default_rng(seed)
    aff = np.diag([1.8, 1.8, 1.8, 1.0])
    aff[:3, 3] = -0.9 * np.asarray(SHAPE)
    brain = _ellipsoid(SHAPE, (0.85, 0.85, 0.8))
    # nsdgeneral: the posterior part of the brain, trimmed to exactly N_NSDGENERAL voxels
    cand = np.argwhere(brain)
    order = np.argsort(cand[:, 1] + 0.01 * rng.random(len(cand)), kind="stable")
    sel = cand[order[:N_NSDGENERAL]]
    gen = np.zeros(SHAPE, np.int16)
    gen[tuple(sel.T)] = 1

    def save(p, arr):
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), p)

    paths = {"rois": {}, "ctabs": {}}
    for name in layout.ROI_NAMES:
        p = root / layout.roi_key(1, name)
        if name == "nsdgeneral":
            vol = gen.copy()
        else:
            nlab = len(layout.LABEL_TABLES[name])
            vol = np.zeros(SHAPE, np.int16)
            vol[gen > 0] = rng.integers(0, nlab + 1, int(gen.sum()))
        save(p, vol)
        c = root / layout.ctab_key(1, name)
        c.parent.mkdir(parents=True, exist_ok=True)
        c.write_text("0 Unknown\n" + "".join(f"{k} {v}\n" for k, v in layout.LABEL_TABLES[name].items()))
        paths["rois"][name], paths["ctabs"][name] = p, c
    bm = root / layout.anatomy_key(1, "brainmask")
    save(bm, brain.astype(np.int16))
    paths["brainmask"] = bm

    # design: 750-trial sessions (12 runs x 75 slots, 63/62 stimulus trials), each image x3
    n_trials = sessions * TPS
    n_img = n_trials // 3
    n_shared = max(1, n_img // 10)
    sp = np.zeros((sessions, 12, 75), np.int64)
    for r in range(12):
        n = 63 if r % 2 == 0 else 62
        sp[:, r, 3 : 3 + n] = 1
    mo = rng.permutation(np.repeat(np.arange(1, n_img + 1), 3))
    subjectim = np.zeros((8, n_img), np.int64)
    for s in range(8):
        subjectim[s] = rng.permutation(73000)[:n_img] + 1
    subjectim[:, :n_shared] = subjectim[0, :n_shared]
    ed = root / layout.expdesign_key()
    ed.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(ed, {"masterordering": mo[None].astype(float), "subjectim": subjectim.astype(float),
                          "sharedix": subjectim[0, :n_shared][None].astype(float),
                          "stimpattern": sp.astype(float)})
    paths["expdesign"] = ed

    nb = int(brain.sum())
    bidx = np.flatnonzero(brain.ravel(order="F"))
    paths["betas"] = []
    tb = 50
    for ses in range(1, sessions + 1):
        p = root / layout.betas_key(1, ses, fmt)
        p.parent.mkdir(parents=True, exist_ok=True)

        def blocks():
            for t0 in range(0, TPS, tb):
                n = min(tb, TPS - t0)
                flat = np.zeros((np.prod(SHAPE), n), np.int16)
                flat[bidx] = rng.normal(0, 400, (nb, n)).astype(np.int16)
                yield flat.reshape(*SHAPE, n, order="F")

        if fmt == "nii.gz":
            write_nifti_stream(p, (*SHAPE, TPS), aff, blocks())
        else:
            with h5py.File(p, "w") as f:
                ds = f.create_dataset("betas", shape=(TPS, *SHAPE[::-1]), dtype=np.int16,
                                      chunks=(1, *SHAPE[::-1]))
                t0 = 0
                for b in blocks():
                    ds[t0 : t0 + b.shape[3]] = b.transpose(3, 2, 1, 0)
                    t0 += b.shape[3]
        paths["betas"].append(p)
        print(f"  wrote {p.name}: {p.stat().st_size / 2**20:.0f} MiB", flush=True)
    paths["n_brain"] = nb
    return paths


CHILD = """
import sys, time, json
from brainrecon.nsd.plan import PrepareSettings
from brainrecon.nsd.prepare import prepare_subject
a = json.loads(sys.argv[1])
t = time.time()
prepare_subject(a, a["out"], 1, PrepareSettings.build(voxels=a["voxels"], normalise=a["normalise"]), progress=False)
print("ELAPSED", time.time() - t)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--format", choices=("nii.gz", "hdf5"), default="nii.gz")
    ap.add_argument("--normalise", default="train_zscore")
    ap.add_argument("--voxels", default="nsdgeneral")
    ap.add_argument("--limit-gb", type=float, default=2.0)
    ap.add_argument("--keep", type=Path, default=None, help="write the data here and keep it")
    args = ap.parse_args(argv)

    import json

    tmpctx = tempfile.TemporaryDirectory(prefix="prep_memory_") if args.keep is None else None
    root = Path(tmpctx.name) if tmpctx else args.keep
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.time()
        print(f"generating {args.sessions} sessions of {SHAPE}x{TPS} int16 ({args.format}) under {root}", flush=True)
        paths = make_subject(root, args.sessions, args.format)
        print(f"  generated in {time.time() - t:.0f} s; brain {paths['n_brain']} voxels, nsdgeneral {N_NSDGENERAL}")
        payload = {
            "expdesign": str(paths["expdesign"]), "betas": [str(p) for p in paths["betas"]],
            "rois": {k: str(v) for k, v in paths["rois"].items()},
            "ctabs": {k: str(v) for k, v in paths["ctabs"].items()},
            "brainmask": str(paths["brainmask"]), "out": str(root / "prepared.h5"),
            "voxels": args.voxels, "normalise": args.normalise,
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.time() - t
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr)
            print("FAIL (prepare_subject crashed)")
            return 1
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        elapsed = float([l for l in proc.stdout.splitlines() if l.startswith("ELAPSED")][0].split()[1])
        raw_bytes = args.sessions * int(np.prod(SHAPE)) * TPS * 2
        file_bytes = sum(Path(p).stat().st_size for p in paths["betas"])
        peak_gb = peak_kb / 2**20
        print(f"sessions {args.sessions}, format {args.format}, voxels {args.voxels}, normalise {args.normalise}")
        print(f"prepare_subject: {elapsed:.1f} s (child wall {wall:.1f} s)")
        print(f"raw betas processed: {raw_bytes / 2**20:.0f} MiB -> {raw_bytes / 2**20 / elapsed:.1f} MiB/s "
              f"({file_bytes / 2**20:.0f} MiB on disk -> {file_bytes / 2**20 / elapsed:.1f} MiB/s)")
        print(f"output: {(root / 'prepared.h5').stat().st_size / 2**20:.0f} MiB")
        print(f"peak RSS of prepare child: {peak_gb:.3f} GiB (limit {args.limit_gb} GiB; before {before / 2**20:.3f})")
        ok = peak_gb <= args.limit_gb
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if tmpctx is not None:
            tmpctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
