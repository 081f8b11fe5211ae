"""The planted signal of the synthetic NSD: voxel models, the noise-free drive, and its record.

Model (all in percent signal change, psc). For a voxel v and a stimulus image n:

    drive[n, v] = baseline[v]
                  + alpha_low[v] * (low[n, v] - low_offset[v]) * low_scale[v]
                  + alpha_sem[v] * (sem[n, v] - sem_offset[v]) * sem_scale[v]

* ``low[n, v] = sum_{r,c,ch} F[n, r, c, ch] * G_v[r, c] * colour_weights[v, ch]``: a linear map of
  the image's low-level content ``F`` (8×8 block means of RGB/255, see
  :func:`brainrecon.synth.images.lowlevel_features`) through a Gaussian population receptive field
  ``G_v[r, c] ∝ exp(-((r - prf_y)^2 + (c - prf_x)^2) / (2 prf_sigma^2))`` (normalised to sum 1;
  r = grid row from the top, c = grid column from the left).
* ``sem[n, v] = sum_k presence[n, k] * category_weights[v, k]``: a linear map of which object
  categories are present (0/1 per category of :data:`~brainrecon.synth.images.CATEGORIES`).
* offsets / scales z-score ``low`` and ``sem`` over the subject's own images (each image once,
  population std), so the stimulus-driven part of an early / ventral voxel has std exactly
  ``AMPLITUDE`` across the subject's images (scale 0 where the std is 0).

Groups (planted voxels = visual cortex = nsdgeneral ∪ streams; the streams' anterior rim lies outside
nsdgeneral): "noise" = a random ``round(noise_fraction · n_planted)`` voxels with drive exactly 0;
"early" = other voxels of streams == 1: alpha_low = AMPLITUDE, alpha_sem = 0; "ventral" = other voxels of
streams == 5: alpha_low = 0, alpha_sem = AMPLITUDE; "weak" = the other planted voxels (streams 2, 3, 4, 6,
7): WEAK_AMPLITUDE · (a, 1 − a) mix of both, a ~ U(0, 1). Other brain voxels have drive 0. Every brain voxel's trial response is
``drive + N(0, noise_sd^2)`` with ``noise_sd = AMPLITUDE / snr`` (independent per trial and voxel),
so SNR = std of the stimulus-driven drive across the subject's images / std of the trial noise
(exact for early and ventral voxels). Betas are ``int16(rint(300 · psc))``, 0 outside the brain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..nsd.plan import PLANTED_FILE
from .images import CATEGORIES, LOWLEVEL_GRID

#: std (psc) of the stimulus-driven drive of early and ventral voxels across the subject's images
AMPLITUDE = 1.0
#: total weight of the (low, sem) mix of "weak" voxels
WEAK_AMPLITUDE = 0.3
GROUPS = ("early", "ventral", "noise")
_LUMINANCE = np.array([0.299, 0.587, 0.114])


def _lowlevel_weights(vox: dict) -> np.ndarray:
    """(V, 8*8*3) weights of ``low`` from the pRF parameters of the voxel record."""
    g = LOWLEVEL_GRID
    px = np.asarray(vox["prf_x"], float)[:, None, None]
    py = np.asarray(vox["prf_y"], float)[:, None, None]
    sig = np.asarray(vox["prf_sigma"], float)[:, None, None]
    rr, cc = np.meshgrid(np.arange(g, dtype=float), np.arange(g, dtype=float), indexing="ij")
    gauss = np.exp(-((rr[None] - py) ** 2 + (cc[None] - px) ** 2) / (2 * sig**2))
    gauss = gauss / gauss.sum(axis=(1, 2), keepdims=True)
    cw = np.asarray(vox["colour_weights"], float)
    return (gauss[..., None] * cw[:, None, None, :]).reshape(len(cw), -1)


def raw_responses(vox: dict, lowlevel: np.ndarray, presence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``low`` and ``sem`` (N, V) for images with features ``lowlevel`` (N, 8, 8, 3), ``presence`` (N, C)."""
    lowlevel = np.asarray(lowlevel, float).reshape(len(lowlevel), -1)
    low = lowlevel @ _lowlevel_weights(vox).T
    sem = np.asarray(presence, float) @ np.asarray(vox["category_weights"], float).T
    return low, sem


def drive_from_record(vox: dict, lowlevel: np.ndarray, presence: np.ndarray) -> np.ndarray:
    """Noise-free drive (N, V) psc of every voxel of a record for the given images."""
    low, sem = raw_responses(vox, lowlevel, presence)
    a = {k: np.asarray(vox[k], float) for k in (
        "baseline", "alpha_low", "alpha_sem", "low_offset", "low_scale", "sem_offset", "sem_scale")}
    return (
        a["baseline"]
        + a["alpha_low"] * ((low - a["low_offset"]) * a["low_scale"])
        + a["alpha_sem"] * ((sem - a["sem_offset"]) * a["sem_scale"])
    )


def build_subject(
    geom: dict,
    nsd_ids: np.ndarray,
    lowlevel: np.ndarray,
    presence: np.ndarray,
    noise_fraction: float,
    rng: np.random.Generator,
) -> dict:
    """Plant voxel models for one subject (JSON-ready record, lists of Python scalars).

    ``geom`` from :func:`brainrecon.synth.volumes.geometry`; ``nsd_ids`` (N_s,) 0-based ids of the
    subject's images; ``lowlevel`` (N, 8, 8, 3) and ``presence`` (N, C) for all N stimuli.
    """
    streams = geom["rois"]["streams"]
    visual = (geom["rois"]["nsdgeneral"] == 1) | (streams > 0)
    ijk = np.argwhere(visual)  # C order
    n = len(ijk)
    st = streams[tuple(ijk.T)].astype(int)
    group = np.where(st == 1, "early", np.where(st == 5, "ventral", "weak")).astype(object)
    n_noise = int(round(noise_fraction * n))
    noise_idx = rng.choice(n, size=n_noise, replace=False)
    group[noise_idx] = "noise"
    C = len(CATEGORIES)

    prf_x = rng.uniform(0, LOWLEVEL_GRID - 1, n)
    prf_y = rng.uniform(0, LOWLEVEL_GRID - 1, n)
    prf_sigma = rng.uniform(1.5, 3.0, n)
    is_e = st == 1
    sel = tuple(ijk[is_e].T)
    prf_x[is_e] = geom["prf"]["x"][sel]
    prf_y[is_e] = geom["prf"]["y"][sel]
    prf_sigma[is_e] = geom["prf"]["sigma"][sel]
    sign = np.where(rng.random(n) < 0.8, 1.0, -1.0)
    colour_w = 3 * sign[:, None] * _LUMINANCE[None] + rng.normal(0, 0.5, (n, 3))
    cat_w = rng.normal(0, 0.35, (n, C))
    pref = rng.integers(C, size=n)
    cat_w[np.arange(n), pref] += 1.5
    mix = rng.uniform(0, 1, n)
    baseline = rng.uniform(0.3, 1.2, n)

    alpha_low = np.zeros(n)
    alpha_sem = np.zeros(n)
    e, v, w, z = (group == g for g in ("early", "ventral", "weak", "noise"))
    alpha_low[e] = AMPLITUDE
    alpha_sem[v] = AMPLITUDE
    alpha_low[w] = WEAK_AMPLITUDE * mix[w]
    alpha_sem[w] = WEAK_AMPLITUDE * (1 - mix[w])
    colour_w[v | z] = 0.0
    cat_w[e | z] = 0.0
    baseline[z] = 0.0

    vox = {
        "ijk": ijk.tolist(),
        "group": [str(g) for g in group],
        "stream": st.tolist(),
        "baseline": baseline.tolist(),
        "alpha_low": alpha_low.tolist(),
        "alpha_sem": alpha_sem.tolist(),
        "prf_x": prf_x.tolist(),
        "prf_y": prf_y.tolist(),
        "prf_sigma": prf_sigma.tolist(),
        "colour_weights": colour_w.tolist(),
        "category_weights": cat_w.tolist(),
        "preferred_category": [CATEGORIES[p] if g in ("ventral", "weak") else None
                               for p, g in zip(pref, group)],
    }
    low, sem = raw_responses(vox, lowlevel[nsd_ids], presence[nsd_ids])
    for name, raw in (("low", low), ("sem", sem)):
        mu = raw.mean(axis=0)
        sd = raw.std(axis=0)
        vox[f"{name}_offset"] = mu.tolist()
        vox[f"{name}_scale"] = np.where(sd > 1e-12, 1.0 / np.where(sd > 1e-12, sd, 1.0), 0.0).tolist()
    return vox


def load_planted(root) -> dict:
    """Parse ``<root>/synthetic_planted.json`` (what :func:`brainrecon.synth.generate` planted)."""
    path = Path(root) / PLANTED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no planted-signal record {path}: was the synthetic NSD generated there?")
    with open(path) as fh:
        return json.load(fh)


def _subject_record(planted: dict, subject) -> dict:
    key = str(int(subject))
    subs = planted.get("per_subject", {})
    if key not in subs:
        raise KeyError(f"synthetic NSD has no planted record for subject {subject!r}; has {sorted(subs)}")
    return subs[key]


def drive_all(planted: dict, subject) -> tuple[np.ndarray, np.ndarray, dict]:
    """(nsd_ids (N_s,), drive (N_s, V_all) of every planted voxel, voxel record)."""
    rec = _subject_record(planted, subject)
    imgs = planted["images"]
    nsd_ids = np.asarray(rec["nsd_ids"], np.int64)
    lowlevel = np.asarray(imgs["lowlevel"], float)[nsd_ids]
    presence = np.asarray(imgs["presence"], float)[nsd_ids]
    return nsd_ids, drive_from_record(rec["voxels"], lowlevel, presence), rec["voxels"]


def planted_drive(root, subject, groups=GROUPS):
    """Noise-free planted psc of the subject's planted voxels for every image the subject saw.

    Returns ``(ijk, group, nsd_ids, drive)``: ``ijk`` int64 (V, 3) voxel indices (i, j, k) into the
    subject's func1pt8mm volumes, ``group`` (V,) str in ``groups`` (default "early", "ventral",
    "noise"; "weak" is also available), ``nsd_ids`` int64 (N,) 0-based, ascending, ``drive``
    float64 (N, V) psc (betas ≈ 300 · (drive + noise)).
    """
    planted = root if isinstance(root, dict) else load_planted(root)
    nsd_ids, drive, vox = drive_all(planted, subject)
    group = np.asarray(vox["group"], dtype=str)
    keep = np.isin(group, list(groups))
    ijk = np.asarray(vox["ijk"], np.int64).reshape(-1, 3)
    return ijk[keep], group[keep], nsd_ids, drive[:, keep]
