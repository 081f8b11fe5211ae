"""Metric primitives shared by every method (SPEC.md §6 and §4 "Identification").

Pixel metrics take images, feature metrics take flattened features:

* images are ``uint8`` arrays (numpy or torch), channels last, ``(N, H, W, 3)`` in 0..255
  (integer arrays of another dtype are accepted when every value lies in 0..255; float
  arrays are refused because [0, 1] vs [0, 255] would be a guess);
* features are float arrays ``(N, D)`` (or ``(N, S, D)`` for several generated samples per
  image), one row per image; anything of higher rank is flattened after the first axis
  (or first two axes for samples).

Resizing (PixCorr, SSIM; :func:`resize_for_pixels`): the reconstruction is resized to the ground-truth
size either with bilinear interpolation and anti-aliasing on float values in [0, 1]
(``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)``, what
``torchvision.transforms.Resize`` does on tensors, the MindEye code path) or with PIL's default
(bicubic) ``Image.resize`` of the uint8 image (Brain-Diffuser's script). SSIM is the 2-D SSIM of
scikit-image >= 0.19 or the per-column 1-D SSIM that scikit-image 0.17.2 computed for Brain-Diffuser
(:func:`ssim_columns`).

Correlations are Pearson r computed in float64: rows are centred, divided by their norm,
and multiplied; a constant row (zero variance) has no Pearson r and raises ``ValueError``
naming the row rather than silently yielding NaN.

All identification scores are fractions in [0, 1] (the papers print them as %).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "as_uint8_images",
    "resize_images",
    "resize_for_pixels",
    "pixel_corr",
    "ssim_columns",
    "ssim_pair",
    "pixcorr",
    "ssim_score",
    "corr_matrix",
    "rowwise_corr",
    "two_way_identification",
    "two_way_from_corr",
    "identification_over_samples",
    "identification_from_mean_corr",
    "correlation_distance",
    "nway_top1",
    "SSIM_KWARGS",
]

#: The exact ``skimage.metrics.structural_similarity`` arguments (scikit-image >= 0.20 semantics).
SSIM_KWARGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
#: Window side implied by sigma=1.5 and skimage's truncate=3.5: 2*int(3.5*1.5 + 0.5) + 1.
_SSIM_MIN_SIDE = 11


# --------------------------------------------------------------------------- validation
def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_uint8_images(images, name: str = "images", ndim: int = 4) -> np.ndarray:
    """Validate ``images`` as channels-last RGB uint8 and return a numpy uint8 view/copy.

    ``ndim`` = 4 for ``(N, H, W, 3)``, 5 for ``(N, S, H, W, 3)``. Raises ``ValueError`` /
    ``TypeError`` naming ``name``, the shape or dtype, and the offending range.
    """
    arr = _to_numpy(images)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a uint8 array, got an object array (ragged list?)")
    layout = "(N, H, W, 3)" if ndim == 4 else "(N, S, H, W, 3)"
    if arr.ndim != ndim or arr.shape[-1] != 3:
        hint = ""
        if arr.ndim == ndim and arr.shape[-3] == 3:
            hint = " (looks channels-first; transpose to channels-last)"
        raise ValueError(f"{name}: expected shape {layout} RGB channels-last, got {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: no images (N = 0)")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer pixel values must lie in 0..255, got range [{lo}, {hi}]")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        raise TypeError(
            f"{name}: expected uint8 pixels in 0..255, got {arr.dtype} with range [{lo:.4g}, {hi:.4g}]; "
            "convert explicitly, e.g. (x * 255).round().clip(0, 255).astype(np.uint8) for [0, 1] floats"
        )
    raise TypeError(f"{name}: expected uint8 pixels in 0..255, got dtype {arr.dtype}")


def _check_same_n(a_name, a_n, b_name, b_n):
    if a_n != b_n:
        raise ValueError(f"{a_name} has N = {a_n} rows but {b_name} has N = {b_n}; they must pair one to one")


def _as_features(x, name: str, sample_axis: bool = False) -> torch.Tensor:
    """Features as a float64 CPU tensor (N, D) or (N, S, D); flattens trailing axes."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(_to_numpy(x)))
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name}: expected a numeric feature array, got dtype {t.dtype}")
    lead = 2 if sample_axis else 1
    want = "(N, S, D)" if sample_axis else "(N, D)"
    if t.ndim < lead + 1:
        raise ValueError(f"{name}: expected features shaped {want}, got shape {tuple(t.shape)}")
    t = t.reshape(*t.shape[:lead], -1)
    if t.shape[0] == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name}: empty feature array, shape {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name}: non-finite feature values (NaN/inf) in rows {bad}")
    return t


def _device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _standardise_rows(x: torch.Tensor, name: str, device, chunk: int = 256) -> torch.Tensor:
    """Rows centred and scaled to unit euclidean norm, float64 on ``device`` (chunked)."""
    dev = _device(device)
    out = torch.empty(x.shape, dtype=torch.float64, device=dev)
    for s in range(0, x.shape[0], chunk):
        b = x[s : s + chunk].to(dev, torch.float64)
        b = b - b.mean(dim=1, keepdim=True)
        norm = torch.linalg.vector_norm(b, dim=1, keepdim=True)
        zero = (norm.flatten() == 0).nonzero().flatten()
        if len(zero):
            rows = (zero + s).tolist()[:5]
            raise ValueError(f"{name}: rows {rows} are constant (zero variance); Pearson r is undefined")
        out[s : s + chunk] = b / norm
    return out


# --------------------------------------------------------------------------- pixel metrics
def resize_images(images_uint8: np.ndarray, size: tuple[int, int], device=None) -> torch.Tensor:
    """uint8 (N, h, w, 3) -> float64 tensor (N, 3, H, W) in [0, 1], resized to ``size`` = (H, W).

    Bilinear, ``align_corners=False``, anti-aliased (torchvision ``Resize(BILINEAR)`` on tensors);
    no resize when the size already matches.
    """
    t = torch.from_numpy(np.ascontiguousarray(images_uint8)).to(_device(device))
    t = t.permute(0, 3, 1, 2).to(torch.float64) / 255.0
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return t


def resize_for_pixels(images_uint8: np.ndarray, size: tuple[int, int], method: str = "tensor_bilinear",
                      device=None) -> np.ndarray:
    """The reconstructions the pixel metrics compare: float64 (N, H, W, 3) in [0, 1] at ``size`` = (H, W).

    ``tensor_bilinear``: :func:`resize_images` (MindEye); ``pil_bicubic``: PIL's default ``Image.resize`` of
    the uint8 image (bicubic for RGB; Brain-Diffuser's ``evaluate_reconstruction.py``), then /255.
    """
    if method == "tensor_bilinear":
        return resize_images(images_uint8, size, device).permute(0, 2, 3, 1).cpu().numpy()
    if method != "pil_bicubic":
        raise ValueError(f"pixel resize must be 'tensor_bilinear' or 'pil_bicubic', got {method!r}")
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((w, h), resample=Image.BICUBIC))
           if a.shape[:2] != (h, w) else a for a in images_uint8]
    return np.stack(out).astype(np.float64) / 255.0


def pixel_corr(g: np.ndarray, r: np.ndarray, label: str = "image") -> float:
    """Pearson r of two images' flattened RGB values (float); ValueError for a constant image."""
    gc = g.ravel() - g.mean()
    rc = r.ravel() - r.mean()
    den = np.sqrt((gc @ gc) * (rc @ rc))
    if den == 0:
        raise ValueError(f"PixCorr: {label} is constant in gt or recon; Pearson r is undefined")
    return float(gc @ rc / den)


#: scikit-image's gaussian window: sigma 1.5, truncate 3.5 -> radius int(3.5 * 1.5 + 0.5) = 5 (11 taps)
_SSIM_SIGMA, _SSIM_TRUNCATE = 1.5, 3.5


def ssim_columns(g_gray: np.ndarray, r_gray: np.ndarray) -> float:
    """scikit-image 0.17.2's ``structural_similarity(g, r, multichannel=True, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1.0)`` on 2-D grey images (H, W): it takes the last
    axis for channels, so this is the mean over the W columns of the 1-D SSIM of each column — gaussian
    filter along the column (11 taps, scipy's ``reflect`` mode), population covariances (cov_norm 1),
    K1 = 0.01, K2 = 0.03, the 5 values at each end cropped. What Brain-Diffuser's published SSIM computed."""
    from scipy.ndimage import gaussian_filter1d

    x, y = np.asarray(g_gray, np.float64), np.asarray(r_gray, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim_columns: expected two (H, W) grey images of one shape, got {x.shape}, {y.shape}")
    pad = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
    if x.shape[0] < 2 * pad + 1:
        raise ValueError(f"SSIM: {x.shape[0]} px columns are shorter than the 11-tap window")

    def filt(a):
        return gaussian_filter1d(a, _SSIM_SIGMA, axis=0, mode="reflect", truncate=_SSIM_TRUNCATE)

    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s[pad:x.shape[0] - pad].mean(0).mean())


def ssim_pair(g_gray: np.ndarray, r_gray: np.ndarray, kind: str = "2d") -> float:
    """SSIM of two grey float images in [0, 1]: ``2d`` (scikit-image >= 0.19, :data:`SSIM_KWARGS`) or
    ``columns_1d`` (:func:`ssim_columns`)."""
    if kind == "columns_1d":
        return ssim_columns(g_gray, r_gray)
    if kind != "2d":
        raise ValueError(f"SSIM kind must be '2d' or 'columns_1d', got {kind!r}")
    from skimage.metrics import structural_similarity

    return float(structural_similarity(g_gray, r_gray, **SSIM_KWARGS))


def _pixel_pairs(gt, recon, batch_size, device, desc, resize="tensor_bilinear"):
    """Yield (gt_i, recon_i) float64 numpy (H, W, 3) in [0, 1], recon resized to the GT size."""
    gt = as_uint8_images(gt, "gt")
    recon = as_uint8_images(recon, "recon")
    _check_same_n("gt", gt.shape[0], "recon", recon.shape[0])
    size = gt.shape[1:3]
    with tqdm(total=gt.shape[0], desc=desc, leave=False) as bar:
        for s in range(0, gt.shape[0], batch_size):
            g = gt[s : s + batch_size].astype(np.float64) / 255.0
            r = resize_for_pixels(recon[s : s + batch_size], size, resize, device)
            for gi, ri in zip(g, r):
                yield gi, ri
            bar.update(len(g))


def pixcorr(gt, recon, batch_size: int = 16, device=None, resize: str = "tensor_bilinear") -> float:
    """Mean per-image pixel correlation (Brain-Diffuser / MindEye "PixCorr").

    gt: uint8 (N, H, W, 3) (NSD: 425 px); recon: uint8 (N, h, w, 3), resized to (H, W) by ``resize``
    (:func:`resize_for_pixels`). For each image the RGB values are flattened and Pearson r computed (numpy
    ``corrcoef`` semantics); the N values are averaged. Constant images raise ``ValueError`` (r undefined).
    """
    rs = [pixel_corr(g, r, f"image {i}")
          for i, (g, r) in enumerate(_pixel_pairs(gt, recon, batch_size, device, "PixCorr", resize))]
    return float(np.mean(rs))


def ssim_score(gt, recon, batch_size: int = 16, device=None, resize: str = "tensor_bilinear",
               kind: str = "2d") -> float:
    """Mean SSIM on grayscale images (Brain-Diffuser / MindEye "SSIM").

    recon resized to the GT size by ``resize``, both converted with ``skimage.color.rgb2gray`` on float
    [0, 1] (0.2125 R + 0.7154 G + 0.0721 B), then :func:`ssim_pair` of ``kind``: ``2d`` =
    ``skimage.metrics.structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0`` (scikit-image >= 0.19), ``columns_1d`` = what
    scikit-image 0.17.2 computed for Brain-Diffuser (:func:`ssim_columns`); mean over the N images.
    """
    from skimage.color import rgb2gray

    gt_arr = as_uint8_images(gt, "gt")
    if min(gt_arr.shape[1:3]) < _SSIM_MIN_SIDE:
        raise ValueError(
            f"SSIM: gt images are {gt_arr.shape[1:3]} px; the 11x11 gaussian window (sigma 1.5) needs >= 11 px"
        )
    vals = [ssim_pair(rgb2gray(g), rgb2gray(r), kind)
            for g, r in _pixel_pairs(gt_arr, recon, batch_size, device, "SSIM", resize)]
    return float(np.mean(vals))


# --------------------------------------------------------------------------- correlations
def corr_matrix(a, b, device=None, chunk: int = 256, a_name: str = "a", b_name: str = "b") -> torch.Tensor:
    """Pearson r between every row of ``a`` (N, D) and every row of ``b`` (M, D): (N, M) float64 (CPU).

    ``r[i, j] = corr(a_i, b_j)`` (the top-right block of ``np.corrcoef(a, b)``). Computed in
    float64 on ``device`` in row chunks so (N, D) with D ~ 2e5 fits.
    """
    a = _as_features(a, a_name)
    b = _as_features(b, b_name)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} has D = {a.shape[1]} features but {b_name} has D = {b.shape[1]}")
    za = _standardise_rows(a, a_name, device, chunk)
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    for s in range(0, b.shape[0], chunk):
        zb = _standardise_rows(b[s : s + chunk], b_name, device, chunk)
        out[:, s : s + chunk] = (za @ zb.T).cpu()
    return out.clamp_(-1.0, 1.0)


def rowwise_corr(a, b, device=None, a_name: str = "a", b_name: str = "b") -> torch.Tensor:
    """Pearson r between paired rows: ``corr(a_i, b_i)`` for i < N, float64 (N,)."""
    a = _as_features(a, a_name)
    b = _as_features(b, b_name)
    _check_same_n(a_name, a.shape[0], b_name, b.shape[0])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} has D = {a.shape[1]} features but {b_name} has D = {b.shape[1]}")
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for s in range(0, a.shape[0], 256):
        za = _standardise_rows(a[s : s + 256], a_name, device)
        zb = _standardise_rows(b[s : s + 256], b_name, device)
        out[s : s + 256] = (za * zb).sum(1).cpu()
    return out.clamp_(-1.0, 1.0)


# --------------------------------------------------------------------------- identification
def two_way_from_corr(r) -> float:
    """Two-way identification from ``r[i, j] = corr(GT_i, recon_j)`` (N, N).

    For each reconstruction j: the fraction of ground truths i != j with ``r[i, j] < r[j, j]``
    (strict; ties count as failures), averaged over j. This is Brain-Diffuser's
    ``pairwise_corr_all`` / MindEye's ``two_way_identification``.
    """
    r = torch.as_tensor(_to_numpy(r), dtype=torch.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 2:
        raise ValueError(
            f"two-way identification needs a square (N, N) correlation matrix, N >= 2; got {tuple(r.shape)}"
        )
    n = r.shape[0]
    success = r < torch.diagonal(r)[None, :]  # [i, j]: r[i, j] < r[j, j]; the diagonal is never < itself
    return float(success.sum(0).double().mean() / (n - 1))


def two_way_identification(gt_feats, rec_feats, device=None) -> float:
    """Two-way identification accuracy (Brain-Diffuser / MindEye), a fraction in [0, 1].

    gt_feats, rec_feats: (N, D) (trailing axes are flattened), row i = image i. With
    ``r[i, j] = corr(GT_i, recon_j)``, returns the mean over reconstructions j of the fraction
    of GT images i != j with ``r[i, j] < r[j, j]`` (strict). Chance = 0.5.
    """
    g = _as_features(gt_feats, "gt_feats")
    r = _as_features(rec_feats, "rec_feats")
    _check_same_n("gt_feats", g.shape[0], "rec_feats", r.shape[0])
    if g.shape[0] < 2:
        raise ValueError("two-way identification needs at least 2 images")
    return two_way_from_corr(corr_matrix(g, r, device, a_name="gt_feats", b_name="rec_feats"))


def identification_from_mean_corr(m) -> float:
    """Takagi identification from ``m[i, j] = mean_s corr(GT_i, gen_{j,s})`` (N, N).

    For each ground truth i: the fraction of j != i with ``m[i, i] > m[i, j]`` (strict),
    averaged over i. Note the orientation: rows (GT) are fixed, unlike :func:`two_way_from_corr`.
    """
    m = torch.as_tensor(_to_numpy(m), dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"identification needs a square (N, N) matrix, N >= 2; got {tuple(m.shape)}")
    n = m.shape[0]
    success = torch.diagonal(m)[:, None] > m  # [i, j]: m[i, i] > m[i, j]
    return float(success.sum(1).double().mean() / (n - 1))


def identification_over_samples(gt_feats, rec_feats, device=None) -> float:
    """Takagi & Nishimoto identification over several generated samples, a fraction in [0, 1].

    gt_feats (N, D); rec_feats (N, S, D) with gen_{j,s} = sample s generated for image j
    (a (N, D) array counts as S = 1). ``m[i, j] = mean_s corr(GT_i, gen_{j,s})``; per GT image i
    the fraction of j != i with ``m[i, i] > m[i, j]`` (strict), averaged over i. Chance = 0.5.
    """
    g = _as_features(gt_feats, "gt_feats")
    rec_np = rec_feats if isinstance(rec_feats, torch.Tensor) else _to_numpy(rec_feats)
    if rec_np.ndim == 2:
        rec_np = rec_np[:, None, :]
    r = _as_features(rec_np, "rec_feats", sample_axis=True)
    _check_same_n("gt_feats", g.shape[0], "rec_feats", r.shape[0])
    n, s, d = r.shape
    if n < 2:
        raise ValueError("identification needs at least 2 images")
    c = corr_matrix(g, r.reshape(n * s, d), device, a_name="gt_feats", b_name="rec_feats")  # (N, N*S)
    m = c.reshape(n, n, s).mean(2)
    return identification_from_mean_corr(m)


def correlation_distance(gt_feats, rec_feats, device=None) -> float:
    """Mean correlation distance ``1 - corr(GT_i, recon_i)`` over images (EffNet-B, SwAV columns).

    gt_feats (N, D); rec_feats (N, D), or (N, S, D) in which case the distance is averaged
    over all N*S (image, sample) pairs. Same as ``scipy.spatial.distance.correlation``. Lower
    is better; 0 for identical features.
    """
    g = _as_features(gt_feats, "gt_feats")
    rec_np = rec_feats if isinstance(rec_feats, torch.Tensor) else _to_numpy(rec_feats)
    if rec_np.ndim == 3:
        r = _as_features(rec_np, "rec_feats", sample_axis=True)
        _check_same_n("gt_feats", g.shape[0], "rec_feats", r.shape[0])
        n, s, d = r.shape
        g = g[:, None, :].expand(n, s, g.shape[1]).reshape(n * s, -1)
        r = r.reshape(n * s, d)
    else:
        r = _as_features(rec_np, "rec_feats")
    return float((1.0 - rowwise_corr(g, r, device, "gt_feats", "rec_feats")).mean())


# --------------------------------------------------------------------------- n-way top-1
def nway_top1(gt, rec_logits, n: int = 50, trials: int = 100, seed: int = 0) -> float:
    """CnD / MinD-Vis n-way top-1 semantic accuracy with an ImageNet classifier, in [0, 1].

    gt: class ids (N,) int, or the classifier's logits/probabilities for the GT images (N, C)
    (its argmax is the GT class). rec_logits: logits/probabilities for the reconstructions
    (N, C) (any monotone transform gives the same answer). For each image and each of
    ``trials`` trials: draw n-1 distinct classes other than the GT class uniformly (seeded
    numpy Generator), success iff the reconstruction's score of the GT class is strictly
    larger than the n-1 drawn scores (ties fail). Returns the mean over images and trials.
    Chance = 1/n.
    """
    rec = _to_numpy(rec_logits)
    if rec.ndim != 2 or not np.issubdtype(rec.dtype, np.floating):
        raise ValueError(f"rec_logits: expected float (N, C) scores, got {rec.dtype} {rec.shape}")
    if not np.isfinite(rec).all():
        raise ValueError("rec_logits: non-finite values")
    N, C = rec.shape
    g = _to_numpy(gt)
    if g.ndim == 2:
        if g.shape != rec.shape:
            raise ValueError(f"gt scores have shape {g.shape} but rec_logits {rec.shape}")
        cls = g.argmax(1)
    elif g.ndim == 1 and np.issubdtype(g.dtype, np.integer):
        cls = g.astype(np.int64)
    else:
        raise ValueError(f"gt: expected class ids (N,) int or scores (N, C), got {g.dtype} {g.shape}")
    _check_same_n("gt", len(cls), "rec_logits", N)
    if not (2 <= n <= C):
        raise ValueError(f"n-way: n = {n} must lie in 2..C = {C}")
    if (cls < 0).any() or (cls >= C).any():
        raise ValueError(f"gt class ids must lie in 0..{C - 1}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    rng = np.random.default_rng(seed)
    hits = np.empty(N)
    for i in tqdm(range(N), desc=f"{n}-way top-1", leave=False):
        others = np.delete(np.arange(C), cls[i])  # C-1 candidate distractor classes
        # n-1 distinct distractors per trial: the first n-1 of a random permutation
        picks = np.argsort(rng.random((trials, C - 1)), axis=1)[:, : n - 1]
        distractor_scores = rec[i, others[picks]]  # (trials, n-1)
        hits[i] = np.mean(rec[i, cls[i]] > distractor_scores.max(1))
    return float(hits.mean())
