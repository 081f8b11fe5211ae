"""The one verified downloader: NSD files, model weights and evaluation nets all come through here.

Every download streams (stdlib ``urllib``; ``http(s)://`` and ``file://`` URLs) in chunks
to a temporary name in the destination folder, checks the byte count against
``Content-Length``, verifies the file by type (:func:`verify_file`) and only then renames
it into place. Network errors, HTTP 5xx/408/429, truncated bodies and files that fail
verification are retried with exponential back-off; HTTP 400/401/403/404/410 (and a
missing ``file://`` path) fail at once. After a final failure nothing is left at the
destination, temporary files included, and :class:`DownloadError` names the key (or
file), the URL and the reason.

Interrupted transfers are resumed with an HTTP ``Range`` request (guarded by
``If-Range`` with the ETag) when the server advertises ``Accept-Ranges: bytes``, so a
network hiccup near the end of the 39.6 GB stimulus file does not restart it; every
request, resumed or not, counts as one attempt.

Sizes: NSD betas are ~0.5 GB per session (gzip), ``nsd_stimuli.hdf5`` is 39.6 GB; files
are never held in memory (chunks of :data:`CHUNK_BYTES`).

What a file must contain beyond its type (the NSD files' datasets, variables and columns, COCO's
caption annotations) is an :class:`Expect` given by the caller (:mod:`brainrecon.nsd.download`
knows the NSD ones); :func:`verify_file` checks the type and those expectations.

Why one long module: resuming, retrying, verifying and the atomic rename are one state machine around one
temporary file; each piece needs the others' state.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .io import atomic_path, default_file_mode

log = logging.getLogger(__name__)

#: bytes read from the network / decompressed per step
CHUNK_BYTES = 1 << 20
#: HTTP status codes that no retry can fix
FINAL_HTTP_CODES = frozenset({400, 401, 403, 404, 410})
#: cap of one back-off sleep, seconds
MAX_BACKOFF_S = 300.0
USER_AGENT = "brainrecon-download/0.1 (+https://naturalscenesdataset.org)"


class DownloadError(RuntimeError):
    """A download or its verification failed.

    The message names the key (or file), the URL (when known) and the reason;
    the same are available as attributes ``key``, ``url``, ``reason``.
    """

    def __init__(self, key, url, reason: str):
        self.key = str(key)
        self.url = url
        self.reason = reason
        where = f"{self.key}" + (f" from {url}" if url else "")
        super().__init__(f"{where}: {reason}")


class _Final(Exception):
    """Internal: an attempt failed in a way that retrying cannot fix."""


class _Retryable(Exception):
    """Internal: an attempt failed; another attempt may succeed."""

    def __init__(self, reason: str, keep_partial: bool = True):
        super().__init__(reason)
        self.keep_partial = keep_partial


# --------------------------------------------------------------------------------------
# verification by file type
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """What a downloaded file must contain beyond being a readable file of its type.

    hdf5_datasets: 4-D datasets an ``.hdf5`` must hold; mat_variables: variables of a ``.mat``;
    table_columns: columns of a ``.csv`` / ``.tsv``; json_check: ``check(data, name)`` called on a
    loaded ``.json`` (raises :class:`DownloadError`).
    """

    hdf5_datasets: tuple[str, ...] = ()
    mat_variables: tuple[str, ...] = ()
    table_columns: tuple[str, ...] = ()
    json_check: Callable | None = None


NOTHING = Expect()


def _kind(name: str) -> str:
    """File type from the name: 'nii.gz', 'gz', 'hdf5', 'mat', 'csv', 'tsv', 'ctab', 'json',
    'zip', 'pkl' or '' (no structural check)."""
    n = name.lower()
    for ext in ("nii.gz", "gz", "hdf5", "h5", "mat", "csv", "tsv", "ctab", "json", "zip", "pkl"):
        if n.endswith("." + ext):
            return "hdf5" if ext == "h5" else ext
    return ""


def _gzip_stream_size(path: Path, name: str) -> int:
    """Decompress the whole gzip stream (every member, CRC and length checked); return the
    decompressed size in bytes."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while True:
                block = fh.read(CHUNK_BYTES)
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DownloadError(name, None, f"corrupt gzip ({type(exc).__name__}: {exc})") from None
    return total


def _verify_nifti(path: Path, name: str) -> None:
    decompressed = _gzip_stream_size(path, name)
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(str(path))
        shape = img.header.get_data_shape()
        itemsize = np.dtype(img.header.get_data_dtype()).itemsize
        offset = int(img.dataobj.offset)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise DownloadError(name, None, f"NIfTI fails to load ({type(exc).__name__}: {exc})") from None
    expected = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    if decompressed < expected:
        raise DownloadError(
            name,
            None,
            f"NIfTI data size does not match its header: shape {tuple(shape)} x {itemsize} B "
            f"at offset {offset} needs {expected} bytes, the stream has {decompressed}",
        )


def _verify_hdf5(path: Path, name: str, expect: Expect) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for dataset in expect.hdf5_datasets:
                if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                    raise DownloadError(name, None, f"HDF5 lacks the expected dataset {dataset!r} (has {sorted(f)})")
                ds = f[dataset]
                if ds.ndim != 4:
                    raise DownloadError(name, None, f"HDF5 dataset {dataset!r} has shape {ds.shape}, expected 4-D")
    except DownloadError:
        raise
    except Exception as exc:
        raise DownloadError(name, None, f"not HDF5 / HDF5 fails to open ({type(exc).__name__}: {exc})") from None


def _verify_mat(path: Path, name: str, expect: Expect) -> None:
    import scipy.io

    try:
        variables = scipy.io.whosmat(str(path))
        names = {v[0] for v in variables}
        scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DownloadError(name, None, f"MATLAB file fails to load ({type(exc).__name__}: {exc})") from None
    missing = [v for v in expect.mat_variables if v not in names]
    if missing:
        raise DownloadError(name, None, f"MATLAB file lacks variables {missing} (has {sorted(names)})")


def _verify_table(path: Path, name: str, sep: str, expect: Expect) -> None:
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=sep)
    except Exception as exc:
        raise DownloadError(name, None, f"table fails to parse ({type(exc).__name__}: {exc})") from None
    cols = {str(c).strip() for c in df.columns}
    missing = [c for c in expect.table_columns if c not in cols]
    if missing:
        raise DownloadError(name, None, f"table lacks columns {missing} (has {sorted(cols)})")
    if len(df) == 0:
        raise DownloadError(name, None, "table has no rows")


def _verify_ctab(path: Path, name: str) -> None:
    n = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                parts = s.split()
                if len(parts) < 2:
                    raise DownloadError(name, None, f"ctab line {lineno} is not '<int> <name>': {s!r}")
                try:
                    int(parts[0])
                except ValueError:
                    raise DownloadError(name, None, f"ctab line {lineno} is not '<int> <name>': {s!r}") from None
                n += 1
    except UnicodeDecodeError as exc:
        raise DownloadError(name, None, f"ctab is not text ({exc})") from None
    if n == 0:
        raise DownloadError(name, None, "ctab has no label lines")


def _verify_json(path: Path, name: str, expect: Expect) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DownloadError(name, None, f"JSON fails to load ({exc})") from None
    if expect.json_check is not None:
        expect.json_check(data, name)


def _verify_zip(path: Path, name: str) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DownloadError(name, None, f"corrupt zip ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise DownloadError(name, None, f"corrupt zip: member {bad!r} fails its CRC check")


def _verify_pickle(path: Path, name: str) -> None:
    # never unpickle a downloaded file (it can run code): check the protocol marker only
    with open(path, "rb") as fh:
        head = fh.read(2)
    if len(head) < 2 or head[0] != 0x80 or head[1] > 5:
        raise DownloadError(name, None, "not a pickle (no protocol 2-5 header)")


def verify_file(path, key_or_name, expect: Expect = NOTHING) -> None:
    """Check that ``path`` is a complete, readable file of the type its name says, holding what
    ``expect`` names.

    The type comes from ``key_or_name`` (so a temporary name does not matter):
    ``.gz`` whole gzip stream decompresses with CRC ok; ``.nii.gz`` also loads with
    nibabel and holds as many bytes as the header's shape × dtype need; ``.hdf5`` opens
    with h5py (and has ``expect.hdf5_datasets`` as 4-D datasets); ``.mat`` loads with scipy
    (``expect.mat_variables``); ``.csv``/``.tsv`` parse with pandas and have rows
    (``expect.table_columns``); ``.ctab`` lines parse as ``<int> <name> ...``; ``.json`` loads
    (``expect.json_check``); ``.zip`` passes ``testzip``; ``.pkl`` has a pickle header (never
    unpickled). Other names get no structural check. Raises :class:`DownloadError`.
    """
    path = Path(path)
    name = str(key_or_name)
    if not path.is_file():
        raise DownloadError(name, None, f"no file at {path}")
    kind = _kind(name)
    if kind and path.stat().st_size == 0:
        raise DownloadError(name, None, "file is empty")
    if kind == "nii.gz":
        _verify_nifti(path, name)
    elif kind == "gz":
        _gzip_stream_size(path, name)
    elif kind == "hdf5":
        _verify_hdf5(path, name, expect)
    elif kind == "mat":
        _verify_mat(path, name, expect)
    elif kind in ("csv", "tsv"):
        _verify_table(path, name, "," if kind == "csv" else "\t", expect)
    elif kind == "ctab":
        _verify_ctab(path, name)
    elif kind == "json":
        _verify_json(path, name, expect)
    elif kind == "zip":
        _verify_zip(path, name)
    elif kind == "pkl":
        _verify_pickle(path, name)


# --------------------------------------------------------------------------------------
# transfer
# --------------------------------------------------------------------------------------


def _progress(total, initial, desc, enabled):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        mininterval=1.0 if sys.stderr.isatty() else 10.0,
        dynamic_ncols=True,
    )


def _parse_content_range(value: str | None):
    """``bytes 100-199/1000`` -> (100, 1000); total None when ``*``."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


class _State:
    """What the previous attempts left: bytes in the temp file and how to resume them."""

    def __init__(self):
        self.have = 0
        self.total: int | None = None
        self.validator: str | None = None  # ETag or Last-Modified for If-Range
        self.ranges = False


def _attempt(url, tmp: Path, state: _State, *, key, timeout_s, progress) -> None:
    """One request: (resume or start) streaming into ``tmp``; raise _Final/_Retryable."""
    is_file = url.lower().startswith("file:")
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    resume = state.have > 0 and state.ranges and state.total is not None and not is_file
    if resume:
        headers["Range"] = f"bytes={state.have}-"
        if state.validator:
            headers["If-Range"] = state.validator
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        if code in FINAL_HTTP_CODES:
            raise _Final(f"HTTP {code} {exc.reason}") from None
        if code == 416 and resume:  # our range is off: start over
            raise _Retryable(f"HTTP 416 for range bytes={state.have}-", keep_partial=False) from None
        raise _Retryable(f"HTTP {code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if is_file and isinstance(reason, OSError):
            raise _Final(f"cannot read local file ({reason})") from None
        raise _Retryable(f"network error ({reason})") from None
    except (OSError, http.client.HTTPException, socket.timeout) as exc:
        raise _Retryable(f"network error ({type(exc).__name__}: {exc})") from None

    with contextlib.closing(resp):
        status = getattr(resp, "status", None) or 200
        length_header = resp.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.strip().isdigit() else None
        if status == 206 and resume:
            cr = _parse_content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != state.have or (cr[1] is not None and cr[1] != state.total):
                raise _Retryable(
                    f"server answered the range request with Content-Range "
                    f"{resp.headers.get('Content-Range')!r} (expected start {state.have}, total {state.total})",
                    keep_partial=False,
                )
            mode, start = "ab", state.have
            expected_total = state.total
            log.info("%s: resuming at byte %d of %d", key, start, expected_total)
        elif 200 <= status < 300 and status != 206:
            mode, start = "wb", 0
            expected_total = length
            state.ranges = (resp.headers.get("Accept-Ranges", "").lower() == "bytes") and not is_file
            etag = resp.headers.get("ETag")
            strong_etag = etag if etag and not etag.startswith("W/") else None
            state.validator = strong_etag or resp.headers.get("Last-Modified")
        else:
            raise _Retryable(f"unexpected HTTP status {status}")
        state.total = expected_total
        state.have = start
        if expected_total is not None:
            free = shutil.disk_usage(tmp.parent).free
            if mode == "wb" and tmp.exists():
                free += tmp.stat().st_size  # the partial file is overwritten
            need = expected_total - start
            if need > free:
                raise _Final(
                    f"not enough disk space in {tmp.parent}: need {need} bytes, {free} free"
                )
        with open(tmp, mode) as out, _progress(expected_total, start, key, progress) as bar:
            if mode == "ab":
                out.truncate(start)
            try:
                while True:
                    block = resp.read(CHUNK_BYTES)
                    if not block:
                        break
                    out.write(block)
                    state.have += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException, socket.timeout) as exc:
                raise _Retryable(
                    f"connection broke after {state.have} of {expected_total} bytes "
                    f"({type(exc).__name__}: {exc})"
                ) from None
    if expected_total is not None and state.have != expected_total:
        if state.have < expected_total:
            raise _Retryable(f"truncated: got {state.have} of {expected_total} bytes")
        raise _Retryable(f"got {state.have} bytes, more than the announced {expected_total}", keep_partial=False)


def download_file(
    url: str,
    dest,
    *,
    key: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    verify: bool | Callable = True,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (always; an existing ``dest`` is replaced), verified.

    ``retries``: further attempts after the first (so ``retries + 1`` requests at most);
    the n-th retry waits ``backoff_s * 2**(n-1)`` seconds (capped at 300 s).
    ``timeout_s``: socket timeout of one connect/read. ``key`` names the file in messages
    and selects the type check of :func:`verify_file` (default: ``dest``'s name).
    ``verify``: ``True`` (:func:`verify_file` by type), ``False``, or ``verify(path, key)`` (e.g.
    :func:`brainrecon.nsd.download.verify_file`, which adds the NSD files' expected contents).
    Returns ``dest`` as a Path; raises :class:`DownloadError` (key, URL, reason) after a
    final failure, leaving neither ``dest`` nor a temporary file behind.
    """
    dest = Path(dest)
    key = str(key) if key is not None else dest.name
    retries = int(retries)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    attempts = retries + 1
    state = _State()
    last_reason = "no attempt made"
    t0 = time.monotonic()
    try:
        with atomic_path(dest) as tmp:
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    wait = min(float(backoff_s) * 2 ** (attempt - 2), MAX_BACKOFF_S)
                    log.warning(
                        "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                        key, attempt - 1, attempts, last_reason, wait,
                    )
                    if wait > 0:
                        time.sleep(wait)
                try:
                    log.info("%s: downloading %s -> %s (attempt %d/%d)", key, url, dest, attempt, attempts)
                    _attempt(url, tmp, state, key=key, timeout_s=timeout_s, progress=progress)
                    if callable(verify):
                        verify(tmp, key)
                    elif verify:
                        verify_file(tmp, key)
                except _Final as exc:
                    raise DownloadError(key, url, str(exc)) from None
                except _Retryable as exc:
                    last_reason = str(exc)
                    if not exc.keep_partial:
                        state.have = 0
                    continue
                except DownloadError as exc:  # verification failed: start from scratch
                    last_reason = f"verification failed: {exc.reason}"
                    state.have = 0
                    continue
                os.chmod(tmp, default_file_mode())
                log.info(
                    "%s: %d bytes downloaded%s in %.1f s",
                    key, tmp.stat().st_size, " and verified" if verify else "", time.monotonic() - t0,
                )
                break
            else:
                raise DownloadError(
                    key, url, f"{last_reason} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})"
                )
    except DownloadError as exc:
        log.error("%s", exc)
        raise
    return dest


__all__ = ["DownloadError", "Expect", "NOTHING", "CHUNK_BYTES", "download_file", "verify_file"]
