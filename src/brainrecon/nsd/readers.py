"""Lazy, memory-careful readers for the raw NSD file formats.

Every reader raises :class:`NSDFileError` (a ``ValueError``) whose message starts with
the offending file's path when a file is missing, unreadable, corrupt or lacks a key, so
a failed Snakemake job points at the file to re-download.

Formats (see SPEC.md §1 and :mod:`brainrecon.nsd.layout`):

* ``nsd_expdesign.mat`` -> :func:`load_expdesign`
* ``nsd_stim_info_merged.csv`` -> :func:`read_stim_info`
* ``nsd_stimuli.hdf5`` (``imgBrick`` uint8 (73000, 425, 425, 3)) -> :class:`ImageBrick`
* ``<roi>.mgz.ctab`` label tables -> :func:`read_ctab`
* ROI / anatomy volumes (``.nii.gz``) -> :func:`load_roi`, :func:`volume_info`
* per-session betas, ``.nii.gz`` (X, Y, Z, T) int16 or ``.hdf5`` ``/betas`` (T, Z, Y, X)
  int16 -> :func:`iter_session_betas` / :func:`load_session_betas` (masked (T, V), one
  block of trials in memory at a time).

Why one long module: one reader per raw NSD format with one shared error convention (:class:`NSDFileError`),
kept together so every format's quirks are documented side by side.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

#: keys :func:`load_expdesign` requires
EXPDESIGN_KEYS = ("masterordering", "subjectim", "sharedix", "stimpattern")
#: columns :func:`read_stim_info` requires
STIM_INFO_COLUMNS = ("nsdId", "cocoId", "cocoSplit")
#: default number of raw bytes one betas block may occupy (trials are read in blocks)
DEFAULT_BLOCK_BYTES = 64 * 2**20


class NSDFileError(ValueError):
    """A raw NSD file is missing, unreadable, corrupt or inconsistent; the message names it."""


def _err(path, msg: str) -> NSDFileError:
    return NSDFileError(f"{path}: {msg}")


def _exists(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise _err(p, "file does not exist")
    return p


# --------------------------------------------------------------------------- expdesign


def load_expdesign(path) -> dict[str, np.ndarray]:
    """Read ``nsd_expdesign.mat`` (MATLAB v5) into int64 arrays.

    Returns a dict with
      ``masterordering`` (n_trials_total,) 10k-ids, 1-based (real NSD: 30000);
      ``subjectim`` (8, n_10k) 73k-ids, 1-based (real: (8, 10000));
      ``sharedix`` (n_shared,) 73k-ids, 1-based, of the shared images (real: 1000);
      ``stimpattern`` (n_sessions, n_runs, n_slots) 0/1, 1 = a stimulus trial
      (real: (40, 12, 75), 750 ones per session);
      and ``basiccnt`` when present.
    Raises :class:`NSDFileError` naming the file (and the key) if it cannot be read or a
    required key is missing / malformed.
    """
    import scipy.io

    p = _exists(path)
    try:
        mat = scipy.io.loadmat(str(p))
    except Exception as e:  # scipy raises several types for corrupt files
        raise _err(p, f"cannot read as a MATLAB .mat file ({type(e).__name__}: {e})") from e
    out: dict[str, np.ndarray] = {}
    for key in EXPDESIGN_KEYS + ("basiccnt",):
        if key not in mat:
            if key == "basiccnt":
                continue
            present = sorted(k for k in mat if not k.startswith("__"))
            raise _err(p, f"experiment design has no key {key!r} (keys present: {present})")
        a = np.asarray(mat[key])
        if a.dtype == bool:
            a = a.astype(np.int64)
        if not np.issubdtype(a.dtype, np.number):
            raise _err(p, f"key {key!r} is not numeric (dtype {a.dtype})")
        if a.size and np.issubdtype(a.dtype, np.floating):
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise _err(p, f"key {key!r} holds non-integer values")
        out[key] = a.astype(np.int64)
    out["masterordering"] = out["masterordering"].ravel()
    out["sharedix"] = out["sharedix"].ravel()
    if out["subjectim"].ndim != 2:
        raise _err(p, f"key 'subjectim' must be 2-D (8, n_images), got shape {out['subjectim'].shape}")
    sp = out["stimpattern"]
    if sp.ndim == 2:  # a single session stored as (runs, slots)
        sp = sp[None]
    if sp.ndim != 3:
        raise _err(p, f"key 'stimpattern' must be 3-D (sessions, runs, slots), got shape {sp.shape}")
    out["stimpattern"] = sp
    mo = out["masterordering"]
    if mo.size and (mo.min() < 1 or mo.max() > out["subjectim"].shape[1]):
        raise _err(
            p,
            f"key 'masterordering' has values in [{mo.min()}, {mo.max()}] but subjectim has "
            f"{out['subjectim'].shape[1]} columns (1-based ids expected)",
        )
    return out


# --------------------------------------------------------------------------- stim info


def read_stim_info(path, columns=None):
    """Read ``nsd_stim_info_merged.csv`` (first column is an unnamed index) as a DataFrame.

    One row per 73k image; ``nsdId`` is 0-based and equals the ``imgBrick`` row. Checks
    that ``nsdId``, ``cocoId`` and ``cocoSplit`` exist (plus ``columns`` if given).
    """
    import pandas as pd

    p = _exists(path)
    try:
        df = pd.read_csv(p, index_col=0)
    except Exception as e:
        raise _err(p, f"cannot read as CSV ({type(e).__name__}: {e})") from e
    need = list(STIM_INFO_COLUMNS) + list(columns or [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise _err(p, f"stimulus info has no column(s) {missing} (columns: {list(df.columns)})")
    if df["nsdId"].duplicated().any():
        raise _err(p, "column 'nsdId' has duplicate values")
    return df


# --------------------------------------------------------------------------- images


class ImageBrick:
    """Lazy reader of ``nsd_stimuli.hdf5``'s ``imgBrick`` (N, H, W, 3) uint8, row = nsdId.

    Use as a context manager::

        with ImageBrick(path) as brick:
            imgs = brick.read([5, 2, 5])   # (3, 425, 425, 3) uint8, in the order asked

    Only the requested rows are read (sorted, de-duplicated fancy reads, then put back in
    the requested order); the brick itself (39.6 GB for real NSD) is never loaded.
    """

    dataset = "imgBrick"

    def __init__(self, path):
        self.path = Path(path)
        self._file = None
        self._ds = None

    def open(self) -> "ImageBrick":
        import h5py

        p = _exists(self.path)
        try:
            self._file = h5py.File(p, "r")
        except Exception as e:
            raise _err(p, f"cannot open as HDF5 ({type(e).__name__}: {e})") from e
        if self.dataset not in self._file:
            keys = list(self._file.keys())
            self._file.close()
            self._file = None
            raise _err(p, f"HDF5 file has no dataset {self.dataset!r} (datasets: {keys})")
        self._ds = self._file[self.dataset]
        if self._ds.ndim != 4 or self._ds.shape[-1] != 3:
            shape = self._ds.shape
            self.close()
            raise _err(p, f"{self.dataset!r} must be (N, H, W, 3), got shape {shape}")
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._ds = None

    def __enter__(self) -> "ImageBrick":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _need_open(self):
        if self._ds is None:
            raise RuntimeError(f"{self.path}: ImageBrick is not open (use it as a context manager)")
        return self._ds

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._need_open().shape)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, nsd_ids) -> np.ndarray:
        """Images of ``nsd_ids`` (any order, repeats allowed) -> uint8 (n, H, W, 3)."""
        ds = self._need_open()
        ids = np.asarray(nsd_ids, dtype=np.int64).ravel()
        n = ds.shape[0]
        if ids.size == 0:
            return np.empty((0,) + ds.shape[1:], dtype=np.uint8)
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            raise _err(self.path, f"nsdIds {bad[:5].tolist()} out of range [0, {n})")
        uniq, inverse = np.unique(ids, return_inverse=True)
        try:
            data = ds[uniq.tolist()] if uniq.size > 1 else ds[int(uniq[0])][None]
        except Exception as e:
            raise _err(self.path, f"cannot read rows of {self.dataset!r} ({type(e).__name__}: {e})") from e
        return np.asarray(data, dtype=np.uint8)[inverse]

    def iter_batches(self, nsd_ids, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, images)`` batches of at most ``batch_size`` in the given order."""
        ids = np.asarray(nsd_ids, dtype=np.int64).ravel()
        for i in range(0, ids.size, batch_size):
            chunk = ids[i : i + batch_size]
            yield chunk, self.read(chunk)


# --------------------------------------------------------------------------- ROI / ctab


def read_ctab(path) -> dict[int, str]:
    """Parse a FreeSurfer-style ``.ctab`` label table -> ``{value: name}``.

    Tolerant: each line ``<int> <name> [anything...]``; blank lines, ``#`` comments and
    lines whose first token is not an integer are skipped; surrounding whitespace and
    Windows line ends are ignored. Raises :class:`NSDFileError` if no entry was parsed.
    """
    p = _exists(path)
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise _err(p, f"cannot read ({e})") from e
    table: dict[int, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        table[value] = parts[1]
    if not table:
        raise _err(p, "no '<int> <name>' entries found in label table")
    return table


def _load_nifti(path):
    import nibabel as nib

    p = _exists(path)
    try:
        return nib.load(str(p))
    except Exception as e:
        raise _err(p, f"cannot read as NIfTI ({type(e).__name__}: {e})") from e


def volume_info(path) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine (4, 4) float64)`` of a NIfTI file, from its header only.

    For 4-D betas the shape includes the trial axis; for ``.hdf5`` betas (``/betas``
    (T, Z, Y, X)) the shape is returned as (X, Y, Z, T) and the affine is NaN.
    """
    p = Path(path)
    if p.name.endswith((".h5", ".hdf5")):
        import h5py

        _exists(p)
        try:
            with h5py.File(p, "r") as f:
                shape = f["betas"].shape
        except Exception as e:
            raise _err(p, f"cannot read '/betas' from HDF5 ({type(e).__name__}: {e})") from e
        if len(shape) != 4:
            raise _err(p, f"'/betas' must be 4-D (T, Z, Y, X), got shape {shape}")
        return (shape[3], shape[2], shape[1], shape[0]), np.full((4, 4), np.nan)
    img = _load_nifti(p)
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def load_roi(path) -> np.ndarray:
    """Read an ROI / mask volume -> int32 (X, Y, Z) (NSD: -1 invalid, 0 outside, 1..N).

    Values are rounded (some files store labels as floats). Raises NSDFileError for an
    unreadable file, a non-3-D volume or non-finite values.
    """
    img = _load_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise _err(path, f"cannot read volume data ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _err(path, f"ROI volume must be 3-D, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise _err(path, "ROI volume has non-finite values")
        data = np.rint(data)
    return data.astype(np.int32)


# --------------------------------------------------------------------------- betas


def mask_to_ijk(mask) -> np.ndarray:
    """Boolean (X, Y, Z) mask -> voxel indices (V, 3) int64, sorted by (x, y, z)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (X, Y, Z), got shape {mask.shape}")
    return np.argwhere(mask).astype(np.int64)


def _flat_index(mask_or_ijk, vol_shape, path) -> np.ndarray:
    """Fortran-order flat indices (= x + X*(y + Y*z)) of the selected voxels."""
    a = np.asarray(mask_or_ijk)
    if a.dtype == bool:
        if a.shape != tuple(vol_shape):
            raise _err(path, f"volume shape {tuple(vol_shape)} does not match mask shape {a.shape}")
        ijk = mask_to_ijk(a)
    else:
        ijk = a.astype(np.int64)
        if ijk.ndim != 2 or ijk.shape[1] != 3:
            raise ValueError(f"voxel indices must be (V, 3), got shape {ijk.shape}")
        if ijk.size and (ijk.min() < 0 or np.any(ijk.max(0) >= np.asarray(vol_shape))):
            raise _err(path, f"voxel indices out of range for volume shape {tuple(vol_shape)}")
    return np.ravel_multi_index(tuple(ijk.T), tuple(vol_shape), order="F")


def betas_format(path) -> str:
    """``"hdf5"`` or ``"nifti"`` from the file name."""
    name = Path(path).name
    if name.endswith((".hdf5", ".h5")):
        return "hdf5"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    raise _err(path, "betas file must end in .nii.gz, .nii or .hdf5")


def betas_shape(path) -> tuple[int, int, int, int]:
    """``(X, Y, Z, T)`` of a session's betas file (header only)."""
    shape, _ = volume_info(path)
    if len(shape) != 4:
        raise _err(path, f"betas must be 4-D (X, Y, Z, T), got shape {shape}")
    return shape  # type: ignore[return-value]


def iter_session_betas(
    path, mask, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream one session's betas restricted to a voxel set, a block of trials at a time.

    ``mask`` is a boolean (X, Y, Z) volume or voxel indices (V, 3) (then columns follow
    its row order). Yields ``(t0, block)`` with ``block`` of shape (tb, V) in the file's
    stored dtype (NSD: int16 = percent signal change × 300) for trials ``t0 .. t0+tb-1``;
    if the NIfTI header sets a scale slope/intercept the block is float32 with it applied.
    At most ``block_bytes`` of raw volume data (plus the (tb, V) block) are in memory.

    ``.nii.gz``: the gzip stream is decompressed sequentially once (trials are the slowest
    axis, so a block of trials is one contiguous byte range). ``.hdf5``: ``/betas``
    (T, Z, Y, X) is read in slabs of trials. Corrupt or truncated files raise
    :class:`NSDFileError` naming the file.
    """
    fmt = betas_format(path)
    if fmt == "hdf5":
        yield from _iter_hdf5(Path(path), mask, block_bytes)
    else:
        yield from _iter_nifti(Path(path), mask, block_bytes)


def _iter_nifti(path: Path, mask, block_bytes: int):
    from nibabel.openers import ImageOpener

    img = _load_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 4:
        raise _err(path, f"betas must be 4-D (X, Y, Z, T), got shape {shape}")
    proxy = img.dataobj
    if getattr(proxy, "order", "F") != "F":
        raise _err(path, "unexpected C-ordered NIfTI data")
    dtype = np.dtype(proxy.dtype)
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    scaled = not (slope in (1.0,) and inter == 0.0)
    offset = int(proxy.offset)
    flat = _flat_index(mask, shape[:3], path)
    nvox = int(np.prod(shape[:3]))
    T = shape[3]
    tb = max(1, min(T, block_bytes // max(1, nvox * dtype.itemsize)))
    try:
        with ImageOpener(str(path), "rb") as fh:
            fh.seek(offset)
            for t0 in range(0, T, tb):
                n = min(tb, T - t0)
                want = n * nvox * dtype.itemsize
                buf = fh.read(want)
                if len(buf) != want:
                    raise _err(
                        path,
                        f"truncated: expected {T} volumes of {shape[:3]} but data ends in volume {t0 + len(buf) // (nvox * dtype.itemsize)}",
                    )
                block = np.frombuffer(buf, dtype=dtype).reshape(n, nvox)[:, flat]
                del buf
                if scaled:
                    block = block.astype(np.float32) * np.float32(slope) + np.float32(inter)
                elif not dtype.isnative:
                    block = block.astype(dtype.newbyteorder("="))
                yield t0, np.ascontiguousarray(block)
    except NSDFileError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise _err(path, f"corrupt or unreadable betas ({type(e).__name__}: {e})") from e


def _iter_hdf5(path: Path, mask, block_bytes: int):
    import h5py

    _exists(path)
    try:
        fh = h5py.File(path, "r")
    except Exception as e:
        raise _err(path, f"cannot open as HDF5 ({type(e).__name__}: {e})") from e
    with fh:
        if "betas" not in fh:
            raise _err(path, f"HDF5 betas file has no dataset 'betas' (datasets: {list(fh.keys())})")
        ds = fh["betas"]
        if ds.ndim != 4:
            raise _err(path, f"'/betas' must be 4-D (T, Z, Y, X), got shape {ds.shape}")
        T, Z, Y, X = ds.shape
        # C-order flat index of (z, y, x) equals the F-order flat index of (x, y, z)
        flat = _flat_index(mask, (X, Y, Z), path)
        nvox = X * Y * Z
        tb = max(1, min(T, block_bytes // max(1, nvox * ds.dtype.itemsize)))
        for t0 in range(0, T, tb):
            n = min(tb, T - t0)
            try:
                raw = ds[t0 : t0 + n]
            except Exception as e:
                raise _err(path, f"cannot read trials {t0}..{t0 + n - 1} of '/betas' ({type(e).__name__}: {e})") from e
            block = raw.reshape(n, nvox)[:, flat]
            del raw
            yield t0, np.ascontiguousarray(block)


def load_session_betas(path, mask, block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """One session's masked betas (T, V) in the stored dtype (see :func:`iter_session_betas`)."""
    shape = betas_shape(path)
    T = shape[3]
    out = None
    for t0, block in iter_session_betas(path, mask, block_bytes):
        if out is None:
            out = np.empty((T, block.shape[1]), dtype=block.dtype)
        out[t0 : t0 + block.shape[0]] = block
    assert out is not None
    return out
