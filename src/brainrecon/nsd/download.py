"""NSD bucket files and the COCO 2017 caption annotations, through the one verified downloader.

:func:`download_nsd_key` fetches one bucket key (``https://natural-scenes-dataset.s3.amazonaws.com/<key>``
or a mirror) with :func:`brainrecon.fetch.download_file`; :func:`download_coco_captions` fetches
the COCO annotations zip and extracts the caption files. :func:`verify_file` checks a file by type
(:func:`brainrecon.fetch.verify_file`) and for what the NSD / COCO file of that name must contain
(:func:`expectations`): the stimulus brick's ``imgBrick`` and a betas file's ``betas`` as 4-D
datasets, the experiment design's variables, the stimulus table's and responses' columns, the COCO
caption files' ``annotations``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import zipfile
from pathlib import Path, PurePosixPath

from ..fetch import CHUNK_BYTES, DownloadError, Expect, download_file
from ..fetch import verify_file as verify_type
from ..io import atomic_path, default_file_mode
from . import layout

log = logging.getLogger(__name__)


def _coco_captions(data, name: str) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DownloadError(name, None, "COCO caption file lacks an 'annotations' list")
    for ann in data["annotations"][:10]:
        if not {"image_id", "caption"} <= set(ann):
            raise DownloadError(name, None, f"COCO caption annotation lacks image_id/caption: {ann!r}")


#: what the NSD / COCO files must contain, by basename pattern
_EXPECTATIONS = (
    (re.compile(r"nsd_stimuli\.hdf5$"), Expect(hdf5_datasets=("imgBrick",))),
    (re.compile(r"betas_session\d+\.hdf5$"), Expect(hdf5_datasets=("betas",))),
    (re.compile(r"nsd_expdesign\.mat$"), Expect(mat_variables=("masterordering", "subjectim", "sharedix"))),
    (re.compile(r"nsd_stim_info_merged\.csv$"), Expect(table_columns=("cocoId", "nsdId"))),
    (re.compile(r"responses\.tsv$"), Expect(table_columns=("SESSION", "73KID"))),
    (re.compile(r"captions_(train|val)\d{4}\.json$"), Expect(json_check=_coco_captions)),
)


def expectations(key) -> Expect:
    """What the NSD bucket key (or COCO member) ``key`` must contain (:class:`brainrecon.fetch.Expect`)."""
    base = PurePosixPath(str(key)).name
    for pattern, expect in _EXPECTATIONS:
        if pattern.search(base):
            return expect
    return Expect()


def verify_file(path, key) -> None:
    """:func:`brainrecon.fetch.verify_file` with the expected contents of NSD / COCO file ``key``."""
    verify_type(path, key, expectations(key))


def _check_key(key: str) -> str:
    k = str(key).strip()
    parts = PurePosixPath(k).parts
    if not k or k.startswith("/") or ".." in parts or "\\" in k:
        raise ValueError(f"invalid NSD key {key!r}: must be a relative bucket path without '..'")
    return k


def nsd_url(base_url: str, key: str) -> str:
    """URL of an NSD bucket key under ``base_url`` (the bucket or a mirror; http(s)/file)."""
    return base_url.rstrip("/") + "/" + urllib.parse.quote(_check_key(key), safe="/+-_.~")


def download_nsd_key(base_url: str, key: str, root, **kw) -> Path:
    """Download one NSD key from ``base_url`` to ``root/key`` (see :func:`download_file`)."""
    key = _check_key(key)
    return download_file(nsd_url(base_url, key), Path(root) / key, key=key, verify=verify_file, **kw)


def download_coco_captions(url: str, coco_root, members=layout.COCO_CAPTION_FILES, **kw) -> list[Path]:
    """Download the COCO 2017 annotations zip from ``url`` and extract only ``members``.

    ``members`` (default ``annotations/captions_train2017.json`` and
    ``annotations/captions_val2017.json``) land at ``coco_root/<member>``, each written
    atomically and checked as JSON with an ``annotations`` list. The zip (~250 MB) is kept
    in a temporary folder inside ``coco_root`` and removed afterwards. ``kw`` go to
    :func:`download_file`. Returns the extracted paths in ``members`` order.
    """
    coco_root = Path(coco_root)
    coco_root.mkdir(parents=True, exist_ok=True)
    zip_name = PurePosixPath(urllib.parse.urlparse(url).path).name or "annotations.zip"
    if not zip_name.lower().endswith(".zip"):
        zip_name += ".zip"
    written: list[Path] = []
    tmpdir = Path(tempfile.mkdtemp(prefix=".coco-download.", dir=coco_root))
    try:
        zpath = download_file(url, tmpdir / zip_name, key=zip_name, verify=verify_file, **kw)
        with zipfile.ZipFile(zpath) as zf:
            names = zf.namelist()
            for member in members:
                member = str(member)
                if member in names:
                    arc = member
                else:  # tolerate a different top folder in a mirror's zip
                    base = PurePosixPath(member).name
                    hits = [n for n in names if PurePosixPath(n).name == base]
                    if len(hits) != 1:
                        raise DownloadError(
                            member, url, f"the zip {zip_name} has no member {member!r} (has {len(names)} members)"
                        )
                    arc = hits[0]
                out = coco_root / member
                with atomic_path(out) as tmp:
                    with zf.open(arc) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK_BYTES)
                    try:
                        verify_file(tmp, member)
                    except DownloadError as exc:
                        raise DownloadError(member, url, f"extracted from {zip_name}: {exc.reason}") from None
                    os.chmod(tmp, default_file_mode())
                written.append(out)
                log.info("extracted %s -> %s", arc, out)
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return written


__all__ = ["expectations", "verify_file", "nsd_url", "download_nsd_key", "download_coco_captions"]
