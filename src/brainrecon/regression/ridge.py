"""One ridge for every feature space: one factorisation shared by every target and alpha.

Brain-Diffuser fits ``sklearn.linear_model.Ridge`` once per CLIP token (and once for the
VDVAE latents); each fit recomputes the ``n x n`` kernel and factorises it again. All of
those fits share the same design ``X``, so here the Gram matrix of the standardised design
``Xs`` (n x p) is computed once and factorised once for every target (and, with a grid,
once per CV fold for every alpha):

* dual regime (``n <= p``, the fMRI case): ``K = Xs Xs^T``; predictions for new rows
  ``Xn`` (standardised with the training statistics) are ``Kn (K + alpha I)^-1 Yc`` with
  ``Kn = Xn Xs^T``;
* primal regime (``n > p``): ``G = Xs^T Xs``; predictions are ``Xn (G + alpha I)^-1 Xs^T Yc``.

Both are ``H_alpha @ Yc`` with a *hat matrix* ``H_alpha`` of shape ``(m, n)`` formed once
per alpha (``m`` = rows to predict). ``(M + alpha I)^-1`` is applied through one
eigendecomposition ``M = Q diag(lam) Q^T`` shared by all alphas when many alphas are
needed at once (CV grids), or through a Cholesky factorisation per alpha when few are (a
fixed alpha: ~1/20 of the cost of an eigendecomposition) — see :class:`SPDSolver`.
Targets ``Yc`` (train targets minus their train mean when ``fit_intercept``) are then
streamed in batches of columns: the only work proportional to the number of targets
``T`` is ``m x n x T`` (SPEC §10); neither ``p x T`` weights nor an ``n x T`` dual matrix is
formed unless asked (:meth:`KernelRidgeDecoder.primal_weights`, :meth:`KernelRidgeDecoder.save`).

Results equal ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)`` fitted on the
standardised design. Arrays live on the device of the chosen himalaya backend
(``"numpy"``, ``"torch"``, ``"torch_cuda"``, ...); inputs and outputs are numpy.

Why one long module: the solver (shared factorisation, CV grid, column batches, backends) and the decoder that
holds its state are one algorithm whose pieces share private invariants (standardisation statistics, the
factorisation cache); splitting them would publish those internals.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from brainrecon.io import atomic_path
from brainrecon.regression.targets import TargetMatrix, column_batches

log = logging.getLogger(__name__)

FORMAT = "brainrecon.regression.ridge/1"
#: CV scores of an alpha grid (see KernelRidgeDecoder)
CV_SCORES = ("r2", "l2_neg_loss")
_DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------- backend helpers
def resolve_backend(backend):
    """Return the himalaya backend module named ``backend`` without changing the global one.

    ``None`` means himalaya's current backend (``himalaya.backend.get_backend()``).
    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when the backend's
    device is missing here (e.g. ``"torch_cuda"`` without CUDA).
    """
    from himalaya.backend import ALL_BACKENDS, get_backend, set_backend

    if backend is None:
        return get_backend()
    if isinstance(backend, str) and backend in ALL_BACKENDS:
        name = backend
    elif hasattr(backend, "name") and getattr(backend, "name") in ALL_BACKENDS:
        return backend
    else:
        raise ValueError(f"backend={backend!r} is unknown; choose one of {list(ALL_BACKENDS)}")
    # check availability ourselves: himalaya's device backends call pytest.skip on import
    # failure when pytest is loaded, which would hide the error
    if name in ("torch", "torch_cuda", "torch_mps") and importlib.util.find_spec("torch") is None:
        raise RuntimeError(f"backend={name!r} needs PyTorch, which is not installed")
    if name == "torch_cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("backend='torch_cuda' is not available here: torch.cuda.is_available() is False")
    if name == "torch_mps":
        import torch

        if not torch.backends.mps.is_available():
            raise RuntimeError("backend='torch_mps' is not available here")
    if name == "cupy" and importlib.util.find_spec("cupy") is None:
        raise RuntimeError("backend='cupy' needs CuPy, which is not installed")
    previous = get_backend().name
    try:
        module = set_backend(name, on_error="raise")
    except Exception as err:  # noqa: BLE001 - re-raised with the argument named
        raise RuntimeError(f"backend={name!r} cannot be loaded: {err}") from err
    finally:
        set_backend(previous)
    return module


def _is_numpy(B) -> bool:
    return B.name in ("numpy",)


def _np(B, x) -> np.ndarray:
    return np.asarray(B.to_numpy(x))


def _index(B, idx, like):
    """Integer index array usable on ``like``'s device."""
    if _is_numpy(B):
        return idx
    import torch

    return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=like.device)


def _eigh(B, M):
    """Eigen-decomposition of a symmetric matrix on the backend (ascending eigenvalues)."""
    import scipy.linalg

    if _is_numpy(B):
        return scipy.linalg.eigh(M, driver="evd", check_finite=False)
    if B.name == "torch" and M.device.type == "cpu":
        # torch's CPU eigh is ~5x slower than LAPACK's divide and conquer through scipy
        import torch

        w, v = scipy.linalg.eigh(M.numpy(), driver="evd", check_finite=False)
        return torch.from_numpy(w), torch.from_numpy(np.ascontiguousarray(v))
    w, v = B.eigh(M)
    return w, v


def _cast(B, x, dtype):
    return B.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------- input checks
def _check_design(X, name: str, n_features: int | None = None) -> np.ndarray:
    if X is None:
        raise ValueError(f"{name} is None; expected an (n, p) array")
    X = np.asarray(X[()] if isinstance(X, h5py.Dataset) else X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features (columns) but the model was fitted on {n_features}")
    finite = np.isfinite(X)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {r}, column {c})")
    return X


def _check_alphas(alphas) -> np.ndarray:
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"alphas must be a positive scalar or a 1-D sequence, got {alphas!r}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"alphas must be finite and > 0, got {a.tolist()}")
    # unique, keeping the given order (ties in CV go to the first)
    _, first = np.unique(a, return_index=True)
    return a[np.sort(first)]


def _standardise_stats(X: np.ndarray, center: bool, scale: bool, ddof: int, chunk: int = 2048):
    """Column mean and scale of ``X`` in float64 (zero-variance columns get scale 1)."""
    n, p = X.shape
    mean = np.zeros(p)
    sd = np.ones(p)
    if center or scale:
        for i in range(0, n, chunk):
            mean += X[i:i + chunk].sum(0, dtype=np.float64)
        mean /= n
    if scale:
        if n - ddof <= 0:
            raise ValueError(f"X needs more than {ddof} row(s) to estimate a standard deviation")
        ss = np.zeros(p)
        for i in range(0, n, chunk):
            d = X[i:i + chunk].astype(np.float64) - mean
            ss += (d * d).sum(0)
        sd = np.sqrt(ss / (n - ddof))
        # zero-std guard: constant columns become 0 after centring instead of NaN
        sd[sd <= 1e-8 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean, sd


# --------------------------------------------------------------------------- factorisation
def _chol_factor(B, M, alpha):
    """Cholesky factor of ``M + alpha I`` (backend-native), or None if not positive definite."""
    r = M.shape[0]
    if _is_numpy(B):
        import scipy.linalg

        A = M.copy()
        A.flat[:: r + 1] += alpha
        try:
            # A is symmetric: its transpose is the same matrix in Fortran order, factorised in
            # place as upper (OpenBLAS's lower potrf on C-order input is ~10x slower)
            return scipy.linalg.cho_factor(A.T, lower=False, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
    import torch

    A = M.clone()
    A.diagonal().add_(alpha)
    L, info = torch.linalg.cholesky_ex(A)
    return None if int(info) != 0 else L


def _chol_solve(B, c, R):
    if _is_numpy(B):
        import scipy.linalg

        return scipy.linalg.cho_solve(c, R, check_finite=False)
    import torch

    return torch.cholesky_solve(R, c)


class SPDSolver:
    """Solves ``(M + alpha I) Z = R`` for a symmetric PSD ``M`` (r, r) and many alphas.

    Two ways, same numbers: one eigendecomposition ``M = Q diag(lam) Q^T`` shared by every
    alpha (``Z = Q diag(1/(lam+alpha)) Q^T R``), or one Cholesky factorisation of
    ``M + alpha I`` per alpha. An eigendecomposition costs about as much as 15-20 Cholesky
    factorisations (measured on CPU: 2000x2000 float64 eigh 5-8 s vs Cholesky 0.1-0.4 s;
    GPUs are similar), so ``method="auto"`` factorises by Cholesky when at most ``eigh_above``
    alphas are needed at once and by eigendecomposition otherwise (kept once computed).
    """

    def __init__(self, B, M, method: str = "auto", eigh_above: int = 4):
        self.B, self.M, self.method, self.eigh_above = B, M, method, int(eigh_above)
        self._eig = None
        self._chol = {}
        if not (_is_numpy(B) or B.name.startswith("torch")):
            self.method = "eigh"  # Cholesky helpers exist for numpy and torch only

    def _use_eigh(self, n_alphas: int) -> bool:
        if self.method == "eigh" or self._eig is not None:
            return True
        return self.method == "auto" and n_alphas > self.eigh_above

    def eig(self):
        if self._eig is None:
            t0 = time.perf_counter()
            w, Q = _eigh(self.B, self.M)
            w = self.B.clip(w, 0, None) if _is_numpy(self.B) else w.clamp(min=0)
            self._eig = (w, Q)
            log.info("eigendecomposition %d x %d: %.2f s", self.M.shape[0], self.M.shape[0], time.perf_counter() - t0)
        return self._eig

    def _factor(self, alpha):
        alpha = float(alpha)
        if alpha not in self._chol:
            if len(self._chol) >= self.eigh_above:
                self._chol.pop(next(iter(self._chol)))
            c = _chol_factor(self.B, self.M, alpha)
            if c is None:  # numerically not positive definite: fall back to the eigendecomposition
                log.warning("Cholesky of M + %g I failed; using the eigendecomposition", alpha)
                self.method = "eigh"
                return None
            self._chol[alpha] = c
        return self._chol[alpha]

    def solve_many(self, alphas, R):
        """``[(M + a I)^-1 R for a in alphas]`` on the backend (dtype of ``M``)."""
        alphas = [float(a) for a in alphas]
        if not self._use_eigh(len(alphas)):
            out = []
            for a in alphas:
                c = self._factor(a)
                if c is None:
                    break
                out.append(_chol_solve(self.B, c, R))
            else:
                return out
        w, Q = self.eig()
        G = Q.T @ R
        return [Q @ (G / (w + a)[:, None]) for a in alphas]

    def solve(self, alpha, R):
        return self.solve_many([alpha], R)[0]


class RidgeFactorisation:
    """Standardised training design and its Gram matrix, factorised once and shared by
    every target, alpha and fold. Created by :meth:`KernelRidgeDecoder.fit`; pass
    ``decoder.factor_`` to another decoder's ``fit(..., factor=...)`` to reuse it for
    another target set of the same X (e.g. the other feature spaces of a subject).

    Attributes: ``regime`` (``"dual"``: ``M = Xs Xs^T`` (n, n); ``"primal"``:
    ``M = Xs^T Xs`` (p, p)), ``n``, ``p``, ``x_mean``, ``x_scale`` (float64, (p,)),
    ``Xs`` (n, p) and ``M`` on the backend, ``solver`` (:class:`SPDSolver` of ``M``).
    """

    def __init__(self, B, X: np.ndarray, *, standardize: bool, center: bool, ddof: int,
                 solver: str, factor_dtype: str, factorisation: str = "auto", eigh_above: int = 4):
        self.B = B
        self.n, self.p = X.shape
        self.standardize, self.center, self.ddof = bool(standardize), bool(center), int(ddof)
        self.factor_dtype = factor_dtype
        self.factorisation, self.eigh_above = factorisation, int(eigh_above)
        self.backend_name = B.name
        t0 = time.perf_counter()
        self.x_mean, self.x_scale = _standardise_stats(X, center, standardize, ddof)
        self.Xs = self.transform(X)
        if solver == "auto":
            solver = "dual" if self.n <= self.p else "primal"
        self.regime = solver
        self.M = (self.Xs @ self.Xs.T) if solver == "dual" else (self.Xs.T @ self.Xs)
        self.solver = SPDSolver(B, self.M, factorisation, eigh_above)
        log.info("ridge Gram matrix (%s, n=%d, p=%d, %s, %s): %.2f s", self.regime, self.n, self.p,
                 B.name, factor_dtype, time.perf_counter() - t0)

    def transform(self, Xnew: np.ndarray):
        """Standardise rows with the training statistics; returns a backend array."""
        Z = (np.asarray(Xnew, dtype=np.float64) - self.x_mean) / self.x_scale
        return _cast(self.B, Z, self.factor_dtype)

    def hats(self, Zn, alphas, dtype):
        """Hat matrices ``H_a`` (m, n), one per alpha, for standardised new rows ``Zn``
        (m, p): predictions are ``H_a @ Yc + y_mean``. Cast to ``dtype``."""
        if self.regime == "dual":
            Zs = self.solver.solve_many(alphas, (Zn @ self.Xs.T).T)  # (K + aI)^-1 Kn^T
            return [_cast(self.B, Z.T, dtype) for Z in Zs]
        Zs = self.solver.solve_many(alphas, Zn.T)  # (G + aI)^-1 Zn^T
        return [_cast(self.B, Z.T @ self.Xs.T, dtype) for Z in Zs]

    def coef(self, alpha, Yc):
        """Coefficients for centred targets ``Yc`` (n, k): dual coefficients
        ``(K + aI)^-1 Yc`` (n, k) or standardised-space weights ``(G + aI)^-1 Xs^T Yc`` (p, k)."""
        if self.regime == "dual":
            return self.solver.solve(alpha, Yc)
        return self.solver.solve(alpha, self.Xs.T @ Yc)

    def fold_hats(self, tr: np.ndarray, va: np.ndarray, fit_intercept: bool, alphas, dtype):
        """Hat matrices of one CV fold, one per alpha, each (n_va, n_tr): the validation
        predictions of ``Ridge(alpha, fit_intercept)`` fitted on ``Xs[tr]`` are
        ``H_a @ (Y[tr] - mean) + mean``. The fold's Gram matrix is factorised once."""
        B = self.B
        itr, iva = _index(B, tr, self.Xs), _index(B, va, self.Xs)
        if self.regime == "dual":
            Ktr = self.M[itr][:, itr]
            Kva = self.M[iva][:, itr]
            if fit_intercept:  # centre the fold's training design: C K C and (Kva - 1 m^T) C
                rm = Ktr.mean(1)
                Ktr = Ktr - rm[:, None] - rm[None, :] + rm.mean()
                Z = Kva - rm[None, :]
                Kva = Z - Z.mean(1)[:, None]
            sol = SPDSolver(B, Ktr, self.factorisation, self.eigh_above)
            return [_cast(B, Z.T, dtype) for Z in sol.solve_many(alphas, Kva.T)]
        Xtr, Xva = self.Xs[itr], self.Xs[iva]
        if fit_intercept:
            mf = Xtr.mean(0)
            Xtr, Xva = Xtr - mf[None, :], Xva - mf[None, :]
        sol = SPDSolver(B, Xtr.T @ Xtr, self.factorisation, self.eigh_above)
        return [_cast(B, Z.T @ Xtr.T, dtype) for Z in sol.solve_many(alphas, Xva.T)]

    def compatible(self, X: np.ndarray, *, standardize, center, ddof, solver, factor_dtype, backend_name):
        """Raise ``ValueError`` unless this factorisation fits ``X`` and these settings."""
        if X.shape != (self.n, self.p):
            raise ValueError(f"factor was computed for X of shape {(self.n, self.p)}, got X of shape {X.shape}")
        want = (bool(standardize), bool(center), int(ddof), factor_dtype, backend_name)
        have = (self.standardize, self.center, self.ddof, self.factor_dtype, self.backend_name)
        if want != have:
            raise ValueError(f"factor settings (standardize_X, centred, x_ddof, factor_dtype, backend)={have} "
                             f"differ from this decoder's {want}")
        if solver not in ("auto", self.regime):
            raise ValueError(f"factor uses solver {self.regime!r}, decoder asks for {solver!r}")
        if self.center or self.standardize:
            mean = X.mean(0, dtype=np.float64)
            if not np.allclose(mean, self.x_mean, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(mean).max()))):
                raise ValueError("factor was computed for a different X (column means differ)")


# --------------------------------------------------------------------------- estimator
class KernelRidgeDecoder:
    """Multi-target ridge regression (decoding fMRI -> features, or encoding) sharing one
    factorisation across all targets and alphas.

    Parameters
    ----------
    alphas : float or sequence of float
        A fixed alpha (Brain-Diffuser: VDVAE 5e4, CLIP-vision 6e4, CLIP-text 1e5) or a grid
        searched by K-fold cross-validation (``cv``).
    cv : int, splitter or iterable of (train_idx, val_idx), or None
        Folds for choosing alpha when ``alphas`` has several values. An int ``k`` means
        contiguous K-fold without shuffling (``sklearn.model_selection.KFold(k)``); an
        object with ``.split(X)`` is called; an iterable gives index pairs. X is standardised
        once on all training rows (like himalaya); each fold's design is re-centred when
        ``fit_intercept``. Ignored for a single alpha.
    cv_score : "r2" or "l2_neg_loss"
        How a fold's validation predictions are scored, per target, before the mean over folds:
        ``"l2_neg_loss"`` = minus the mean squared error (himalaya's default ``score_func``,
        Takagi's ``RidgeCV``), ties going to the larger alpha (himalaya adds ``1e-10 log(alpha)``
        to the fold mean); ``"r2"`` = the validation R² (sklearn ``GridSearchCV``), ties going to
        the first alpha in ``alphas``.
    backend : str or None
        himalaya backend: ``"numpy"``, ``"torch"``, ``"torch_cuda"``, ... (None: himalaya's
        current one). Arrays stay on that backend's device; inputs/outputs are numpy.
    target_batch : int
        Target columns processed at once (memory ~ ``n * target_batch``). For targets with
        ``ndim > 2`` batches are rounded to whole indices of axis 1 (e.g. whole tokens).
    fit_intercept : bool
        Centre targets on their train mean and add it back (as sklearn's Ridge).
    standardize_X : bool
        z-score the columns of X with the training mean/std (``x_ddof``; zero-std columns
        get scale 1, i.e. become 0).
    dtype : "float32" or "float64"
        Precision of everything proportional to the number of targets.
    per_target_alpha : bool
        With a grid: one alpha per target (True) or one alpha for all targets (False).
    target_groups : None, int or array of shape (T,)
        With a grid: choose one alpha per group of targets by the group's mean CV score.
        An int ``g`` makes contiguous groups of ``g`` flattened targets (768 = one alpha per
        CLIP token); an array gives a group label per flattened target. Overrides
        ``per_target_alpha``.
    progress : bool
        tqdm progress bars over target batches.
    solver : "auto", "dual" or "primal"
        ``auto`` uses the kernel (dual) form when ``n <= p`` and the primal form otherwise.
    x_ddof : int
        Degrees of freedom of the X standard deviation: 0 (StandardScaler, Takagi) or 1
        (Brain-Diffuser's ``np.std(..., ddof=1)``).
    factor_dtype : "float64" or "float32"
        Precision of the standardised design, its Gram matrix and their factorisations.
    factorisation : "auto", "eigh" or "cholesky"
        How ``(M + alpha I)^-1`` is applied (M = the Gram matrix of the training design or
        of a CV fold): one eigendecomposition shared by every alpha, or one Cholesky
        factorisation per alpha. ``auto`` takes Cholesky when at most ``eigh_above``
        alphas are needed at once (a fixed alpha; a small grid) and the eigendecomposition
        for larger grids — an eigendecomposition costs ~15-20 Cholesky factorisations.
    eigh_above : int
        Threshold of ``auto`` (also the number of Cholesky factors kept in memory).

    Attributes after ``fit``
    ------------------------
    factor_ : RidgeFactorisation; regime_ : "dual" | "primal";
    alphas_ : alpha used per target, shaped like the targets (``Y.shape[1:]``);
    best_alphas_ : same as ``alphas_`` when alpha was chosen by CV, else None;
    cv_scores_ : (n_alphas, *target_shape) mean validation score (``cv_score``), or None;
    x_mean_, x_scale_ : (p,) standardisation of X; y_mean_, y_std_ : train target mean and
    std (ddof 0) shaped like the targets (computed on first use — a pass over Y).

    Notes
    -----
    ``fit`` keeps a reference to ``Y`` (no copy): an h5py dataset must stay open until
    ``predict``/``save`` are done. Each ``predict`` streams ``Y`` once; with a CV grid,
    ``fit`` streams it once per fold (folds outer, target batches inner) and holds one
    fold's stacked hat matrices (``n_alphas x n_val x n_train`` in ``dtype``).

    Memory (dual regime, float32 targets, factor_dtype float64): ``Xs`` and ``K``
    (``8 n p + 8 n^2`` bytes), one Cholesky factor per alpha in use or the eigenvectors
    (``8 n^2`` each), one target batch (``4 n target_batch``) and the predictions
    (``4 m T``). At the NSD shape about 3-5 GB.
    """

    def __init__(self, alphas=1.0, cv=5, backend="numpy", target_batch=4096, fit_intercept=True,
                 standardize_X=True, dtype="float32", per_target_alpha=True, target_groups=None,
                 progress=True, solver="auto", x_ddof=0, factor_dtype="float64", factorisation="auto",
                 eigh_above=4, cv_score="r2"):
        self.alphas = _check_alphas(alphas)
        if cv_score not in CV_SCORES:
            raise ValueError(f"cv_score must be one of {CV_SCORES}, got {cv_score!r}")
        self.cv_score = cv_score
        if cv is not None and isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
            if cv < 2:
                raise ValueError(f"cv must be >= 2 folds, got cv={cv}")
        elif cv is not None and not hasattr(cv, "split"):
            if not hasattr(cv, "__iter__"):
                raise ValueError(f"cv must be None, an int >= 2, a splitter or an iterable of (train, val), got {cv!r}")
            cv = list(cv)  # a generator of folds must survive several fits
        self.cv = cv
        if backend is not None:
            from himalaya.backend import ALL_BACKENDS

            if not ((isinstance(backend, str) and backend in ALL_BACKENDS) or hasattr(backend, "name")):
                raise ValueError(f"backend={backend!r} is unknown; choose one of {list(ALL_BACKENDS)}")
        self.backend = backend
        if not isinstance(target_batch, numbers.Integral) or isinstance(target_batch, bool) or target_batch < 1:
            raise ValueError(f"target_batch must be a positive int, got {target_batch!r}")
        self.target_batch = int(target_batch)
        self.fit_intercept = bool(fit_intercept)
        self.standardize_X = bool(standardize_X)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if factor_dtype not in _DTYPES:
            raise ValueError(f"factor_dtype must be one of {_DTYPES}, got {factor_dtype!r}")
        self.dtype, self.factor_dtype = dtype, factor_dtype
        if factorisation not in ("auto", "eigh", "cholesky"):
            raise ValueError(f"factorisation must be 'auto', 'eigh' or 'cholesky', got {factorisation!r}")
        if not isinstance(eigh_above, numbers.Integral) or eigh_above < 1:
            raise ValueError(f"eigh_above must be a positive int, got {eigh_above!r}")
        self.factorisation, self.eigh_above = factorisation, int(eigh_above)
        self.per_target_alpha = bool(per_target_alpha)
        self.target_groups = target_groups
        self.progress = bool(progress)
        if solver not in ("auto", "dual", "primal"):
            raise ValueError(f"solver must be 'auto', 'dual' or 'primal', got {solver!r}")
        self.solver = solver
        if x_ddof not in (0, 1):
            raise ValueError(f"x_ddof must be 0 or 1, got {x_ddof!r}")
        self.x_ddof = int(x_ddof)
        self._reset()

    def _reset(self):
        self.factor_ = None
        self._targets = None
        self._coef_path = None
        self._stats_done = False
        self.best_alphas_ = None
        self.cv_scores_ = None

    # ------------------------------------------------------------------ properties
    @property
    def regime_(self):
        self._check_fitted()
        return self._regime

    @property
    def x_mean_(self):
        self._check_fitted()
        return self._x_mean

    @property
    def x_scale_(self):
        self._check_fitted()
        return self._x_scale

    @property
    def y_mean_(self):
        self._ensure_stats()
        return self._ym.reshape(self.target_shape_)

    @property
    def y_std_(self):
        self._ensure_stats()
        return self._ys.reshape(self.target_shape_)

    @property
    def alphas_(self):
        self._check_fitted()
        return self.alphas[self._alpha_idx].reshape(self.target_shape_)

    def _check_fitted(self):
        if self.factor_ is None and self._coef_path is None:
            raise RuntimeError("KernelRidgeDecoder is not fitted: call fit(X, Y) or load(path) first")

    # ------------------------------------------------------------------ fit
    def fit(self, X, Y, factor: RidgeFactorisation | None = None):
        """Factorise the standardised design once and (with an alpha grid) choose alphas by CV.

        X : (n, p) numeric array (fMRI patterns, train rows). Y : (n, *target_shape)
        array-like (numpy, memmap, h5py.Dataset) read in column batches. ``factor``: a
        ``RidgeFactorisation`` from a decoder fitted on the same X with the same settings,
        to skip the factorisation (e.g. one per feature space of the same subject).
        """
        self._reset()
        B = resolve_backend(self.backend)
        self._B = B
        X = _check_design(X, "X")
        tm = TargetMatrix(Y, "Y")
        if tm.n != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {tm.n} rows; they must match (one row per sample)")
        if X.shape[0] < 2:
            raise ValueError(f"X needs at least 2 rows, got {X.shape[0]}")
        center = self.fit_intercept or self.standardize_X
        if factor is None:
            factor = RidgeFactorisation(B, X, standardize=self.standardize_X, center=center, ddof=self.x_ddof,
                                        solver=self.solver, factor_dtype=self.factor_dtype,
                                        factorisation=self.factorisation, eigh_above=self.eigh_above)
        else:
            factor.compatible(X, standardize=self.standardize_X, center=center, ddof=self.x_ddof,
                              solver=self.solver, factor_dtype=self.factor_dtype, backend_name=B.name)
        self.factor_ = factor
        self._regime = factor.regime
        self._x_mean, self._x_scale = factor.x_mean, factor.x_scale
        self._targets = tm
        self.target_shape_ = tm.target_shape
        self._inner = tm.inner
        self.n_train_, self.n_features_in_ = X.shape
        self._ym = np.zeros(tm.T)
        self._ys = np.zeros(tm.T)
        self._alpha_idx = np.zeros(tm.T, dtype=np.int64)
        if self.alphas.size > 1:
            if self.cv is None:
                raise ValueError(f"several alphas {self.alphas.tolist()} need cv (folds) to choose among them; "
                                 "pass cv=k or a single alpha")
            self._cross_validate()
        return self

    def _splits(self, n):
        cv = self.cv
        if isinstance(cv, numbers.Integral):
            if cv > n:
                raise ValueError(f"cv={cv} folds is more than the {n} training rows")
            va_sets = np.array_split(np.arange(n), cv)
            pairs = [(np.setdiff1d(np.arange(n), va), va) for va in va_sets]
        elif hasattr(cv, "split"):
            pairs = list(cv.split(np.zeros((n, 1))))
        else:
            pairs = list(cv)
        out = []
        for k, (tr, va) in enumerate(pairs):
            tr, va = np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64)
            if tr.size < 2 or va.size < 1 or tr.min() < 0 or va.min() < 0 or max(tr.max(), va.max()) >= n:
                raise ValueError(f"cv fold {k} has invalid train/val indices for {n} rows")
            out.append((tr, va))
        if len(out) < 2:
            raise ValueError(f"cv must give at least 2 folds, got {len(out)}")
        return out

    def _batches(self, desc):
        bl = column_batches(self._n_targets(), self._inner, self.target_batch)
        return tqdm(bl, desc=desc, disable=not self.progress, unit="batch", leave=False)

    def _load(self, a, b):
        """Targets a:b on the backend (``dtype``); computes train stats on the first full pass."""
        B = self._B
        raw = self._targets.read(a, b)
        Yb = _cast(B, raw, self.dtype)
        if not self._stats_done:
            n = Yb.shape[0]
            s = Yb.sum(0, dtype=B.float64)  # NaN/inf in a column make its sum non-finite
            if not bool(B.all(B.isfinite(s) if hasattr(B, "isfinite") else ~(B.isnan(s) | B.isinf(s)))):
                bad = ~np.isfinite(np.asarray(raw, dtype=np.float64))
                col = a + int(np.flatnonzero(bad.any(0))[0])
                raise ValueError(f"Y contains NaN or inf (flattened target column {col})")
            mu = s / n
            D = Yb - _cast(B, mu, self.dtype)[None, :]
            self._ym[a:b] = _np(B, mu)
            self._ys[a:b] = np.sqrt(_np(B, (D * D).sum(0, dtype=B.float64)) / n)
        return Yb

    def _ensure_stats(self):
        self._check_fitted()
        if not self._stats_done:
            for a, b in self._batches("target stats"):
                self._load(a, b)
            self._stats_done = True

    def _cross_validate(self):
        B, factor, tm = self._B, self.factor_, self._targets
        folds = self._splits(factor.n)
        nA = self.alphas.size
        scores = np.zeros((nA, tm.T))
        t0 = time.perf_counter()
        for k, (tr, va) in enumerate(folds):
            # all alphas' hat matrices stacked: (nA * n_va, n_tr)
            H = B.concatenate(factor.fold_hats(tr, va, self.fit_intercept, self.alphas, self.dtype), 0)
            itr, iva = _index(B, tr, H), _index(B, va, H)
            for a, b in self._batches(f"cv fold {k + 1}/{len(folds)}"):
                Yb = self._load(a, b)
                Ytr, Yva = Yb[itr], Yb[iva]
                if self.fit_intercept:
                    mtr = Ytr.mean(0)
                    Ytr = Ytr - mtr[None, :]
                P = (H @ Ytr).reshape(nA, va.size, b - a)
                if self.fit_intercept:
                    P = P + mtr[None, None, :]
                sse = _np(B, ((P - Yva[None]) ** 2).sum(1)).astype(np.float64)
                if self.cv_score == "l2_neg_loss":
                    score = -sse / va.size
                else:
                    sst = _np(B, ((Yva - Yva.mean(0)[None, :]) ** 2).sum(0)).astype(np.float64)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        score = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), 0.0)
                scores[:, a:b] += score / len(folds)
            self._stats_done = True
            del H
        if self.cv_score == "l2_neg_loss":  # himalaya's tie-break towards larger alphas
            scores += (np.log(self.alphas.astype(np.float64)) * 1e-10)[:, None]
        groups = self.target_groups
        if groups is not None:
            if isinstance(groups, numbers.Integral):
                if groups < 1:
                    raise ValueError(f"target_groups must be a positive group size or labels, got {groups}")
                labels = np.arange(tm.T) // int(groups)
            else:
                labels = np.asarray(groups).reshape(-1)
                if labels.size != tm.T:
                    raise ValueError(f"target_groups has {labels.size} labels but Y has {tm.T} targets")
            _, inv = np.unique(labels, return_inverse=True)
            sums = np.zeros((nA, inv.max() + 1))
            for i in range(nA):
                sums[i] = np.bincount(inv, weights=scores[i])
            self._alpha_idx = np.argmax(sums, axis=0)[inv]
        elif self.per_target_alpha:
            self._alpha_idx = np.argmax(scores, axis=0)
        else:
            self._alpha_idx = np.full(tm.T, int(np.argmax(scores.mean(1))))
        self.cv_scores_ = scores.reshape((nA,) + tm.target_shape)
        self.best_alphas_ = self.alphas[self._alpha_idx].reshape(tm.target_shape)
        log.info("ridge CV over %d alphas x %d folds x %d targets: %.2f s", nA, len(folds), tm.T,
                 time.perf_counter() - t0)

    # ------------------------------------------------------------------ predict
    def _stream(self, Xnew, desc="predict"):
        """Yield ``(a, b, pred)`` with ``pred`` the (m, b - a) numpy predictions of columns a:b."""
        self._check_fitted()
        Xnew = _check_design(Xnew, "Xnew", self.n_features_in_)
        B = self._B
        if self._coef_path is not None:
            yield from self._stream_loaded(Xnew, desc)
            return
        factor = self.factor_
        used = np.unique(self._alpha_idx)
        hats = dict(zip(used.tolist(), factor.hats(factor.transform(Xnew), self.alphas[used], self.dtype)))
        for a, b in self._batches(desc):
            Yb = self._load(a, b)
            if self.fit_intercept:
                ym = _cast(B, self._ym[a:b], self.dtype)
                Yb = Yb - ym[None, :]
            idx = self._alpha_idx[a:b]
            if len(used) == 1:
                P = hats[int(used[0])] @ Yb
            else:
                P = B.zeros_like(Yb, shape=(Xnew.shape[0], b - a))
                for i in np.unique(idx):
                    cols = _index(B, np.flatnonzero(idx == i), Yb)
                    P[:, cols] = hats[int(i)] @ Yb[:, cols]
            if self.fit_intercept:
                P = P + ym[None, :]
            yield a, b, _np(B, P)
        self._stats_done = True

    def predict(self, Xnew) -> np.ndarray:
        """Predictions for new patterns ``Xnew`` (m, p) -> (m, *target_shape) numpy (``dtype``).

        Rows may be test trials, ROI patterns or other subjects' tests mapped to this
        subject's voxels: they are standardised with the training statistics and predicted
        through their kernel with the training rows.
        """
        self._check_fitted()
        m = np.shape(Xnew)[0] if hasattr(Xnew, "shape") else len(Xnew)
        out = np.empty((m, self._n_targets()), dtype=self.dtype)
        for a, b, P in self._stream(Xnew):
            out[:, a:b] = P
        return out.reshape((m,) + tuple(self.target_shape_))

    def fit_predict(self, X, Y, Xnew, factor=None) -> np.ndarray:
        """``fit(X, Y)`` then ``predict(Xnew)``; without CV, Y is read exactly once and no
        ``n x T`` (dual) or ``p x T`` (primal) matrix is ever formed."""
        return self.fit(X, Y, factor=factor).predict(Xnew)

    def _n_targets(self):
        return int(math.prod(self.target_shape_)) if self.target_shape_ else 1

    # ------------------------------------------------------------------ coefficients
    def _coef_batches(self, desc="coef"):
        """Yield ``(a, b, C)`` with ``C`` (q, b - a) on the backend: dual coefficients
        (q = n) in the dual regime, standardised-space weights (q = p) in the primal."""
        B, factor = self._B, self.factor_
        used = np.unique(self._alpha_idx)
        if factor.solver._use_eigh(len(used)):
            factor.solver.eig()  # many alphas: one eigendecomposition instead of a Cholesky each
        for a, b in self._batches(desc):
            Yb = self._load(a, b)
            if self.fit_intercept:
                Yb = Yb - _cast(B, self._ym[a:b], self.dtype)[None, :]
            Yb = _cast(B, Yb, factor.factor_dtype)
            idx = self._alpha_idx[a:b]
            q = factor.n if self._regime == "dual" else factor.p
            C = B.zeros_like(Yb, shape=(q, b - a))
            for i in np.unique(idx):
                cols = _index(B, np.flatnonzero(idx == i), Yb)
                C[:, cols] = factor.coef(self.alphas[i], Yb[:, cols])
            yield a, b, _cast(B, C, self.dtype)
        self._stats_done = True

    def primal_weights(self, a: int = 0, b: int | None = None) -> np.ndarray:
        """Explicit ridge weights ``(p, b - a)`` for flattened targets ``a:b`` (all by default),
        in standardised-X space: ``pred = ((Xnew - x_mean_) / x_scale_) @ W + y_mean_``.
        Costs ``p x (b - a)`` memory — ask only for what you need."""
        self._check_fitted()
        T = self._n_targets()
        b = T if b is None else int(b)
        if not (0 <= a < b <= T):
            raise ValueError(f"target range {a}:{b} is outside 0:{T}")
        out = np.empty((self.n_features_in_, b - a), dtype=self.dtype)
        if self._coef_path is not None:
            with h5py.File(self._coef_path, "r") as f:
                C = f["coef"][:, a:b]
                out[:] = (f["x_train"][()].T @ C) if self._regime == "dual" else C
            return out
        B = self._B
        XsT = _cast(B, self.factor_.Xs.T, self.dtype) if self._regime == "dual" else None
        for a0, b0, C in self._coef_batches("weights"):
            lo, hi = max(a0, a), min(b0, b)
            if lo >= hi:
                continue
            Cs = C[:, lo - a0:hi - a0]
            W = (XsT @ Cs) if XsT is not None else Cs
            out[:, lo - a:hi - a] = _np(B, W)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write what is needed to predict new patterns later to HDF5 (atomic).

        Layout: attrs (format, regime, settings, target_shape); ``x_mean``, ``x_scale``
        (p,); ``x_train`` (n, p) standardised training design (dual regime only — needed
        for the kernel with new rows); ``coef`` (q, T) in ``dtype``, chunked by target batch:
        dual coefficients (q = n) in the dual regime or weights (q = p) in the primal one,
        whichever is smaller; ``y_mean``, ``y_std``, ``alphas`` (T,); ``cv_scores`` when CV.
        At the NSD shape (n=8859, T=347680, float32) ``coef`` is ~12 GB: prefer predicting
        every needed pattern set in one pass (``ridge_predict_test(extra_X=...)``).
        """
        self._check_fitted()
        path = Path(path)
        with atomic_path(path) as tmp:
            if self._coef_path is not None:  # loaded model: copy the file
                import shutil

                shutil.copyfile(self._coef_path, tmp)
                return path
            factor, T = self.factor_, self._n_targets()
            q = factor.n if self._regime == "dual" else factor.p
            with h5py.File(tmp, "w") as f:
                f.attrs.update(format=FORMAT, regime=self._regime, fit_intercept=self.fit_intercept,
                               standardize_X=self.standardize_X, x_ddof=self.x_ddof, dtype=self.dtype,
                               factor_dtype=self.factor_dtype, backend=str(self._B.name),
                               target_batch=self.target_batch, target_shape=np.asarray(self.target_shape_, np.int64),
                               alphas_grid=self.alphas, cv_score=self.cv_score)
                f["x_mean"] = self._x_mean
                f["x_scale"] = self._x_scale
                if self._regime == "dual":
                    f.create_dataset("x_train", data=_np(self._B, factor.Xs).astype(self.dtype))
                ds = f.create_dataset("coef", shape=(q, T), dtype=self.dtype,
                                      chunks=(q, max(1, min(T, self.target_batch, max(1, 2 ** 24 // q)))))
                for a, b, C in self._coef_batches("save"):
                    ds[:, a:b] = _np(self._B, C)
                f["y_mean"] = self._ym
                f["y_std"] = self._ys
                f["alphas"] = self.alphas[self._alpha_idx]
                if self.cv_scores_ is not None:
                    f["cv_scores"] = self.cv_scores_.reshape(self.alphas.size, -1)
        return path

    @classmethod
    def load(cls, path, backend=None, progress=True, target_batch=None):
        """Decoder from :meth:`save`'s file; ``predict`` streams ``coef`` from it.
        ``backend`` defaults to the one it was saved with."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ridge model file {path} does not exist")
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(f"{path} is not a brainrecon ridge model (format={f.attrs.get('format')!r})")
            at = dict(f.attrs)
            grid = np.asarray(at["alphas_grid"], dtype=np.float64)
            dec = cls(alphas=grid, cv=None, backend=backend if backend is not None else str(at["backend"]),
                      target_batch=int(target_batch or at["target_batch"]), fit_intercept=bool(at["fit_intercept"]),
                      standardize_X=bool(at["standardize_X"]), dtype=str(at["dtype"]), progress=progress,
                      x_ddof=int(at["x_ddof"]), factor_dtype=str(at["factor_dtype"]),
                      cv_score=str(at.get("cv_score", "r2")))
            dec._B = resolve_backend(dec.backend)
            dec._coef_path = path
            dec._regime = str(at["regime"])
            dec._x_mean = f["x_mean"][()]
            dec._x_scale = f["x_scale"][()]
            dec.n_features_in_ = int(dec._x_mean.shape[0])
            dec.n_train_ = int(f["x_train"].shape[0]) if "x_train" in f else None
            dec.target_shape_ = tuple(int(s) for s in np.asarray(at["target_shape"]).reshape(-1))
            dec._ym = f["y_mean"][()]
            dec._ys = f["y_std"][()]
            used = f["alphas"][()]
            sorter = np.argsort(grid)
            dec._alpha_idx = sorter[np.searchsorted(grid, used, sorter=sorter)]
            dec._stats_done = True
            if "cv_scores" in f:
                dec.cv_scores_ = f["cv_scores"][()].reshape((grid.size,) + dec.target_shape_)
                dec.best_alphas_ = used.reshape(dec.target_shape_)
            dec._inner = int(math.prod(dec.target_shape_[1:])) if len(dec.target_shape_) > 1 else 1
        return dec

    def _stream_loaded(self, Xnew, desc):
        B = self._B
        Z = (np.asarray(Xnew, dtype=np.float64) - self._x_mean) / self._x_scale
        with h5py.File(self._coef_path, "r") as f:
            if self._regime == "dual":
                F = _cast(B, Z.astype(self.dtype) @ f["x_train"][()].T, self.dtype)
            else:
                F = _cast(B, Z, self.dtype)
            coef = f["coef"]
            for a, b in self._batches(desc):
                P = F @ _cast(B, coef[:, a:b], self.dtype)
                if self.fit_intercept:
                    P = P + _cast(B, self._ym[a:b], self.dtype)[None, :]
                yield a, b, _np(B, P)

