"""Voxelwise evaluation statistics of encoding models: Pearson r, its null p-value, BH-FDR.

Takagi & Nishimoto (CVPR 2023) evaluate each voxel by the Pearson correlation between
the predicted and the measured test responses (N = 982 test images), compute a one-sided
p-value against the null distribution of correlations between two independent Gaussian
random vectors of length N, and threshold at q < 0.05 after Benjamini–Hochberg FDR
correction. These three steps are implemented here, array in, array out (numpy).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["pearson_r_per_voxel", "pvalue_null_gaussian", "fdr_bh"]


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (m, V) (or (m,)), got shape {a.shape}")
    return a


def pearson_r_per_voxel(pred, true, chunk: int = 4096) -> np.ndarray:
    """Pearson correlation between predicted and measured responses, column by column.

    Parameters
    ----------
    pred, true : array (m, V)
        Predicted and measured responses of V voxels on the same m test samples
        (rows aligned). Any unit; r is scale- and offset-invariant.
    chunk : int
        Voxels processed at a time (bounds the float64 temporaries to m × chunk).

    Returns
    -------
    r : float64 array (V,)
        r[v] = corr(pred[:, v], true[:, v]) in [-1, 1]. A column with zero variance
        (in either input) has no defined correlation; it is given r = 0, i.e. treated as
        "no evidence of prediction" (its null p-value is then 0.5, never significant).
    """
    pred = _as_2d(pred, "pred")
    true = _as_2d(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must have the same shape (m, V)")
    m, V = pred.shape
    if m < 2:
        raise ValueError(f"need at least 2 samples to correlate, got m={m}")
    r = np.empty(V, dtype=np.float64)
    for a in range(0, V, chunk):
        p = np.asarray(pred[:, a : a + chunk], dtype=np.float64)
        t = np.asarray(true[:, a : a + chunk], dtype=np.float64)
        if not (np.isfinite(p).all() and np.isfinite(t).all()):
            raise ValueError("pred/true contain NaN or inf values")
        p = p - p.mean(axis=0)
        t = t - t.mean(axis=0)
        num = np.einsum("ij,ij->j", p, t)
        den = np.sqrt(np.einsum("ij,ij->j", p, p) * np.einsum("ij,ij->j", t, t))
        with np.errstate(invalid="ignore", divide="ignore"):
            rc = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        r[a : a + chunk] = np.clip(rc, -1.0, 1.0)
    return r


def pvalue_null_gaussian(r, n: int) -> np.ndarray:
    """One-sided (upper-tail) p-value of a sample correlation under the Gaussian null.

    Null hypothesis: r is the sample Pearson correlation of two independent Gaussian
    random vectors of length ``n`` (as in Takagi & Nishimoto 2023, N = 982 test images).
    Its exact distribution is known: with ``t = r * sqrt((n - 2) / (1 - r**2))``, t
    follows Student's t with ``n - 2`` degrees of freedom (it suffices that one of the
    two vectors is i.i.d. Gaussian and independent of the other). The one-sided p-value
    is the upper tail ``P(T >= t)``, so a large positive correlation is significant and
    a negative one never is (p > 0.5).

    Parameters
    ----------
    r : array (V,)
        Sample correlations, in [-1, 1] (values a hair outside from rounding are clipped).
    n : int
        Length of the correlated vectors (number of test samples), n >= 3.

    Returns
    -------
    p : float64 array (V,), in [0, 1]. r = 1 gives p = 0, r = -1 gives p = 1.
    """
    n = int(n)
    if n < 3:
        raise ValueError(f"the null distribution needs n >= 3 samples, got n={n}")
    r = np.asarray(r, dtype=np.float64)
    if np.isnan(r).any():
        raise ValueError("r contains NaN values")
    if (np.abs(r) > 1 + 1e-9).any():
        raise ValueError(f"correlations must lie in [-1, 1], got range [{r.min()}, {r.max()}]")
    r = np.clip(r, -1.0, 1.0)
    dof = n - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(dof / ((1.0 - r) * (1.0 + r)))
    # r = ±1 -> t = ±inf -> sf = 0 / 1, which is the exact limit.
    return stats.t.sf(t, dof)


def fdr_bh(p, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg false discovery rate control.

    Steps (m tests): sort the p-values ascending, p_(1) <= ... <= p_(m); find the largest
    k with p_(k) <= k q / m; declare the k smallest p-values significant. Equivalently
    the BH-adjusted p-value of the i-th smallest is ``min_{j >= i} min(1, p_(j) m / j)``
    and a test is significant iff its adjusted p-value is <= q.

    Parameters
    ----------
    p : array (V,)
        p-values in [0, 1] (no NaN).
    q : float
        Target false discovery rate, 0 < q < 1.

    Returns
    -------
    significant : bool array (V,)
    p_adj : float64 array (V,)
        BH-adjusted p-values (same as ``scipy.stats.false_discovery_control(p, method='bh')``).
    """
    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"FDR level q must be in (0, 1), got {q}")
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p must be 1-D (V,), got shape {p.shape}")
    if np.isnan(p).any():
        raise ValueError("p-values contain NaN")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must be in [0, 1], got range [{p.min()}, {p.max()}]")
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adj_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    p_adj = np.empty(m, dtype=np.float64)
    p_adj[order] = adj_sorted
    return p_adj <= q, p_adj
