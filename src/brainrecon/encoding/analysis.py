"""One voxelwise encoding analysis: features -> PCA -> ridge (CV alphas) -> r, p, FDR.

Takagi & Nishimoto (CVPR 2023), "Encoding": for each feature space (z, c, zc at several
noise levels, U-Net activations at several denoising steps), a linear model predicts
every voxel's response from the image features. Features are reduced to 6,400 PCA
components estimated on the training images; weights are estimated on the training set
with L2 regularisation (alphas chosen by cross-validation, one per voxel) and applied to
the test images (N = 982, responses averaged over repetitions); accuracy is the Pearson
r between predicted and measured test responses, tested one-sided against the null of
correlations between independent Gaussian vectors of length N and FDR-corrected (BH).

The ridge is the project's one ridge, :class:`brainrecon.regression.ridge.KernelRidgeDecoder`
(features -> voxels here).
"""

from __future__ import annotations

import logging

import numpy as np

from brainrecon.encoding.pca import pca_scores
from brainrecon.encoding.stats import fdr_bh, pearson_r_per_voxel, pvalue_null_gaussian

__all__ = ["encoding_analysis"]

log = logging.getLogger(__name__)



def _torch_device(backend) -> str:
    name = backend if isinstance(backend, str) else getattr(backend, "name", "numpy")
    return "cuda" if name == "torch_cuda" else "cpu"


def _shape2(x, name: str) -> tuple[int, int]:
    shape = tuple(int(s) for s in (x.shape if hasattr(x, "shape") else np.shape(x)))
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {shape}")
    return shape


def _ridge_class():
    from brainrecon.regression import KernelRidgeDecoder

    return KernelRidgeDecoder


def encoding_analysis(train_X, train_Y, test_X, test_Y, settings, *, folds=None, return_pred: bool = False,
                      progress: bool = True) -> dict:
    """Fit and evaluate one voxelwise encoding model.

    ``settings`` (:class:`brainrecon.encoding.plan.FitSettings`) gives ``alphas`` (several: chosen per voxel
    by CV), ``cv`` (folds of the alpha search, unless ``folds`` gives them), ``backend``,
    ``n_components``, ``q``, ``standardize_X`` and ``target_batch``.

    Parameters
    ----------
    train_X : array-like (n, d)   features of the training images (numpy, memmap, h5py)
    train_Y : array-like (n, V)   training responses (prepared betas; rows match train_X)
    test_X : array-like (m, d)    features of the test images
    test_Y : array (m, V)         measured test responses (repetition averages)
    settings.alphas : ridge penalties; several -> chosen per voxel by CV
    settings.cv / folds : cross-validation folds for the alpha search (an int, or explicit
        (train, validation) index pairs in ``folds``, e.g. grouped by image)
    settings.backend : himalaya backend name ("numpy", "torch", "torch_cuda"); PCA runs with torch
        on the same device (cuda for "torch_cuda", else cpu)
    settings.n_components : PCA components fitted on train_X only (paper: 6400), capped by the rank
        of the centred training features; None or d <= n_components: no PCA (a rotation
        would not change a ridge on unstandardised features).
    settings.q : BH-FDR level
    settings.standardize_X : z-score the (PCA) features before the ridge. False (the schema's
        default): PCA scores keep their variances, so the penalty shrinks low-variance components
        most (ridge on the centred features restricted to the top components).
    settings.target_batch : voxels per ridge batch
    return_pred : also return the test predictions (m, V)

    Returns
    -------
    dict with
      ``r`` (V,) Pearson r on the test set; ``p`` (V,) one-sided p (Student t, m - 2 dof);
      ``p_adj`` (V,) BH-adjusted p; ``significant`` (V,) bool, p_adj <= q;
      ``best_alphas`` (V,) alpha used per voxel; ``n_components_used`` int (d if no PCA);
      ``pca_note`` str; ``n_test`` int (m); ``q``; ``pred`` (m, V) if ``return_pred``.
    """
    alphas, cv, backend, q = settings.alphas, settings.cv if folds is None else folds, settings.backend, settings.q
    n_components, standardize_X, target_batch = settings.n_components, settings.standardize_X, settings.target_batch
    dtype = "float32"
    n, d = _shape2(train_X, "train_X")
    m, d_test = _shape2(test_X, "test_X")
    if d_test != d:
        raise ValueError(f"test_X has {d_test} features but train_X has {d}")
    n_y, V = _shape2(train_Y, "train_Y")
    if n_y != n:
        raise ValueError(f"train_X has {n} rows but train_Y has {n_y}")
    test_Y = np.asarray(test_Y)
    if test_Y.shape != (m, V):
        raise ValueError(f"test_Y must be (m={m} test rows, V={V} voxels), got shape {test_Y.shape}")

    if n_components is not None and d > int(n_components):
        sc = pca_scores(train_X, test_X, int(n_components), device=_torch_device(backend), dtype=np.float32)
        Xtr, Xte, k, note = sc.train, sc.test, sc.n_components, sc.note
    else:
        Xtr, Xte = np.asarray(train_X[:]), np.asarray(test_X[:])
        k = d
        note = f"no PCA: {d} features <= n_components={n_components}"
        log.info(note)

    Ridge = _ridge_class()
    alist = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    model = Ridge(
        alphas=alist,
        cv=cv if alist.size > 1 else None,
        backend=backend,
        target_batch=target_batch,
        fit_intercept=True,
        standardize_X=standardize_X,
        cv_score=settings.cv_score,
        dtype=dtype,
        per_target_alpha=True,
        progress=progress,
    )
    model.fit(Xtr, train_Y)
    pred = model.predict(Xte)
    best = np.asarray(model.alphas_, dtype=np.float64).reshape(V)

    r = pearson_r_per_voxel(pred, test_Y)
    p = pvalue_null_gaussian(r, m)
    significant, p_adj = fdr_bh(p, q)
    log.info(
        "encoding: %d train, %d test, %d -> %d features, %d voxels: median r %.3f, %d significant (q=%g)",
        n,
        m,
        d,
        k,
        V,
        float(np.median(r)),
        int(significant.sum()),
        q,
    )
    out = dict(
        r=r,
        p=p,
        p_adj=p_adj,
        significant=significant,
        best_alphas=best,
        n_components_used=int(k),
        pca_note=note,
        n_test=m,
        q=float(q),
    )
    if return_pred:
        out["pred"] = pred
    return out
