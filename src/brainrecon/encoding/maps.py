"""Voxel vectors <-> 3-D volumes, and NIfTI maps of encoding statistics.

Prepared betas keep, for each of V voxels, its integer (i, j, k) index in the subject's
func1pt8mm volume (X, Y, Z). These helpers scatter a (V,) statistic (r, -log10 p, ...)
back into that volume and write it as a float32 NIfTI with the volume's affine.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainrecon.io import atomic_path

__all__ = ["to_volume", "save_map_nifti"]


def _check_ijk(ijk, shape, n_values: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"volume shape must be 3 positive ints (X, Y, Z), got {shape}")
    ijk = np.asarray(ijk)
    if ijk.ndim != 2 or ijk.shape[1] != 3:
        raise ValueError(f"ijk must be (V, 3) voxel indices, got shape {ijk.shape}")
    if ijk.shape[0] != n_values:
        raise ValueError(f"ijk has {ijk.shape[0]} rows but there are {n_values} values")
    if not np.issubdtype(ijk.dtype, np.integer):
        if not np.array_equal(ijk, np.round(ijk)):
            raise ValueError("ijk must hold integer voxel indices")
        ijk = ijk.astype(np.int64)
    if ijk.size and ((ijk < 0).any() or (ijk >= np.asarray(shape)).any()):
        bad = np.flatnonzero(((ijk < 0) | (ijk >= np.asarray(shape))).any(axis=1))[0]
        raise ValueError(f"voxel index {ijk[bad].tolist()} (row {bad}) lies outside the volume {shape}")
    flat = np.ravel_multi_index(tuple(ijk.T), shape)
    if np.unique(flat).size != flat.size:
        raise ValueError("ijk lists the same voxel more than once")
    return ijk, shape


def to_volume(values, ijk, shape, fill=0.0) -> np.ndarray:
    """Scatter voxel values into a 3-D volume.

    Parameters
    ----------
    values : array (V,)       one value per voxel (any numeric or bool dtype)
    ijk : int array (V, 3)    0-based (i, j, k) index of each voxel in the volume
    shape : (X, Y, Z)
    fill : value of voxels not listed in ``ijk``

    Returns
    -------
    volume : array (X, Y, Z), dtype of ``values`` promoted with ``fill``;
        ``volume[i, j, k] == values[v]`` for every row v of ``ijk``.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be (V,), got shape {values.shape}")
    ijk, shape = _check_ijk(ijk, shape, values.shape[0])
    vol = np.full(shape, fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
    vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = values
    return vol


def save_map_nifti(values, ijk, shape, affine, path, fill=0.0) -> Path:
    """Write a voxel statistic as a float32 NIfTI volume (atomically).

    Parameters
    ----------
    values : (V,), ijk : (V, 3), shape : (X, Y, Z)   as in :func:`to_volume`
    affine : (4, 4) voxel -> world (mm) matrix of the subject's func1pt8mm volume
    path : output ``.nii`` / ``.nii.gz``
    fill : value outside the listed voxels (0 by default; NaN is allowed)
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI output must end in .nii or .nii.gz: {path}")
    vol = to_volume(np.asarray(values, dtype=np.float32), ijk, shape, fill=np.float32(fill))
    img = nib.Nifti1Image(vol.astype(np.float32), affine)
    img.header.set_data_dtype(np.float32)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
