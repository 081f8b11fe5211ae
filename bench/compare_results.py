"""Compare two results trees (e.g. the demo before and after a refactor): every HDF5 dataset, CSV cell, PNG
pixel and NIfTI voxel, file by file.

    python bench/compare_results.py OLD/results NEW/results [--ignore-attr dtype ...] [--skip 'report.html']

Prints one line per differing file and a summary; HDF5 attributes are compared too but reported apart
("attrs only"), since they record settings and provenance rather than results. Exit status 0 when no data
differ (attribute-only differences allowed), 1 otherwise. Floats must be bit-identical; where they are not,
the largest absolute and relative difference is printed so that float32 round-off can be told from a change.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

import numpy as np

DEFAULT_SKIP = ("report.html", "*.log", "*.tsv")  # run times and timestamps


def _equal(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    if a.dtype != b.dtype:
        return False, f"dtype {a.dtype} vs {b.dtype}"
    if a.dtype.kind in "fc":
        same = np.array_equal(a, b, equal_nan=True)
        if same:
            return True, ""
        fin = np.isfinite(a) & np.isfinite(b)
        if (np.isnan(a) != np.isnan(b)).any():
            return False, "NaN positions differ"
        d = np.abs(a[fin].astype(np.float64) - b[fin].astype(np.float64))
        scale = np.abs(a[fin].astype(np.float64)).max() if fin.any() else 0.0
        return False, f"max |diff| {d.max():.3g} (relative to max |a| {d.max() / max(scale, 1e-300):.3g})"
    if a.dtype.kind == "O" or a.dtype.kind in "SU":
        same = [x == y for x, y in zip(a.ravel().tolist(), b.ravel().tolist())]
        return all(same), "" if all(same) else f"{len(same) - sum(same)} of {len(same)} strings differ"
    same = np.array_equal(a, b)
    return same, "" if same else f"{int((a != b).sum())} of {a.size} values differ"


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def compare_h5(a: Path, b: Path, ignore_attrs=()) -> tuple[list[str], list[str]]:
    """(data differences, attribute differences) of two HDF5 files."""
    import h5py

    data, attrs = [], []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        na, nb = [], []
        fa.visit(na.append)
        fb.visit(nb.append)
        for name in sorted(set(na) ^ set(nb)):
            data.append(f"{name}: only in {'A' if name in na else 'B'}")
        for name in ["/", *sorted(set(na) & set(nb))]:
            oa, ob = fa[name], fb[name]
            if isinstance(oa, h5py.Dataset) != isinstance(ob, h5py.Dataset):
                data.append(f"{name}: dataset vs group")
                continue
            if isinstance(oa, h5py.Dataset):
                ok, why = _equal(oa[()] if oa.shape != () else np.asarray(oa[()]),
                                 ob[()] if ob.shape != () else np.asarray(ob[()]))
                if not ok:
                    data.append(f"{name}: {why}")
            ka, kb = set(oa.attrs) - set(ignore_attrs), set(ob.attrs) - set(ignore_attrs)
            for k in sorted(ka ^ kb):
                attrs.append(f"{name}@{k}: only in {'A' if k in ka else 'B'}")
            for k in sorted(ka & kb):
                va, vb = _attr_value(oa.attrs[k]), _attr_value(ob.attrs[k])
                if va != vb and not (isinstance(va, float) and isinstance(vb, float) and np.isnan(va) and np.isnan(vb)):
                    attrs.append(f"{name}@{k}: {str(va)[:80]!r} vs {str(vb)[:80]!r}")
    return data, attrs


def compare_csv(a: Path, b: Path) -> list[str]:
    import pandas as pd

    da, db = pd.read_csv(a), pd.read_csv(b)
    if list(da.columns) != list(db.columns):
        return [f"columns {list(da.columns)} vs {list(db.columns)}"]
    if len(da) != len(db):
        return [f"{len(da)} vs {len(db)} rows"]
    out = []
    for c in da.columns:
        x, y = da[c].to_numpy(), db[c].to_numpy()
        if x.dtype.kind in "fiu" and y.dtype.kind in "fiu":
            ok, why = _equal(x.astype(np.float64), y.astype(np.float64))
        else:
            ok, why = _equal(x.astype(str), y.astype(str))
        if not ok:
            out.append(f"column {c}: {why}")
    return out


def compare_png(a: Path, b: Path) -> list[str]:
    from PIL import Image

    ok, why = _equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    return [] if ok else [why]


def compare_nifti(a: Path, b: Path) -> list[str]:
    import nibabel as nib

    ia, ib = nib.load(str(a)), nib.load(str(b))
    out = []
    ok, why = _equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj))
    if not ok:
        out.append(f"data: {why}")
    if not np.array_equal(ia.affine, ib.affine):
        out.append("affine differs")
    return out


def compare_trees(a: Path, b: Path, skip=DEFAULT_SKIP, ignore_attrs=()) -> dict:
    """``{"only_a", "only_b", "data": {file: [why]}, "attrs": {file: [why]}, "same": n}``."""
    def files(root):
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                and not any(fnmatch.fnmatch(p.name, s) or fnmatch.fnmatch(str(p.relative_to(root)), s) for s in skip)}

    fa, fb = files(a), files(b)
    res = {"only_a": sorted(fa - fb), "only_b": sorted(fb - fa), "data": {}, "attrs": {}, "same": 0}
    for rel in sorted(fa & fb):
        pa, pb = a / rel, b / rel
        attrs = []
        if rel.endswith((".h5", ".hdf5")):
            data, attrs = compare_h5(pa, pb, ignore_attrs)
        elif rel.endswith(".csv"):
            data = compare_csv(pa, pb)
        elif rel.endswith(".png"):
            data = compare_png(pa, pb)
        elif rel.endswith((".nii.gz", ".nii")):
            data = compare_nifti(pa, pb)
        else:
            data = [] if pa.read_bytes() == pb.read_bytes() else ["bytes differ"]
        if data:
            res["data"][rel] = data
        if attrs:
            res["attrs"][rel] = attrs
        if not data and not attrs:
            res["same"] += 1
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--skip", nargs="*", default=list(DEFAULT_SKIP), help="file name patterns not compared")
    ap.add_argument("--ignore-attr", nargs="*", default=[], help="HDF5 attribute names not compared")
    args = ap.parse_args(argv)
    for root in (args.a, args.b):
        if not root.is_dir():
            ap.error(f"{root} is not a directory")
    res = compare_trees(args.a, args.b, tuple(args.skip), tuple(args.ignore_attr))
    for rel in res["only_a"]:
        print(f"ONLY A  {rel}")
    for rel in res["only_b"]:
        print(f"ONLY B  {rel}")
    for rel, why in res["data"].items():
        print(f"DATA    {rel}: " + "; ".join(why[:5]) + (f" (+{len(why) - 5})" if len(why) > 5 else ""))
    for rel, why in res["attrs"].items():
        print(f"ATTRS   {rel}: " + "; ".join(why[:5]) + (f" (+{len(why) - 5})" if len(why) > 5 else ""))
    n = res["same"] + len(res["data"]) + len(res["attrs"].keys() - res["data"].keys())
    print(f"compared {n} files: {res['same']} identical, {len(res['data'])} with data differences, "
          f"{len(res['attrs'].keys() - res['data'].keys())} with attribute differences only; "
          f"{len(res['only_a'])} only in A, {len(res['only_b'])} only in B")
    return 0 if not (res["data"] or res["only_a"] or res["only_b"]) else 1


if __name__ == "__main__":
    sys.exit(main())
