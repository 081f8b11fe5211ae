"""Brain-Diffuser's ROI-optimal images (Ozcelik & VanRullen 2023, §3.4, Figs 5 and 7).

For each named ROI (:data:`brainrecon.nsd.rois.ROI_DEFINITIONS`: V1 = V1v ∪ V1d, V2, V3, V4 = hV4,
face, word, place, body, eccentricity bands), the synthetic pattern 1 on ROI ∩ prepared voxels, 0
elsewhere (in the z-scored space; :func:`brainrecon.nsd.rois.roi_patterns`), is predicted by the
regression stage along with the test set (``extra/roi_<name>``); here each predicted vector (flattened)
is rescaled to the mean euclidean norm of the training feature rows (:func:`mean_row_norm`, computed
from ``train/features`` of the features files; the subject average uses the training rows of every
subject) and reconstructed like a test image with the ``full`` variant.

The reference hard-codes the norms instead (80 for VDVAE after a z-scoring across its 13 ROI patterns,
and 9 / 15 for the CLIP-text / vision components before adding the intercept), and builds its V1-V4
masks from the wrong label file (floc-faces); we follow SPEC §3: V1-V4 from prf-visualrois.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from ...nsd.rois import ROI_DEFINITIONS
from ..run import load_components, read_extra
from .pipeline import reconstruct_to_files
from .plan import SPACES, Settings

log = logging.getLogger(__name__)


def mean_row_norm(features_paths: Sequence, split: str = "train", chunk_rows: int = 256) -> float:
    """Mean euclidean norm of the ``{split}/features`` rows of the given features files.

    Rows are read ``chunk_rows`` at a time (a real VDVAE file is 8859 × 91168) and
    accumulated in float64; several files (the subject average) pool their rows.
    """
    if isinstance(features_paths, (str, Path)):
        features_paths = [features_paths]
    total, count = 0.0, 0
    for path in features_paths:
        with h5py.File(path, "r") as f:
            key = f"{split}/features"
            if key not in f:
                raise KeyError(f"{path}: no {key!r} (features file of the training images)")
            ds = f[key]
            for i0 in range(0, ds.shape[0], chunk_rows):
                rows = ds[i0:i0 + chunk_rows].astype(np.float64).reshape(-1, math.prod(ds.shape[1:]))
                total += float(np.linalg.norm(rows, axis=1).sum())
                count += rows.shape[0]
    if count == 0:
        raise ValueError(f"no {split} feature rows in {list(map(str, features_paths))}")
    return total / count


def rms_norm_from_moments(train_mean, train_std) -> float:
    """sqrt(E||x||²) = sqrt(Σ mean² + std²) from a regression file's ``train_mean``/``train_std``.

    A fallback when the training rows are not at hand: it is the root-mean-square norm,
    >= the mean norm (equal when every row has the same norm).
    """
    m, s = np.asarray(train_mean, np.float64), np.asarray(train_std, np.float64)
    return float(np.sqrt((m ** 2).sum() + (s ** 2).sum()))


def renormalise(pred, target_norm: float) -> np.ndarray:
    """Rescale each row of ``pred`` (k, *shape) to euclidean norm ``target_norm`` (flattened)."""
    p = np.asarray(pred, dtype=np.float64)
    flat = p.reshape(p.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"cannot renormalise predictions with row norms {norms.ravel().tolist()}")
    return (flat * (float(target_norm) / norms)).reshape(p.shape).astype(np.float32)


def reconstruct_rois(subject, roi_names: Sequence[str], inputs: Mapping, outputs: Mapping, *, settings: Settings,
                     device: str, dtype: str, progress: bool = True) -> dict:
    """ROI-optimal images of one subject ("avg": the subject-average predictions).

    inputs: the rule's inputs — ``{space: regression file}`` with ``extra/roi_<name>`` (1, *shape) for the
    three spaces, ``features_<space>``: the features files whose ``train/features`` rows give the target
    norm (the subject's own, or every subject's for "avg"), ``vdvae_model`` and ``vd_model`` folders.
    Each ROI's three predictions are renormalised to that norm (:func:`renormalise`) and reconstructed
    with the ``full`` variant. outputs: ``h5``, ``png`` — like :func:`~.pipeline.reconstruct_to_files`,
    with ``rois`` names.
    """
    names = list(roi_names)
    if not names:
        raise ValueError("no ROI-optimal patterns requested")
    unknown = [n for n in names if n not in ROI_DEFINITIONS]
    if unknown:
        raise ValueError(f"unknown ROI-optimal pattern(s) {unknown}; known: {list(ROI_DEFINITIONS)}")
    regression, features = {}, {}
    for space in SPACES:
        if space not in inputs or f"features_{space}" not in inputs:
            raise ValueError(f"ROI-optimal reconstruction needs the {space} regression output and features")
        regression[space] = str(inputs[space])
        feats = inputs[f"features_{space}"]
        features[space] = [str(feats)] if isinstance(feats, (str, Path)) else [str(x) for x in feats]
    preds, norms = {}, {}
    for space in SPACES:
        rows = []
        for name in names:
            a = read_extra(regression[space], f"roi_{name}")
            if a.shape[0] != 1:
                raise ValueError(f"{regression[space]}: extra/roi_{name} has {a.shape[0]} rows, expected 1")
            rows.append(a[0])
        norms[space] = mean_row_norm(features[space])
        preds[space] = renormalise(np.stack(rows), norms[space])
        log.info("%s: ROI predictions renormalised to the training mean norm %.4g", space, norms[space])
    loaded, dev, dt = load_components({"vdvae": inputs["vdvae_model"], "vd": inputs["vd_model"]}, device, dtype,
                                      float32=("vdvae",))
    models = {"vdvae": loaded["vdvae"].model, "vd": loaded["vd"]}
    flat_vdvae = preds["vdvae"].reshape(len(names), -1)
    return reconstruct_to_files(
        "full", names, subject, settings, outputs, models=models,
        inputs={"vdvae": flat_vdvae, "clipvision": preds["clipvision"], "cliptext": preds["cliptext"]},
        progress=progress,
        attrs={"roi_optimal": True, "target_norms": json.dumps(norms),
               "roi_definitions": json.dumps({n: ROI_DEFINITIONS[n] for n in names}),
               "inputs": json.dumps({"regression": regression, "features": features}),
               "device": dev, "dtype": dt,
               "vdvae_model": str(inputs["vdvae_model"]), "vd_model": str(inputs["vd_model"])},
    )


__all__ = ["mean_row_norm", "rms_norm_from_moments", "renormalise", "reconstruct_rois"]
