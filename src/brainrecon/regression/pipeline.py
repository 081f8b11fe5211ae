"""Pipeline-facing helpers: Brain-Diffuser re-standardisation and test predictions to HDF5."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np

from brainrecon.io import atomic_path
from brainrecon.regression.ridge import KernelRidgeDecoder, _check_design

log = logging.getLogger(__name__)


def restandardise(pred, train_mean, train_std, eps: float = 1e-8) -> np.ndarray:
    """Brain-Diffuser re-standardisation of predicted features.

    Each target dimension of ``pred`` (m rows, e.g. the 982 test images) is z-scored
    across the rows (mean/std with ddof=0), then rescaled to the training features'
    per-dimension mean and std: ``z * train_std + train_mean``. A dimension whose
    predictions have std <= ``eps`` maps to ``train_mean``.

    pred : (m, *shape), m >= 2. train_mean, train_std : shape ``shape`` (or flattened
    ``(prod(shape),)``). Returns an array like ``pred`` (float32 stays float32).
    """
    pred = np.asarray(pred)
    if pred.ndim < 1 or pred.shape[0] < 2:
        raise ValueError(f"pred must have at least 2 rows to z-score across them, got shape {pred.shape}")
    if not np.all(np.isfinite(pred)):
        raise ValueError("pred contains NaN or inf")
    m = pred.shape[0]
    flat = pred.reshape(m, -1).astype(np.float64)
    T = flat.shape[1]
    mean = np.asarray(train_mean, dtype=np.float64).reshape(-1)
    std = np.asarray(train_std, dtype=np.float64).reshape(-1)
    for name, v in (("train_mean", mean), ("train_std", std)):
        if v.size != T:
            raise ValueError(f"{name} has {v.size} values but pred has {T} dimensions per row")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or inf")
    if np.any(std < 0):
        raise ValueError("train_std must be >= 0")
    mu = flat.mean(0)
    sd = flat.std(0)
    ok = sd > eps
    z = np.where(ok, (flat - mu) / np.where(ok, sd, 1.0), 0.0)
    out = z * std + mean
    dtype = pred.dtype if np.issubdtype(pred.dtype, np.floating) else np.float64
    return out.astype(dtype, copy=False).reshape(pred.shape)


def ridge_predict_test(decoder: KernelRidgeDecoder, train_X, train_Y, test_X, out_path, *,
                       restandardise_pred: bool = True, extra_X: dict | None = None, model_path=None,
                       attrs: dict | None = None) -> dict:
    """Fit ``decoder`` on ``(train_X, train_Y)`` and write test predictions to HDF5 in batches.

    decoder: an unfitted :class:`KernelRidgeDecoder` (its alphas, CV, backend, intercept, dtype, ...).
    train_X : (n, p) train patterns. train_Y : (n, *shape) array-like or h5py.Dataset
    (read in column batches, never whole). test_X : (m, p). ``extra_X``: optional
    ``{name: (m_k, p)}`` further pattern sets (ROI patterns, other subjects' tests)
    predicted in the same pass over the targets. ``model_path``: also save the fitted
    model (see :meth:`KernelRidgeDecoder.save`; large at NSD scale).

    Output file (written atomically): ``pred`` (m, *shape) raw predictions in the decoder's dtype;
    ``pred_restd`` (m, *shape) re-standardised (:func:`restandardise` with the train
    targets' mean/std) when ``restandardise_pred``; ``extra/<name>`` raw predictions;
    ``train_mean``, ``train_std`` (*shape) float64 (ddof 0); ``alphas`` (*shape) alpha
    used per target; ``cv_scores`` (n_alphas, *shape) when alphas were cross-validated;
    attrs: settings, shapes, regime, timings (``attrs`` adds more, JSON-encoded if needed).
    Returns a summary dict.
    """
    t0 = time.perf_counter()
    train_X = _check_design(train_X, "train_X")
    p = train_X.shape[1]
    test_X = _check_design(test_X, "test_X", p)
    extra = {}
    for name, Xe in (extra_X or {}).items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"extra_X key {name!r} must be a non-empty name without '/'")
        extra[name] = _check_design(Xe, f"extra_X[{name!r}]", p)
    if restandardise_pred and test_X.shape[0] < 2:
        raise ValueError(f"test_X needs at least 2 rows to re-standardise predictions, got {test_X.shape[0]}")
    dec = decoder
    dtype, cv, target_batch = dec.dtype, dec.cv, dec.target_batch
    fit_intercept, standardize_X, x_ddof = dec.fit_intercept, dec.standardize_X, dec.x_ddof
    dec.fit(train_X, train_Y)
    t_fit = time.perf_counter() - t0
    shape = tuple(dec.target_shape_)
    sizes = [test_X.shape[0]] + [x.shape[0] for x in extra.values()]
    X_all = np.concatenate([test_X] + list(extra.values()), 0) if extra else test_X
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            inner = dec._inner
            ds_pred = f.create_dataset("pred", shape=(sizes[0],) + shape, dtype=dtype)
            ds_restd = (f.create_dataset("pred_restd", shape=(sizes[0],) + shape, dtype=dtype)
                        if restandardise_pred else None)
            ds_extra = {name: f.create_dataset(f"extra/{name}", shape=(k,) + shape, dtype=dtype)
                        for (name, k) in zip(extra, sizes[1:])}

            def put(ds, a, b, block):
                m = block.shape[0]
                if not shape:
                    ds[:] = block[:, 0]
                elif len(shape) == 1:
                    ds[:, a:b] = block
                else:
                    i0, i1 = a // inner, -(-b // inner)
                    ds[:, i0:i1] = block.reshape((m, i1 - i0) + shape[1:])

            for a, b, P in dec._stream(X_all, desc="predict test"):
                put(ds_pred, a, b, P[:sizes[0]])
                if ds_restd is not None:
                    put(ds_restd, a, b, restandardise(P[:sizes[0]], dec._ym[a:b], dec._ys[a:b]))
                off = sizes[0]
                for name, k in zip(extra, sizes[1:]):
                    put(ds_extra[name], a, b, P[off:off + k])
                    off += k
            f["train_mean"] = dec.y_mean_
            f["train_std"] = dec.y_std_
            f["alphas"] = dec.alphas_
            if dec.cv_scores_ is not None:
                f["cv_scores"] = dec.cv_scores_
            meta = dict(alphas_grid=dec.alphas, cv=json.dumps(cv if isinstance(cv, (int, type(None))) else str(cv)),
                        backend=str(dec._B.name), regime=dec.regime_, n_train=dec.n_train_, n_test=sizes[0],
                        n_features=dec.n_features_in_, target_shape=np.asarray(shape, np.int64),
                        fit_intercept=fit_intercept, standardize_X=standardize_X, x_ddof=x_ddof, dtype=dtype,
                        target_batch=target_batch, restandardised=bool(restandardise_pred),
                        extra=json.dumps(list(extra)), fit_seconds=t_fit)
            for k, v in (attrs or {}).items():
                meta[k] = v if isinstance(v, (int, float, str, np.ndarray)) else json.dumps(v)
            meta["seconds"] = time.perf_counter() - t0
            f.attrs.update(meta)
    if model_path is not None:
        dec.save(model_path)
    summary = dict(path=str(out_path), regime=dec.regime_, n_train=dec.n_train_, n_test=sizes[0],
                   n_features=dec.n_features_in_, target_shape=shape, seconds=time.perf_counter() - t0,
                   alphas=np.unique(dec.alphas_).tolist())
    log.info("ridge_predict_test -> %s: %s", out_path, summary)
    return summary
