"""The regression stage: prepared betas × one feature space → test (and extra) predictions.

One function for every feature space (Brain-Diffuser vdvae/clipvision/cliptext, Takagi
sdz/sdc/blip/dpt): it selects training rows (repetition-averaged images or single trials),
selects voxels (all of the prepared set or an ROI union), aligns feature rows to betas rows
by nsdId, and calls :func:`brainrecon.regression.ridge_predict_test`.
"""

from __future__ import annotations

import json
import logging
import math

import h5py
import numpy as np

from brainrecon.io import atomic_path
from brainrecon.nsd.rois import union_mask
from brainrecon.regression.pipeline import ridge_predict_test
from brainrecon.regression.ridge import KernelRidgeDecoder
from brainrecon.regression.plan import SpaceFit

log = logging.getLogger(__name__)


class H5Rows:
    """``(len(rows), *shape)`` view of an ``(N, D)`` HDF5 dataset: rows selected (repeats
    allowed, e.g. one feature row per single trial), columns reshaped to ``shape``.

    Supports what :class:`brainrecon.regression.TargetMatrix` reads: ``Y[:, i0:i1]``
    (slabs along axis 1); only the columns of one slab are read from disk at a time.
    """

    def __init__(self, ds, rows, shape):
        self.ds = ds
        self.rows = np.asarray(rows, dtype=np.int64)
        self.feature_shape = tuple(int(s) for s in shape)
        if math.prod(self.feature_shape) != ds.shape[1]:
            raise ValueError(
                f"{ds.file.filename}:{ds.name}: feature_shape {self.feature_shape} does not match "
                f"{ds.shape[1]} columns"
            )
        self.shape = (self.rows.size, *self.feature_shape)
        self.dtype = ds.dtype
        self._inner = math.prod(self.feature_shape[1:]) if len(self.feature_shape) > 1 else 1
        # read the selected rows once in sorted order, then expand (h5py needs increasing indices)
        self._uniq, self._inverse = np.unique(self.rows, return_inverse=True)

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)):
            raise IndexError(f"H5Rows supports Y[:, a:b] only, got {key!r}")
        sl = key[1]
        if isinstance(sl, slice):
            i0, i1 = sl.start or 0, sl.stop if sl.stop is not None else self.shape[1]
        else:
            raise IndexError(f"H5Rows supports Y[:, a:b] only, got {key!r}")
        a, b = i0 * self._inner, i1 * self._inner
        block = self.ds[:, a:b][self._uniq][self._inverse]
        return block.reshape((self.rows.size, i1 - i0) + self.feature_shape[1:])


def select_voxels(prepared: h5py.File, voxels) -> np.ndarray:
    """Boolean mask over the prepared voxels: ``"all"`` or ``{roi file: [label names]}`` (union,
    :func:`brainrecon.nsd.rois.union_mask`)."""
    if voxels in (None, "all"):
        return np.ones(prepared["voxels/ijk"].shape[0], dtype=bool)
    if not isinstance(voxels, dict) or not voxels:
        raise ValueError(f"voxels must be 'all' or {{roi file: [labels]}}, got {voxels!r}")
    return union_mask(prepared, voxels)


def voxel_counts(prepared: h5py.File, voxels, mask: np.ndarray) -> dict:
    """How many of the selected voxels lie inside / outside nsdgeneral, per ROI label of ``voxels``
    (``{"<file>:<label>": {"inside": n, "outside": n}}``; ``"all"`` for the whole prepared set)."""
    if "rois/nsdgeneral" not in prepared:
        return {}
    inside = prepared["rois/nsdgeneral"][()] > 0
    out = {}
    if voxels in (None, "all"):
        out["all"] = {"inside": int((mask & inside).sum()), "outside": int((mask & ~inside).sum())}
        return out
    for roi, labels in voxels.items():
        for label in labels:
            sel = union_mask(prepared, {roi: [label]})
            out[f"{roi}:{label}"] = {"inside": int((sel & inside).sum()), "outside": int((sel & ~inside).sum())}
    return out


def read_columns(ds, mask: np.ndarray, block_rows: int = 256) -> np.ndarray:
    """``ds[:, mask]`` as float32, read in blocks of rows (only ``block_rows`` × all voxels in memory)."""
    n = ds.shape[0]
    out = np.empty((n, int(mask.sum())), dtype=np.float32)
    for i in range(0, n, block_rows):
        out[i:i + block_rows] = ds[i:i + block_rows][:, mask]
    return out


def _rows_for(ids: np.ndarray, feat_ids: np.ndarray, where: str) -> np.ndarray:
    order = np.argsort(feat_ids)
    pos = np.searchsorted(feat_ids, ids, sorter=order)
    pos = np.clip(pos, 0, feat_ids.size - 1)
    rows = order[pos]
    missing = ids[feat_ids[rows] != ids]
    if missing.size:
        raise KeyError(f"{where}: no features for nsdId(s) {np.unique(missing)[:10].tolist()}")
    return rows


def fit_space(prepared_h5, features_h5, out_h5, settings: SpaceFit, *, extra_patterns=None,
              progress=True) -> dict:
    """Fit one feature space for one subject and write test predictions to ``out_h5``.

    prepared_h5: ``results/prepared/<set>/subjXX.h5``; features_h5: ``results/features/<space>/subjXX.h5``.
    settings: :class:`brainrecon.regression.plan.SpaceFit` — ``train_on`` ``averaged`` (``train/betas``,
    one row per image) or ``single_trial`` (``trials/betas``, one row per trial; the image's features
    repeated per trial), the voxels, alphas, CV, backend, re-standardisation.
    extra_patterns: ``{name: (k, V_all) float}`` patterns over all prepared voxels (e.g.
    ROI-optimal patterns), predicted in the same pass and written to ``extra/<name>``.
    Output: the keys of :func:`ridge_predict_test` plus ``nsd_ids`` (test rows) and
    ``voxel_mask`` (which prepared voxels were used); attrs ``voxel_counts`` (per ROI label, selected voxels
    inside / outside nsdgeneral, also logged).
    """
    train_on, voxels = settings.train_on, settings.voxels
    with h5py.File(prepared_h5, "r") as prep, h5py.File(features_h5, "r") as feat:
        mask = select_voxels(prep, voxels)
        grp = "train" if train_on == "averaged" else "trials"
        for key in (f"{grp}/betas", f"{grp}/nsd_ids", "test/betas", "test/nsd_ids"):
            if key not in prep:
                raise KeyError(f"{prepared_h5}: missing {key!r}")
        for key in ("train/features", "train/nsd_ids"):
            if key not in feat:
                raise KeyError(f"{features_h5}: missing {key!r}")
        counts = voxel_counts(prep, voxels, mask)
        for name, c in counts.items():
            log.info("voxels %s of %s: %d inside nsdgeneral, %d outside", name, prepared_h5, c["inside"], c["outside"])
        X = read_columns(prep[f"{grp}/betas"], mask)
        ids = prep[f"{grp}/nsd_ids"][:].astype(np.int64)
        Xt = read_columns(prep["test/betas"], mask)
        test_ids = prep["test/nsd_ids"][:].astype(np.int64)
        shape = tuple(int(s) for s in feat.attrs.get("feature_shape", (feat["train/features"].shape[1],)))
        rows = _rows_for(ids, feat["train/nsd_ids"][:].astype(np.int64), f"{features_h5} train")
        Y = H5Rows(feat["train/features"], rows, shape)
        extra = {k: np.atleast_2d(np.asarray(v, np.float32))[:, mask] for k, v in (extra_patterns or {}).items()}
        log.info("fit %s: X %s (%s), Y %s, test %s, extra %s", features_h5, X.shape, train_on, Y.shape,
                 Xt.shape, sorted(extra))
        with atomic_path(out_h5) as tmp:
            decoder = KernelRidgeDecoder(alphas=list(settings.alphas), cv=settings.cv, backend=settings.backend,
                                         target_batch=settings.target_batch, fit_intercept=settings.fit_intercept,
                                         cv_score=settings.cv_score, progress=progress)
            summary = ridge_predict_test(
                decoder, X, Y, Xt, tmp, restandardise_pred=settings.restandardise, extra_X=extra or None,
                attrs=dict(space=str(feat.attrs.get("space", "")), train_on=train_on,
                           voxels=json.dumps(voxels), prepared=str(prepared_h5), features=str(features_h5),
                           voxel_set=str(prep.attrs.get("voxels", settings.prepared)),
                           voxel_counts=json.dumps(counts), cv_score=settings.cv_score,
                           feature_shape=np.asarray(shape, np.int64)),
            )
            with h5py.File(tmp, "a") as f:
                f["nsd_ids"] = test_ids
                f["voxel_mask"] = mask
    return summary


def average_subjects(paths, out_h5) -> dict:
    """Subject average: mean over subjects of each shared test image's predictions.

    Every dataset of shape (n_test, ...) (``pred``, ``pred_restd``) is averaged over the
    nsdIds present in every subject's file; ``extra/*`` patterns are averaged row-wise.
    """
    files = [h5py.File(p, "r") for p in paths]
    try:
        common = files[0]["nsd_ids"][:]
        for f in files[1:]:
            common = np.intersect1d(common, f["nsd_ids"][:])
        if common.size == 0:
            raise ValueError(f"no test image is shared by all of {list(map(str, paths))}")
        with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as out:
            out["nsd_ids"] = common
            for key in ("pred", "pred_restd"):
                if key in files[0]:
                    acc = None
                    for f in files:
                        ids = f["nsd_ids"][:]
                        rows = np.searchsorted(ids, common)
                        block = f[key][np.sort(rows).tolist()].astype(np.float64)
                        acc = block if acc is None else acc + block
                    out[key] = (acc / len(files)).astype(np.float32)
            if "extra" in files[0]:
                for name in files[0]["extra"]:
                    out[f"extra/{name}"] = np.mean(
                        [f[f"extra/{name}"][:].astype(np.float64) for f in files], axis=0
                    ).astype(np.float32)
            for key in ("train_mean", "train_std"):
                if key in files[0]:
                    out[key] = np.mean([f[key][:] for f in files], axis=0)
            out.attrs["subjects"] = json.dumps([str(p) for p in paths])
            out.attrs["n_common"] = int(common.size)
    finally:
        for f in files:
            f.close()
    return {"n_common": int(common.size)}
