"""Principal component analysis of feature matrices, fitted on training rows only.

Takagi & Nishimoto (CVPR 2023) reduce every feature space to 6,400 dimensions with PCA
estimated on the training images before fitting the encoding models. Feature spaces
range from 6,400 (SD latent z) to ~10^5–10^6 dimensions (U-Net activations), with
n = 8,859 training images, so the fit never holds a centred n × d copy of the data:

* d <= n ("covariance" route): one pass over row blocks accumulates the d × d scatter
  matrix of the centred rows; its top eigenvectors are the components.
* d > n ("Gram" route): one pass over column blocks accumulates the n × n Gram matrix
  of the centred rows (and the column means); its top eigenvectors U and eigenvalues
  s**2 give the components ``V = (U / s).T @ Xc`` (second column pass).

Both are exact (not randomised); memory is O(min(n, d)**2) float64 plus one block of
~``block_bytes`` plus the k × d components.

When only the projections are needed (the encoding analysis), :func:`pca_scores` skips the
components in the Gram route: the training scores are ``U s`` and the test scores come from the
m × n cross-Gram matrix ``(F_test - mean) @ Xc.T @ U / s``, accumulated in the same single
column pass — memory O(n (n + m)) instead of k × d (13 GB for a flattened 320-px ``up3`` block at
k = 6,400), and the data are read once instead of three times. The data may be any 2-D array-like that
supports numpy slicing (ndarray, np.memmap, h5py.Dataset). Linear algebra runs in
float64 with torch on ``device`` ("cpu" or "cuda").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["PCAModel", "PCAScores", "fit_pca", "pca_scores"]

log = logging.getLogger(__name__)

_DEFAULT_BLOCK_BYTES = 256 * 2**20


def _check_2d(x, name: str) -> tuple[int, int]:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _block(x, rows=slice(None), cols=slice(None), name="features", device="cpu") -> torch.Tensor:
    b = np.asarray(x[rows, cols], dtype=np.float64)
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contain NaN or inf values (rows {rows}, columns {cols})")
    return torch.from_numpy(b).to(device)


def _flip_signs(comps: torch.Tensor) -> torch.Tensor:
    """Deterministic sign: the largest-magnitude loading of every component is positive."""
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps[torch.arange(comps.shape[0], device=comps.device), idx])
    signs[signs == 0] = 1
    return comps * signs[:, None]


@dataclass
class PCAModel:
    """A fitted PCA: ``transform(F) = (F - mean) @ components.T``.

    Attributes
    ----------
    mean : float64 (d,)            column means of the training features
    components : (k, d)            orthonormal rows, by decreasing explained variance
    explained_variance : (k,)      variance of the training projections (ddof = 1)
    n_samples, n_features : int    shape of the training matrix
    n_components_requested : int
    note : str                     how many components were kept and why (rank cap)
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    n_samples: int
    n_features: int
    n_components_requested: int
    route: str
    note: str = ""
    device: str = field(default="cpu", repr=False)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, feats, block_bytes: int = _DEFAULT_BLOCK_BYTES) -> np.ndarray:
        """Project ``feats`` (m, d) onto the components -> (m, k), dtype of ``components``.

        Rows are processed in blocks of about ``block_bytes`` (float64).
        """
        m, d = _check_2d(feats, "features to transform")
        if d != self.n_features:
            raise ValueError(
                f"features to transform have {d} columns but the PCA was fitted on {self.n_features}"
            )
        comps = torch.from_numpy(np.ascontiguousarray(self.components)).to(self.device)
        mean = torch.from_numpy(self.mean).to(self.device)
        out = np.empty((m, self.n_components), dtype=self.components.dtype)
        step = max(1, min(m, block_bytes // (8 * max(d, 1))))
        blocks = range(0, m, step)
        for a in tqdm(blocks, desc="PCA transform", unit="block", leave=False, disable=len(blocks) < 2):
            b = _block(feats, slice(a, a + step), name="features to transform", device=self.device)
            proj = (b - mean).to(comps.dtype) @ comps.T
            out[a : a + step] = proj.cpu().numpy()
        return out


def _pca_args(n: int, d: int, n_components, rel_tol, dtype):
    """Validate the PCA settings; return (components to keep, rank cap, rel_tol, torch dtype)."""
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if n < 2:
        raise ValueError(f"PCA needs at least 2 training rows, got {n}")
    if rel_tol is None:
        rel_tol = 10 * max(n, d) * np.finfo(np.float64).eps
    tdtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    if not tdtype.is_floating_point:
        raise ValueError(f"PCA dtype must be a float type, got {dtype!r}")
    cap = min(n - 1, d)
    return min(n_components, cap), cap, rel_tol, tdtype


def fit_pca(
    train_feats,
    n_components: int = 6400,
    *,
    device: str = "cpu",
    dtype=np.float32,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    rel_tol: float | None = None,
) -> PCAModel:
    """Fit PCA on training features only.

    Parameters
    ----------
    train_feats : array-like (n, d)
        Training features (rows = training images). Test rows must not be passed here.
    n_components : int
        Requested number of components (the paper's 6,400). The number kept is capped by
        the rank of the centred data, ``min(n - 1, d)`` (centring removes one dimension,
        so the brief's ``min(n, d)`` is reached only without centring), and further by
        the numerical rank: eigenvalues <= ``rel_tol * max eigenvalue`` are dropped
        (default ``rel_tol = 10 * max(n, d) * eps64``). ``note`` says what was kept.
    device : "cpu" | "cuda" (or any torch device string)
    dtype : dtype of the stored components and of ``transform`` output (float32 default:
        k × d components are the largest object; eigen-solves are float64 regardless).
    block_bytes : approximate size of one streamed block of rows/columns.

    Returns
    -------
    PCAModel
    """
    n, d = _check_2d(train_feats, "training features")
    n_components = int(n_components)
    k_req, cap, rel_tol, tdtype = _pca_args(n, d, n_components, rel_tol, dtype)

    if d <= n:
        route = "covariance"
        step = max(1, min(n, block_bytes // (8 * d)))
        blocks = range(0, n, step)
        s = torch.zeros(d, dtype=torch.float64, device=device)
        for a in tqdm(blocks, desc="PCA mean", unit="block", leave=False, disable=len(blocks) < 2):
            s += _block(train_feats, slice(a, a + step), name="training features", device=device).sum(0)
        mean = s / n
        C = torch.zeros((d, d), dtype=torch.float64, device=device)
        for a in tqdm(blocks, desc="PCA scatter", unit="block", leave=False, disable=len(blocks) < 2):
            b = _block(train_feats, slice(a, a + step), name="training features", device=device) - mean
            C += b.T @ b
        evals, evecs = torch.linalg.eigh(C)
        evals, evecs = evals.flip(0), evecs.flip(1)
        keep = _n_keep(evals, k_req, rel_tol)
        comps = evecs[:, :keep].T.contiguous()
        del C, evecs
    else:
        route = "gram"
        step = max(1, min(d, block_bytes // (8 * n)))
        blocks = range(0, d, step)
        mean = torch.empty(d, dtype=torch.float64, device=device)
        G = torch.zeros((n, n), dtype=torch.float64, device=device)
        for a in tqdm(blocks, desc="PCA Gram", unit="block", leave=False, disable=len(blocks) < 2):
            b = _block(train_feats, cols=slice(a, a + step), name="training features", device=device)
            mu = b.mean(0)
            mean[a : a + step] = mu
            b = b - mu
            G += b @ b.T
        evals, U = torch.linalg.eigh(G)
        del G
        evals, U = evals.flip(0), U.flip(1)
        keep = _n_keep(evals, k_req, rel_tol)
        W = (U[:, :keep] / torch.sqrt(evals[:keep])).T.contiguous()  # (k, n)
        del U
        # allocated directly in the output dtype: k x d is the largest object of the fit
        comps = torch.empty((keep, d), dtype=tdtype, device=device)
        for a in tqdm(blocks, desc="PCA components", unit="block", leave=False, disable=len(blocks) < 2):
            b = _block(train_feats, cols=slice(a, a + step), name="training features", device=device)
            comps[:, a : a + step] = (W @ (b - mean[a : a + step])).to(tdtype)
    comps = _flip_signs(comps.to(tdtype))
    note = (
        f"PCA ({route} route) on {n} training rows x {d} features: requested {n_components} "
        f"components, rank cap min(n-1, d) = {cap}, kept {keep}"
    )
    if keep < k_req:
        note += f" (dropped {k_req - keep} with eigenvalue <= {rel_tol:.2g} x largest: numerically rank-deficient)"
    log.info(note)
    return PCAModel(
        mean=mean.cpu().numpy(),
        components=comps.cpu().numpy(),
        explained_variance=(evals[:keep] / (n - 1)).cpu().numpy(),
        n_samples=n,
        n_features=d,
        n_components_requested=n_components,
        route=route,
        note=note,
        device=str(device),
    )


def _n_keep(evals_desc: torch.Tensor, k_req: int, rel_tol: float) -> int:
    top = float(evals_desc[0]) if evals_desc.numel() else 0.0
    if top <= 0:
        raise ValueError("training features have zero variance: PCA is undefined")
    return int(min(k_req, int((evals_desc > rel_tol * top).sum())))


@dataclass
class PCAScores:
    """Projections of training and test rows on the training PCA (see :func:`pca_scores`).

    train : (n, k) and test : (m, k) in the requested dtype; explained_variance : (k,) (ddof 1);
    route : "covariance" | "gram"; note : what was kept and why.
    """

    train: np.ndarray
    test: np.ndarray
    explained_variance: np.ndarray
    route: str
    note: str

    @property
    def n_components(self) -> int:
        return int(self.train.shape[1])


def _take_rows(b: np.ndarray, rows) -> np.ndarray:
    return b if rows is None else b[rows]


def pca_scores(
    train_feats,
    test_feats,
    n_components: int = 6400,
    *,
    train_rows=None,
    test_rows=None,
    device: str = "cpu",
    dtype=np.float32,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    rel_tol: float | None = None,
) -> PCAScores:
    """PCA fitted on the training rows; returns the scores of the training and test rows.

    The same PCA as :func:`fit_pca` (same kept components, same rank cap and tolerance; every
    component's sign may differ, which changes no linear model fitted on the scores) without
    forming the k × d components when ``d > n``: one pass over column blocks accumulates the
    n × n Gram matrix of the centred training rows and the m × n cross products of the test rows,
    so memory is O(n (n + m)) float64 plus one block, whatever ``d``.

    train_feats, test_feats : 2-D array-likes with the same number of columns (ndarray, memmap,
        h5py.Dataset: read in column blocks, every row of a block at once).
    train_rows, test_rows : optional row indices (any order, no repeats needed) selecting the rows
        used, in the order of the returned scores; default all rows.
    Signs: the largest-magnitude training score of every component is positive.
    """
    n_all, d = _check_2d(train_feats, "training features")
    m_all, d_te = _check_2d(test_feats, "test features")
    if d_te != d:
        raise ValueError(f"test features have {d_te} columns but the training features have {d}")
    train_rows = None if train_rows is None else np.asarray(train_rows, dtype=np.int64)
    test_rows = None if test_rows is None else np.asarray(test_rows, dtype=np.int64)
    for rows, total, name in ((train_rows, n_all, "train_rows"), (test_rows, m_all, "test_rows")):
        if rows is not None and rows.size and (rows.min() < 0 or rows.max() >= total):
            raise IndexError(f"{name} index out of range for {total} rows")
    n = n_all if train_rows is None else int(train_rows.size)
    if d <= n:  # small d: the components are cheap (d x d); reuse the covariance route
        sel_tr = train_feats if train_rows is None else np.asarray(train_feats[()], np.float64)[train_rows]
        pca = fit_pca(sel_tr, n_components, device=device, dtype=dtype, block_bytes=block_bytes, rel_tol=rel_tol)
        te = pca.transform(test_feats, block_bytes=block_bytes)
        return PCAScores(train=pca.transform(sel_tr, block_bytes=block_bytes), test=_take_rows(te, test_rows),
                         explained_variance=pca.explained_variance, route=pca.route, note=pca.note)
    n_components = int(n_components)
    k_req, cap, rel_tol, tdtype = _pca_args(n, d, n_components, rel_tol, dtype)
    m = m_all if test_rows is None else int(test_rows.size)

    step = max(1, min(d, block_bytes // (8 * max(n_all, m_all))))
    blocks = range(0, d, step)
    G = torch.zeros((n, n), dtype=torch.float64, device=device)
    C = torch.zeros((m, n), dtype=torch.float64, device=device)
    for a in tqdm(blocks, desc="PCA Gram", unit="block", leave=False, disable=len(blocks) < 2):
        cols = slice(a, a + step)
        b = _block(train_feats, cols=cols, name="training features", device=device)
        if train_rows is not None:
            b = b[torch.from_numpy(train_rows).to(device)]
        mu = b.mean(0)
        b = b - mu
        G += b @ b.T
        t = _block(test_feats, cols=cols, name="test features", device=device)
        if test_rows is not None:
            t = t[torch.from_numpy(test_rows).to(device)]
        C += (t - mu) @ b.T
        del b, t
    evals, U = torch.linalg.eigh(G)
    del G
    evals, U = evals.flip(0), U.flip(1)
    keep = _n_keep(evals, k_req, rel_tol)
    sq = torch.sqrt(evals[:keep])
    Uk = U[:, :keep]
    del U
    train = Uk * sq  # = Xc @ V.T
    test = (C @ Uk) / sq
    del C
    idx = train.abs().argmax(dim=0)
    signs = torch.sign(train[idx, torch.arange(keep, device=train.device)])
    signs[signs == 0] = 1
    note = (
        f"PCA (gram route, scores only) on {n} training rows x {d} features: requested {n_components} "
        f"components, rank cap min(n-1, d) = {cap}, kept {keep}"
    )
    if keep < k_req:
        note += f" (dropped {k_req - keep} with eigenvalue <= {rel_tol:.2g} x largest: numerically rank-deficient)"
    log.info(note)
    return PCAScores(
        train=(train * signs).to(tdtype).cpu().numpy(),
        test=(test * signs).to(tdtype).cpu().numpy(),
        explained_variance=(evals[:keep] / (n - 1)).cpu().numpy(),
        route="gram",
        note=note,
    )
