"""Targets read in column batches: numpy arrays, memmaps and h5py datasets alike.

A regression target set is an array-like ``Y`` of shape ``(n, *target_shape)`` — e.g.
VDVAE latents ``(n, 91168)``, CLIP-vision tokens ``(n, 257, 768)``. The ridge never
needs all of it at once: :class:`TargetMatrix` presents it as an ``(n, T)`` matrix with
``T = prod(target_shape)`` and reads blocks of whole columns. For ``ndim > 2`` the
blocks are aligned to the second axis (whole tokens), so an h5py dataset is read as
``Y[:, i0:i1]`` slabs and predictions can be written back slab by slab.
"""

from __future__ import annotations

import math

import numpy as np


def column_batches(T: int, inner: int, target_batch: int) -> list[tuple[int, int]]:
    """Column ranges ``(a, b)`` covering ``0:T`` with at most ``target_batch`` columns each
    (but at least ``inner``), aligned to multiples of ``inner`` (whole axis-1 indices)."""
    step = max(1, int(target_batch) // inner) * inner
    return [(a, min(a + step, T)) for a in range(0, T, step)]


class TargetMatrix:
    """Column-batched view of an ``(n, *target_shape)`` array-like as ``(n, T)``.

    Parameters
    ----------
    Y : array-like with ``.shape`` and numpy-style slicing (numpy array, memmap,
        h5py.Dataset, ...). 1-D ``(n,)`` means one target (``target_shape == ()``).
    name : str
        Argument name used in error messages.
    """

    def __init__(self, Y, name: str = "Y"):
        if not hasattr(Y, "shape") or not hasattr(Y, "__getitem__"):
            Y = np.asarray(Y)
        shape = tuple(int(s) for s in Y.shape)
        if len(shape) == 0:
            raise ValueError(f"{name} must have at least one dimension (n, ...), got a scalar")
        self.Y = Y
        self.name = name
        self.n = shape[0]
        self.target_shape = shape[1:]
        self.T = int(math.prod(self.target_shape)) if self.target_shape else 1
        # columns per index of axis 1 (1 for 2-D targets)
        self.inner = int(math.prod(self.target_shape[1:])) if len(self.target_shape) > 1 else 1
        if self.T == 0:
            raise ValueError(f"{name} has no targets: shape {shape}")
        dt = getattr(Y, "dtype", None)
        if dt is not None and not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
            raise ValueError(f"{name} must be numeric, got dtype {dt}")

    def batches(self, target_batch: int):
        """Column ranges ``(a, b)``, see :func:`column_batches`."""
        return column_batches(self.T, self.inner, target_batch)

    def read(self, a: int, b: int) -> np.ndarray:
        """Columns ``a:b`` of the flattened targets as an ``(n, b - a)`` numpy array."""
        Y = self.Y
        if not self.target_shape:
            return np.asarray(Y[:]).reshape(self.n, 1)
        if len(self.target_shape) == 1:
            return np.asarray(Y[:, a:b])
        i0 = a // self.inner
        i1 = -(-b // self.inner)
        blk = np.asarray(Y[:, i0:i1]).reshape(self.n, -1)
        off = i0 * self.inner
        return blk[:, a - off:b - off]

    def axis1_range(self, a: int, b: int) -> tuple[int, int]:
        """Axis-1 index range covered by aligned columns ``a:b`` (for writing slabs)."""
        if a % self.inner or (b % self.inner and b != self.T):
            raise ValueError(f"columns {a}:{b} are not aligned to whole rows of {self.inner}")
        return a // self.inner, -(-b // self.inner)


def target_stats(Y, target_batch: int = 4096, name: str = "Y"):
    """Per-target mean and standard deviation (ddof=0) of ``Y``, read in batches.

    Returns two float64 arrays shaped like ``Y.shape[1:]``. Raises ``ValueError`` naming
    ``name`` and the first offending column when ``Y`` holds NaN or inf.
    """
    tm = TargetMatrix(Y, name)
    mean = np.empty(tm.T)
    std = np.empty(tm.T)
    for a, b in tm.batches(target_batch):
        blk = tm.read(a, b).astype(np.float64, copy=False)
        bad = ~np.isfinite(blk)
        if bad.any():
            col = a + int(np.flatnonzero(bad.any(0))[0])
            raise ValueError(f"{name} contains NaN or inf (flattened target column {col})")
        mu = blk.mean(0)
        mean[a:b] = mu
        std[a:b] = np.sqrt(((blk - mu) ** 2).mean(0))
    return mean.reshape(tm.target_shape), std.reshape(tm.target_shape)
