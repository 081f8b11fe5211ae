"""Brain-Diffuser's ROI-optimal images (Ozcelik & VanRullen 2023, §3.4, Figs 5 and 7).

For each named ROI (:data:`brainrecon.nsd.rois.ROI_DEFINITIONS`: V1 = V1v ∪ V1d, V2, V3, V4 = hV4,
face, word, place, body, eccentricity bands), the synthetic pattern p = 1 on ROI ∩ prepared voxels, 0
elsewhere (in the z-scored space; :func:`brainrecon.nsd.rois.roi_patterns`), is predicted by the
regression stage along with the test set (``extra/roi_<name>``), and so is the all-zero pattern
(``extra/zero`` = the intercept b). Their difference L = pred(p) − b = p·Wᵀ is the reference's
``roi_act @ reg_w.T``. Then, per space (``roi_recipe``):

``reference`` (default; ``scripts/roi_generate_features.py``)
  1. VDVAE: v = L / (‖L‖ + 1e-8) · s_vdvae + b (row norms); z-score v **across the ROI patterns** (axis 0,
     population std); map to the training latents: v · std_train + mean_train (per dimension, ddof 0);
     rescale each row to norm N_vdvae.
  2. CLIP-vision / CLIP-text: c = L / (‖L‖_F + 1e-8) · s_space + b (Frobenius norm over tokens × dims);
     no z-scoring, no mapping, no final norm.
  Constants (``roi_constants``): ``published`` = the reference's hard-coded s_vdvae = 50, N_vdvae = 80,
  s_clipvision = 15, s_cliptext = 9; ``derived`` (default) = from the training features of the space:
  s = mean over training images of ‖y − ȳ‖ (how far a real image's features lie from their mean: the unit
  ROI direction is put at that distance from the intercept) and N_vdvae = mean training row norm ‖y‖.
  The constants used are recorded in images.h5 (``roi_constants_used``).
``renormalise`` (ours)
  each whole prediction pred(p) is rescaled to the mean training row norm of its space.

Differences from the reference that remain: its V1–V4 masks came from the wrong label file
(floc-faces, ``roi_extract.py:43``; its "V4" was empty); SPEC §3 and we take them from prf-visualrois.
Where the z-scoring across ROIs meets a dimension that is identical for every ROI (zero std), the
reference divides by zero; we set that dimension's z-score to 0. The recipe needs at least two ROIs.
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


def _feature_rows(features_paths: Sequence, split: str, chunk_rows: int):
    """Yield the ``{split}/features`` rows of the files as float64 (k, D) chunks of ``chunk_rows`` (a real VDVAE
    file is 8859 × 91168: never read whole)."""
    if isinstance(features_paths, (str, Path)):
        features_paths = [features_paths]
    for path in features_paths:
        with h5py.File(path, "r") as f:
            key = f"{split}/features"
            if key not in f:
                raise KeyError(f"{path}: no {key!r} (features file of the training images)")
            ds = f[key]
            for i0 in range(0, ds.shape[0], chunk_rows):
                yield ds[i0:i0 + chunk_rows].astype(np.float64).reshape(-1, math.prod(ds.shape[1:]))


def mean_row_norm(features_paths: Sequence, split: str = "train", chunk_rows: int = 256) -> float:
    """Mean euclidean norm of the ``{split}/features`` rows of the given features files (several files,
    e.g. the subject average's, pool their rows; accumulated in float64)."""
    total, count = 0.0, 0
    for rows in _feature_rows(features_paths, split, chunk_rows):
        total += float(np.linalg.norm(rows, axis=1).sum())
        count += rows.shape[0]
    if count == 0:
        raise ValueError(f"no {split} feature rows in {features_paths}")
    return total / count


def rms_norm_from_moments(train_mean, train_std) -> float:
    """sqrt(E||x||²) = sqrt(Σ mean² + std²) from a regression file's ``train_mean``/``train_std``.

    A fallback when the training rows are not at hand: it is the root-mean-square norm,
    >= the mean norm (equal when every row has the same norm).
    """
    m, s = np.asarray(train_mean, np.float64), np.asarray(train_std, np.float64)
    return float(np.sqrt((m ** 2).sum() + (s ** 2).sum()))


#: the reference's hard-coded constants (roi_generate_features.py): projection scale per space, VDVAE norm
PUBLISHED_CONSTANTS = {"vdvae": 50.0, "clipvision": 15.0, "cliptext": 9.0, "vdvae_norm": 80.0}
_EPS = 1e-8  # the reference's guard of the unit projection


def feature_moments(features_paths: Sequence, split: str = "train", chunk_rows: int = 256) -> dict:
    """Per-dimension mean and std (ddof 0) of the ``{split}/features`` rows, their mean row norm ‖y‖ and
    mean distance from the mean ‖y − ȳ‖ (two chunked passes; several files pool their rows)."""
    s1 = s2 = None
    count, norm_sum = 0, 0.0
    for rows in _feature_rows(features_paths, split, chunk_rows):
        s1 = rows.sum(0) if s1 is None else s1 + rows.sum(0)
        s2 = (rows ** 2).sum(0) if s2 is None else s2 + (rows ** 2).sum(0)
        norm_sum += float(np.linalg.norm(rows, axis=1).sum())
        count += rows.shape[0]
    if count == 0:
        raise ValueError(f"no {split} feature rows in {features_paths}")
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    dist = sum(float(np.linalg.norm(rows - mean, axis=1).sum())
               for rows in _feature_rows(features_paths, split, chunk_rows))
    return {"mean": mean, "std": std, "mean_norm": norm_sum / count, "mean_distance": dist / count, "n": count}


def _unit_rows(L: np.ndarray) -> np.ndarray:
    flat = L.reshape(L.shape[0], -1)
    return (flat / (np.linalg.norm(flat, axis=1, keepdims=True) + _EPS)).reshape(L.shape)


def reference_vdvae(L, b, scale: float, train_mean, train_std, norm: float) -> np.ndarray:
    """The reference's VDVAE recipe on k ROI rows: L (k, D) = p·Wᵀ, b (D,) the intercept (float64 out)."""
    L = np.asarray(L, np.float64)
    if L.ndim != 2 or L.shape[0] < 2:
        raise ValueError(f"the reference ROI recipe z-scores across ROIs: it needs >= 2 ROI rows, got {L.shape}")
    v = _unit_rows(L) * float(scale) + np.asarray(b, np.float64)[None]
    sd = v.std(0)
    z = np.divide(v - v.mean(0), sd, out=np.zeros_like(v), where=sd > 0)
    v = z * np.asarray(train_std, np.float64)[None] + np.asarray(train_mean, np.float64)[None]
    n = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.all(n > 0):
        raise ValueError("a VDVAE ROI latent is all zeros after the mapping to the training statistics")
    return v / n * float(norm)


def reference_clip(L, b, scale: float) -> np.ndarray:
    """The reference's CLIP recipe on k ROI rows: L (k, tokens, dim), b (tokens, dim) (float64 out)."""
    L = np.asarray(L, np.float64)
    return _unit_rows(L) * float(scale) + np.asarray(b, np.float64)[None]


def recipe_constants(moments: Mapping[str, dict], which: str) -> dict:
    """``{"vdvae", "clipvision", "cliptext", "vdvae_norm"}`` scales: published or derived from ``moments``
    (:func:`feature_moments` per space)."""
    if which == "published":
        return dict(PUBLISHED_CONSTANTS)
    if which != "derived":
        raise ValueError(f"roi_constants must be 'derived' or 'published', got {which!r}")
    out = {space: float(moments[space]["mean_distance"]) for space in SPACES}
    out["vdvae_norm"] = float(moments["vdvae"]["mean_norm"])
    return out


def renormalise(pred, target_norm: float) -> np.ndarray:
    """Rescale each row of ``pred`` (k, *shape) to euclidean norm ``target_norm`` (flattened)."""
    p = np.asarray(pred, dtype=np.float64)
    flat = p.reshape(p.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"cannot renormalise predictions with row norms {norms.ravel().tolist()}")
    return (flat * (float(target_norm) / norms)).reshape(p.shape).astype(np.float32)


def roi_inputs_for(names: Sequence[str], regression: Mapping, features: Mapping, settings: Settings):
    """The model inputs of the ROI-optimal images: ``({space: (k, *shape) float32}, constants used)``.

    regression: ``{space: regression file}`` (``extra/roi_<name>``, ``extra/zero``); features: ``{space:
    [features files]}`` (their training rows give the norms / moments).
    """
    raw, zero = {}, {}
    for space in SPACES:
        rows = []
        for name in names:
            a = read_extra(regression[space], f"roi_{name}")
            if a.shape[0] != 1:
                raise ValueError(f"{regression[space]}: extra/roi_{name} has {a.shape[0]} rows, expected 1")
            rows.append(a[0])
        raw[space] = np.stack(rows).astype(np.float64)
        if settings.roi_recipe == "reference":
            zero[space] = read_extra(regression[space], "zero")[0].astype(np.float64)
    if settings.roi_recipe == "renormalise":
        norms = {space: mean_row_norm(features[space]) for space in SPACES}
        for space in SPACES:
            log.info("%s: ROI predictions renormalised to the training mean norm %.4g", space, norms[space])
        return {space: renormalise(raw[space], norms[space]) for space in SPACES}, {"target_norms": norms}
    if settings.roi_recipe != "reference":
        raise ValueError(f"roi_recipe must be 'reference' or 'renormalise', got {settings.roi_recipe!r}")
    need_moments = settings.roi_constants == "derived"
    moments = {space: feature_moments(features[space]) for space in SPACES} if need_moments else {}
    if "vdvae" not in moments:
        moments["vdvae"] = feature_moments(features["vdvae"])  # the training mean / std of the latents
    const = recipe_constants(moments, settings.roi_constants)
    out = {}
    L = raw["vdvae"] - zero["vdvae"][None]
    out["vdvae"] = reference_vdvae(L.reshape(len(names), -1), zero["vdvae"].reshape(-1), const["vdvae"],
                                   moments["vdvae"]["mean"], moments["vdvae"]["std"],
                                   const["vdvae_norm"]).reshape(raw["vdvae"].shape).astype(np.float32)
    for space in ("clipvision", "cliptext"):
        out[space] = reference_clip(raw[space] - zero[space][None], zero[space], const[space]).astype(np.float32)
    log.info("ROI-optimal inputs by the reference recipe, %s constants %s", settings.roi_constants, const)
    return out, const


def reconstruct_rois(subject, roi_names: Sequence[str], inputs: Mapping, outputs: Mapping, *, settings: Settings,
                     device: str, dtype: str, progress: bool = True) -> dict:
    """ROI-optimal images of one subject ("avg": the subject-average predictions).

    inputs: the rule's inputs — ``{space: regression file}`` with ``extra/roi_<name>`` (1, *shape) for the
    three spaces, ``features_<space>``: the features files whose ``train/features`` rows give the target
    norm (the subject's own, or every subject's for "avg"), ``vdvae_model`` and ``vd_model`` folders.
    Each ROI's three predictions become model inputs by ``settings.roi_recipe`` (module docstring; the
    reference needs ``extra/zero``, the intercept) and are reconstructed with the ``full`` variant.
    outputs: ``h5``, ``png`` — like :func:`~.pipeline.reconstruct_to_files`, with ``rois`` names.
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
    preds, used = roi_inputs_for(names, regression, features, settings)
    loaded, dev, dt = load_components({"vdvae": inputs["vdvae_model"], "vd": inputs["vd_model"]}, device, dtype,
                                      float32=("vdvae",))
    models = {"vdvae": loaded["vdvae"].model, "vd": loaded["vd"]}
    flat_vdvae = preds["vdvae"].reshape(len(names), -1)
    return reconstruct_to_files(
        "full", names, subject, settings, outputs, models=models,
        inputs={"vdvae": flat_vdvae, "clipvision": preds["clipvision"], "cliptext": preds["cliptext"]},
        progress=progress,
        attrs={"roi_optimal": True, "roi_recipe": settings.roi_recipe, "roi_constants": settings.roi_constants,
               "roi_constants_used": json.dumps(used),
               "roi_definitions": json.dumps({n: ROI_DEFINITIONS[n] for n in names}),
               "inputs": json.dumps({"regression": regression, "features": features}),
               "device": dev, "dtype": dt,
               "vdvae_model": str(inputs["vdvae_model"]), "vd_model": str(inputs["vd_model"])},
    )


__all__ = ["PUBLISHED_CONSTANTS", "mean_row_norm", "feature_moments", "rms_norm_from_moments", "renormalise",
           "reference_vdvae", "reference_clip", "recipe_constants", "roi_inputs_for", "reconstruct_rois"]
