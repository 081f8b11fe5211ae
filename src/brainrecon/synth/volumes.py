"""Synthetic brain geometry in func1pt8mm space: brain mask, ROI label volumes, anatomy.

Volumes are (X, Y, Z) arrays with voxel index (i, j, k); the affine is 1.8 mm isotropic RAS
(j increases towards anterior, k towards superior), centred on the volume. With normalised
coordinates ``u = (j + 0.5) / Y`` (posterior 0 -> anterior 1) and ``w = (k + 0.5) / Z``
(inferior 0 -> superior 1):

* brain: the ellipsoid ``(x/0.95)^2 + (y/0.97)^2 + (z/0.92)^2 <= 1`` in [-1, 1] coordinates;
* nsdgeneral (1): brain voxels with ``u < 0.55`` (posterior cortex);
* streams: early (1) ``u < 0.30``; band ``0.30 <= u < 0.38``: midventral (2) ``w < 0.4``,
  midlateral (3) ``w < 0.6``, midparietal (4) otherwise; ``0.38 <= u < 0.62``: ventral (5)
  ``w < 0.5``, lateral (6) ``w < 0.7``, parietal (7) otherwise — the anterior rim ``0.55 <= u < 0.62`` of
  the higher streams lies **outside** nsdgeneral, as real streams labels reach beyond it (Takagi takes
  the streams over the whole volume, Brain-Diffuser cuts to nsdgeneral);
* prf-visualrois (inside early): V1/V2/V3/hV4 by posterior-to-anterior rank, v/d by lower/upper
  half in ``w`` (hV4 only in the lower half; the upper part of that band is V3d);
* prf-eccrois (inside early): eccentricity bands (<0.5, <1, <2, <4, >=4 degrees; 8.4 degrees per image)
  of the voxel's pRF centre, which is retinotopic: polar angle from the voxel's (x, z) position
  within the early region, eccentricity growing quadratically with distance from its centre; every band
  holds at least one voxel (an empty band gets the best-fitting voxel of the fullest one);
* floc-* (inside ventral ∪ lateral): for each ROI a compact cluster of ~30 % of those voxels around
  a random centre, split posterior-to-anterior into the ROI's labels.

Every ROI volume is int16 with -1 outside the brain, 0 inside the brain but outside the ROI and
1..N labels (as NSD's func1pt8mm ROI files).
"""

from __future__ import annotations

import numpy as np

from brainrecon.nsd import layout

VOXEL_MM = 1.8
#: visual angle of one low-level grid cell: NSD images subtend 8.4 degrees over 8 cells
DEG_PER_CELL = 8.4 / 8
#: eccentricity band edges (degrees) of prf-eccrois labels 1..5
ECC_EDGES = (0.5, 1.0, 2.0, 4.0)


def affine(shape) -> np.ndarray:
    """1.8 mm isotropic RAS affine with the volume centre at the origin (4, 4) float64."""
    a = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    a[:3, 3] = -VOXEL_MM * (np.asarray(shape, float) - 1) / 2
    return a


def _fill_empty_bands(px: np.ndarray, py: np.ndarray):
    """Move one pRF centre into every empty eccentricity band (real NSD has all five bands in every subject;
    small synthetic volumes may lack the outermost): the voxel taken comes from the most populated band, keeps
    its polar angle, and is the one that fits the band best within the 8 x 8 grid."""
    px, py = px.copy(), py.copy()
    edges = np.r_[0.0, np.asarray(ECC_EDGES), 4.6]  # target of the last band: 4.4 degrees
    for k in range(len(ECC_EDGES) + 1):
        ecc = np.hypot(px - 3.5, py - 3.5) * DEG_PER_CELL
        lab = np.searchsorted(np.asarray(ECC_EDGES), ecc, side="right")
        if (lab == k).any() or px.size < len(ECC_EDGES) + 1:
            continue
        counts = np.bincount(lab, minlength=len(ECC_EDGES) + 1)
        theta = np.arctan2(py - 3.5, px - 3.5)
        theta = np.where(ecc > 0, theta, np.pi / 4)
        target = (edges[k] + edges[k + 1]) / 2 / DEG_PER_CELL  # cells
        r_max = 3.5 / np.maximum(np.abs(np.cos(theta)), np.abs(np.sin(theta)))
        ok = (lab == np.argmax(counts)) & (r_max >= target)
        if not ok.any():
            continue
        i = np.flatnonzero(ok)[np.argmin(np.abs(ecc[ok] / DEG_PER_CELL - target))]
        px[i], py[i] = 3.5 + target * np.cos(theta[i]), 3.5 + target * np.sin(theta[i])
    return px, py


def geometry(shape, rng: np.random.Generator, subject: int | str = "?") -> dict:
    """Build brain mask, ROI volumes and early-voxel pRF centres for one subject.

    Returns ``{"brain": bool (X,Y,Z), "rois": {name: int16 (X,Y,Z)}, "prf": {"x", "y", "sigma"}:
    float64 (X,Y,Z) arrays (NaN outside early; units: low-level grid cells, x = column, y = row,
    0..7), "u", "w": float64 (X,Y,Z)}``.
    Raises ValueError when ``shape`` is too small to hold early and ventral voxels.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"synthetic volume shape for subject {subject} must be 3 ints >= 4, got {shape}")
    i, j, k = np.meshgrid(*[(np.arange(n) + 0.5) / n for n in shape], indexing="ij")
    xn, yn, zn = 2 * i - 1, 2 * j - 1, 2 * k - 1
    u, w = j, k
    brain = (xn / 0.95) ** 2 + (yn / 0.97) ** 2 + (zn / 0.92) ** 2 <= 1
    ng = brain & (u < 0.55)

    streams = np.zeros(shape, np.int16)
    early = ng & (u < 0.30)
    band = ng & (u >= 0.30) & (u < 0.38)
    front = (ng & (u >= 0.38)) | (brain & (u >= 0.55) & (u < 0.62))  # the rim beyond nsdgeneral
    streams[early] = 1
    streams[band & (w < 0.4)] = 2
    streams[band & (w >= 0.4) & (w < 0.6)] = 3
    streams[band & (w >= 0.6)] = 4
    streams[front & (w < 0.5)] = 5
    streams[front & (w >= 0.5) & (w < 0.7)] = 6
    streams[front & (w >= 0.7)] = 7
    for lab, name in ((1, "early"), (5, "ventral")):
        if not (streams == lab).any():
            raise ValueError(
                f"synthetic volume shape {shape} of subject {subject} is too small: no {name} voxels"
            )

    # pRF centres of early voxels: visual field position from the (x, z) position within the
    # early region (+ jitter); size grows with eccentricity and towards anterior.
    ei = np.nonzero(early)
    ex, ez, eu = xn[ei], zn[ei], u[ei]

    def _rel(a):
        lo, hi = a.min(), a.max()
        return np.zeros_like(a) if hi <= lo else 2 * (a - lo) / (hi - lo) - 1

    rx, rz = _rel(ex), _rel(ez)
    rho = np.hypot(rx, rz) / np.sqrt(2)  # 0..1
    ecc_cells = 5.5 * rho**1.5  # cortical magnification: many voxels near the fovea
    theta = np.arctan2(-rz, rx)  # superior voxels -> upper visual field (top rows)
    px = np.clip(3.5 + ecc_cells * np.cos(theta) + rng.normal(0, 0.3, ex.size), 0, 7)
    py = np.clip(3.5 + ecc_cells * np.sin(theta) + rng.normal(0, 0.3, ex.size), 0, 7)
    px, py = _fill_empty_bands(px, py)
    ecc_deg = np.hypot(px - 3.5, py - 3.5) * DEG_PER_CELL
    sigma = 0.6 + 0.15 * ecc_deg / DEG_PER_CELL + 1.2 * (eu / 0.30) + rng.uniform(0, 0.3, ex.size)
    prf = {name: np.full(shape, np.nan) for name in ("x", "y", "sigma")}
    prf["x"][ei], prf["y"][ei], prf["sigma"][ei] = px, py, sigma

    rois = {}
    base = np.where(brain, 0, -1).astype(np.int16)
    r = base.copy()
    r[ng] = 1
    rois["nsdgeneral"] = r
    r = base.copy()
    r[streams > 0] = streams[streams > 0]
    rois["streams"] = r

    # prf-visualrois: rank posterior -> anterior, lower/upper half in w
    rank = np.argsort(np.argsort(eu + 1e-9 * np.arange(eu.size))) / max(eu.size - 1, 1)
    lower = ez <= np.median(ez)
    vis = np.where(rank < 0.35, 1, np.where(rank < 0.65, 3, np.where(rank < 0.9, 5, 7)))
    vis = np.where(vis == 7, np.where(lower, 7, 6), np.where(lower, vis, vis + 1))
    r = base.copy()
    r[ei] = vis
    rois["prf-visualrois"] = r

    ecc_lab = 1 + np.searchsorted(np.asarray(ECC_EDGES), ecc_deg, side="right")
    r = base.copy()
    r[ei] = ecc_lab
    rois["prf-eccrois"] = r

    cand = np.argwhere(ng & ((streams == 5) | (streams == 6)))
    cu = u[tuple(cand.T)]
    for name in ("floc-faces", "floc-words", "floc-places", "floc-bodies"):
        n_lab = len(layout.LABEL_TABLES[name])
        r = base.copy()
        if len(cand):
            centre = cand[int(rng.integers(len(cand)))]
            d = np.linalg.norm((cand - centre) * np.array([1.0, 1.0, 1.0]), axis=1)
            n_take = min(len(cand), max(n_lab, int(round(0.3 * len(cand)))))
            take = np.argsort(d + 1e-6 * rng.random(len(cand)), kind="stable")[:n_take]
            order = take[np.argsort(cu[take], kind="stable")]
            labels = 1 + (np.arange(n_take) * n_lab) // n_take
            r[tuple(cand[order].T)] = labels
        rois[name] = r

    return {"brain": brain, "rois": rois, "prf": prf, "u": u, "w": w}


def anatomy(brain: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Anatomy volumes: ``mean`` (float32 EPI-like mean), ``brainmask`` (int16 0/1),
    ``T1_to_func1pt8mm`` (float32 T1-like: bright core, darker rim, 0 outside)."""
    shape = brain.shape
    i, j, k = np.meshgrid(*[(np.arange(n) + 0.5) / n for n in shape], indexing="ij")
    r2 = ((2 * i - 1) / 0.95) ** 2 + ((2 * j - 1) / 0.97) ** 2 + ((2 * k - 1) / 0.92) ** 2
    mean = np.where(brain, 900 + 250 * (1 - r2) + 300 * k, 40.0)
    mean = mean + rng.normal(0, 15, shape)
    t1 = np.where(brain, np.where(r2 < 0.55, 110.0, 70.0), 0.0) + np.where(brain, rng.normal(0, 4, shape), 0)
    return {
        "mean": np.clip(mean, 0, None).astype(np.float32),
        "brainmask": brain.astype(np.int16),
        "T1_to_func1pt8mm": t1.astype(np.float32),
    }
