"""Verified NSD / COCO downloads against a local HTTP server (no internet needed).

A small HTTP server on 127.0.0.1 (random free port, its own thread, stopped at the end of
the module) serves a tree of NSD-layout files. Faults are injected per path: truncated
bodies (full Content-Length, connection closed half-way), HTTP 500, missing files (404).
The last tests run the Snakemake download rules for real against the same server.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import threading
import urllib.parse
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
import yaml

from brainrecon.nsd import layout
from brainrecon.fetch import DownloadError, download_file
from brainrecon.nsd.download import download_coco_captions, download_nsd_key, verify_file
from conftest import run_snakemake

SUBJ = 1
SES = 1
COCO_ZIP = "coco/annotations_trainval2017.zip"
NO_PROXY = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


# --------------------------------------------------------------------------------------
# a small but valid NSD-layout tree (written here; the Snakemake test serves the synthetic NSD)
# --------------------------------------------------------------------------------------


def _nifti_gz_bytes(data: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0]))
    return gzip.compress(img.to_bytes(), mtime=0)


def _write(root: Path, key: str, payload: bytes) -> None:
    p = root / key
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(payload)


def _mini_tree(root: Path) -> dict[str, bytes]:
    """Write one file of every type the pipeline downloads; return {key: bytes}."""
    rng = np.random.default_rng(0)
    shape = (6, 7, 5)
    out: dict[str, bytes] = {}

    buf = io.BytesIO()
    scipy.io.savemat(
        buf,
        {
            "masterordering": rng.integers(1, 11, size=(1, 30)),
            "subjectim": rng.integers(1, 41, size=(8, 10)),
            "sharedix": np.arange(1, 4)[None, :],
        },
    )
    out[layout.expdesign_key()] = buf.getvalue()
    out[layout.stim_info_key("csv")] = pd.DataFrame(
        {"cocoId": [9, 25, 30], "cocoSplit": ["train2017"] * 3, "nsdId": [0, 1, 2]}
    ).to_csv().encode()
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f["imgBrick"] = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    out[layout.stimuli_key()] = bio.getvalue()
    betas = rng.integers(-300, 300, size=shape + (9,)).astype(np.int16)
    out[layout.betas_key(SUBJ, SES, "nii.gz")] = _nifti_gz_bytes(betas)
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f["betas"] = betas.T
    out[layout.betas_key(SUBJ, SES, "hdf5")] = bio.getvalue()
    for name in ("nsdgeneral", "prf-visualrois"):
        labels = rng.integers(-1, len(layout.LABEL_TABLES[name]) + 1, size=shape).astype(np.int16)
        out[layout.roi_key(SUBJ, name)] = _nifti_gz_bytes(labels)
        ctab = "".join(f"{i} {n} 0 0 0 0\n" for i, n in layout.LABEL_TABLES[name].items())
        out[layout.ctab_key(SUBJ, name)] = ("0 Unknown 0 0 0 0\n" + ctab).encode()
    out[layout.responses_key(SUBJ)] = pd.DataFrame(
        {"SUBJECT": [1, 1], "SESSION": [1, 1], "RUN": [1, 1], "TRIAL": [1, 2], "73KID": [3, 1], "10KID": [1, 2]}
    ).to_csv(sep="\t", index=False).encode()
    out[layout.anatomy_key(SUBJ, "brainmask")] = _nifti_gz_bytes(np.ones(shape, np.float32))
    for k, b in out.items():
        _write(root / "nsd", k, b)
    return out


def _captions_json(image_ids, split) -> bytes:
    anns = [{"id": 100 * i + j, "image_id": i, "caption": f"a {split} picture {i} #{j}"} for i in image_ids for j in range(5)]
    return json.dumps({"info": {}, "images": [{"id": i} for i in image_ids], "annotations": anns}).encode()


def _coco_zip(captions: dict[str, bytes]) -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in captions.items():
            zf.writestr(member, data)
        zf.writestr("annotations/instances_val2017.json", b'{"not": "wanted"}')
    return bio.getvalue()


# --------------------------------------------------------------------------------------
# the local server
# --------------------------------------------------------------------------------------


class _Server:
    """Serves ``root``; ``faults[path] = [kind, ...]`` is consumed one per request
    ("truncate", "500"); ``always[path] = kind`` applies to every request; ``ranges``
    turns on byte-range support. ``requests`` logs (path, Range header, status)."""

    def __init__(self, root: Path):
        self.root = root
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.ranges = False
        self.requests: list[tuple[str, str | None, int]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 30  # a stuck client cannot hold a handler thread forever

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
                rng = self.headers.get("Range")
                with server.lock:
                    queued = server.faults.get(path)
                    fault = queued.pop(0) if queued else server.always.get(path)
                f = server.root / path
                if fault in ("500", "403"):
                    return self._status(path, rng, int(fault))
                if not f.is_file():
                    return self._status(path, rng, 404)
                body = f.read_bytes()
                etag = '"' + hashlib.md5(body).hexdigest() + '"'
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                partial = bool(server.ranges and m and self.headers.get("If-Range") in (None, etag))
                if partial:
                    start = int(m.group(1))
                    if start >= len(body):
                        return self._status(path, rng, 416)
                code = 206 if partial else 200
                with server.lock:
                    server.requests.append((path, rng, code))
                self.send_response(code)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", etag)
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                payload = body[start:]
                if fault == "truncate":  # announce everything, send half, hang up
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def _status(self, path, rng, code):
                with server.lock:
                    server.requests.append((path, rng, code))
                self.send_error(code)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        # bounded: whatever happens, the server stops after 10 minutes
        self.watchdog = threading.Timer(600, self.httpd.shutdown)
        self.watchdog.daemon = True

    def start(self):
        self.thread.start()
        self.watchdog.start()
        return self

    def stop(self):
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def reset(self):
        with self.lock:
            self.faults.clear()
            self.always.clear()
            self.ranges = False
            self.requests.clear()

    def count(self, path) -> int:
        with self.lock:
            return sum(1 for p, _, _ in self.requests if p == path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    files = _mini_tree(root)
    captions = {
        "annotations/captions_train2017.json": _captions_json([9, 25], "train"),
        "annotations/captions_val2017.json": _captions_json([30], "val"),
    }
    _write(root, COCO_ZIP, _coco_zip(captions))
    # corrupt variants, right length but broken inside
    good_gz = files[layout.roi_key(SUBJ, "nsdgeneral")]
    _write(root, "bad/garbage.nii.gz", np.random.default_rng(1).bytes(len(good_gz)))
    _write(root, "bad/cut_gzip.nii.gz", good_gz[: len(good_gz) // 2])
    _write(root, "bad/short_data.nii.gz", gzip.compress(gzip.decompress(good_gz)[:-40]))
    server = _Server(root).start()
    yield server, files, captions
    server.stop()


@pytest.fixture()
def srv(served, monkeypatch):
    for k, v in NO_PROXY.items():
        monkeypatch.setenv(k, v)
    server = served[0]
    server.reset()
    yield served
    server.reset()


def _tree(path: Path) -> list[str]:
    """Every file (hidden ones included) under ``path``."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


FAST = dict(backoff_s=0.0, timeout_s=10.0, progress=False)


# --------------------------------------------------------------------------------------
# (a) good tree
# --------------------------------------------------------------------------------------


def test_every_file_downloads_and_verifies(srv, tmp_path):
    server, files, _ = srv
    dest = tmp_path / "nsd"
    for key, payload in files.items():
        p = download_nsd_key(server.base + "/nsd/", key, dest, retries=0, **FAST)
        assert p == dest / key
        assert _sha(p.read_bytes()) == _sha(payload), key
        verify_file(p, key)
        assert server.count("nsd/" + key) == 1
    assert _tree(dest) == sorted(files)  # no temporary files left over
    umask = os.umask(0)
    os.umask(umask)
    assert (dest / layout.expdesign_key()).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_download_replaces_an_existing_destination(srv, tmp_path):
    server, files, _ = srv
    key = layout.responses_key(SUBJ)
    stale = tmp_path / key
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    download_nsd_key(server.base + "/nsd", key, tmp_path, retries=0, **FAST)
    assert stale.read_bytes() == files[key]


def test_file_url_mirror(srv, tmp_path):
    server, files, _ = srv
    key = layout.ctab_key(SUBJ, "prf-visualrois")
    mirror = (server.root / "nsd").as_uri()
    p = download_nsd_key(mirror, key, tmp_path / "m", retries=0, **FAST)
    assert p.read_bytes() == files[key]
    with pytest.raises(DownloadError) as ei:
        download_nsd_key(mirror, layout.ctab_key(2, "streams"), tmp_path / "m2", retries=3, **FAST)
    assert layout.ctab_key(2, "streams") in str(ei.value) and mirror in str(ei.value)
    assert _tree(tmp_path / "m2") == []


# --------------------------------------------------------------------------------------
# (b) truncation every time, (c) 404, (d) corrupt content
# --------------------------------------------------------------------------------------


def test_truncated_every_time_fails_after_retries(srv, tmp_path):
    server, files, _ = srv
    key = layout.betas_key(SUBJ, SES, "nii.gz")
    server.always["nsd/" + key] = "truncate"
    url = f"{server.base}/nsd/{key}"
    with pytest.raises(DownloadError) as ei:
        download_nsd_key(server.base + "/nsd/", key, tmp_path, retries=2, **FAST)
    msg = str(ei.value)
    assert key in msg and url in msg
    n = len(files[key])
    assert f"truncated: got {n // 2} of {n} bytes" in msg
    assert server.count("nsd/" + key) == 3  # 1 + 2 retries
    assert _tree(tmp_path) == []


def test_missing_file_fails_at_once(srv, tmp_path):
    server, _, _ = srv
    key = layout.roi_key(2, "streams")  # subject 2 is not served
    with pytest.raises(DownloadError) as ei:
        download_nsd_key(server.base + "/nsd/", key, tmp_path, retries=5, backoff_s=30.0, timeout_s=10, progress=False)
    msg = str(ei.value)
    assert key in msg and f"{server.base}/nsd/{key}" in msg and "HTTP 404" in msg
    assert server.count("nsd/" + key) == 1  # no retry (and no 30 s back-off)
    assert _tree(tmp_path) == []


def test_download_file_names_the_file_when_no_key_is_given(srv, tmp_path):
    server, _, _ = srv
    url = f"{server.base}/nowhere/table.csv"
    with pytest.raises(DownloadError) as ei:
        download_file(url, tmp_path / "sub" / "table.csv", retries=2, **FAST)
    assert str(ei.value).startswith(f"table.csv from {url}: HTTP 404")
    assert ei.value.key == "table.csv" and ei.value.url == url and ei.value.reason.startswith("HTTP 404")
    assert _tree(tmp_path) == []


def test_forbidden_is_final_too(srv, tmp_path):
    server, files, _ = srv
    key = layout.responses_key(SUBJ)
    server.always["nsd/" + key] = "403"
    with pytest.raises(DownloadError) as ei:
        download_nsd_key(server.base + "/nsd/", key, tmp_path, retries=4, **FAST)
    assert f"{key} from {server.base}/nsd/{key}: HTTP 403" in str(ei.value)
    assert server.count("nsd/" + key) == 1
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    "name, reason",
    [
        ("garbage.nii.gz", "corrupt gzip"),
        ("cut_gzip.nii.gz", "corrupt gzip"),
        ("short_data.nii.gz", "NIfTI data size does not match its header"),
    ],
)
def test_corrupt_nifti_fails_and_leaves_nothing(srv, tmp_path, name, reason):
    server, _, _ = srv
    key = f"bad/{name}"
    with pytest.raises(DownloadError) as ei:
        download_nsd_key(server.base, key, tmp_path, retries=1, **FAST)
    msg = str(ei.value)
    assert key in msg and f"{server.base}/{key}" in msg and reason in msg, msg
    assert "verification failed" in msg
    assert server.count(key) == 2  # a failed verification is retried
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------------------
# (e) transient failures recover through retries
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "truncate"])
def test_transient_failure_then_success(srv, tmp_path, fault):
    server, files, _ = srv
    key = layout.stimuli_key()
    server.faults["nsd/" + key] = [fault, fault]
    p = download_nsd_key(server.base + "/nsd/", key, tmp_path, retries=2, **FAST)
    assert p.read_bytes() == files[key]
    assert server.count("nsd/" + key) == 3
    with h5py.File(p) as f:
        assert f["imgBrick"].shape == (3, 8, 8, 3)
    assert _tree(tmp_path) == [key]


def test_truncated_transfer_resumes_with_range(srv, tmp_path):
    server, files, _ = srv
    key = layout.betas_key(SUBJ, SES, "hdf5")
    server.ranges = True
    server.faults["nsd/" + key] = ["truncate"]
    p = download_nsd_key(server.base + "/nsd/", key, tmp_path, retries=1, **FAST)
    assert p.read_bytes() == files[key]
    reqs = [(r, c) for path, r, c in server.requests if path == "nsd/" + key]
    n = len(files[key])
    assert reqs == [(None, 200), (f"bytes={n // 2}-", 206)]  # second request fetched only the rest


def test_retries_zero_means_one_attempt(srv, tmp_path):
    server, _, _ = srv
    key = layout.expdesign_key()
    server.faults["nsd/" + key] = ["500"]
    with pytest.raises(DownloadError, match="HTTP 500"):
        download_nsd_key(server.base + "/nsd/", key, tmp_path, retries=0, **FAST)
    assert server.count("nsd/" + key) == 1
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------------------
# (f) COCO captions
# --------------------------------------------------------------------------------------


def test_coco_captions_extract_only_caption_files(srv, tmp_path):
    server, _, captions = srv
    coco = tmp_path / "coco"
    paths = download_coco_captions(f"{server.base}/{COCO_ZIP}", coco, retries=0, **FAST)
    assert paths == [coco / m for m in layout.COCO_CAPTION_FILES]
    for m in layout.COCO_CAPTION_FILES:
        assert (coco / m).read_bytes() == captions[m]
    assert _tree(coco) == sorted(layout.COCO_CAPTION_FILES)  # no zip, no instances file, no temp


def test_coco_zip_without_captions_fails_cleanly(srv, tmp_path):
    server, _, captions = srv
    only_train = {"annotations/captions_train2017.json": captions["annotations/captions_train2017.json"]}
    _write(server.root, "coco/partial.zip", _coco_zip(only_train))
    url = f"{server.base}/coco/partial.zip"
    with pytest.raises(DownloadError) as ei:
        download_coco_captions(url, tmp_path / "coco", retries=0, **FAST)
    assert "captions_val2017.json" in str(ei.value) and url in str(ei.value)
    assert _tree(tmp_path / "coco") == []  # train captions written first are removed again


# --------------------------------------------------------------------------------------
# verify_file on bad files of every type
# --------------------------------------------------------------------------------------


def _bad_files(tmp: Path) -> list[tuple[Path, str, str]]:
    out = []

    def put(name, data):
        p = tmp / name.replace("/", "_")
        p.write_bytes(data)
        return p

    out.append((put("x.hdf5", b"\x89HDF garbage" * 10), layout.stimuli_key(), "not HDF5"))
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f["other"] = np.zeros((2, 2, 2, 2), np.uint8)
    out.append((put("y.hdf5", bio.getvalue()), layout.stimuli_key(), "imgBrick"))
    out.append((put("betas.hdf5", bio.getvalue()), layout.betas_key(1, 1, "hdf5"), "'betas'"))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"masterordering": np.ones((1, 3))})
    out.append((put("e.mat", buf.getvalue()), layout.expdesign_key(), "subjectim"))
    out.append((put("g.mat", b"MATLAB 5.0 junk" * 20), layout.expdesign_key(), "MATLAB file fails to load"))
    out.append((put("s.csv", b"a,b\n1,2\n"), layout.stim_info_key(), "cocoId"))
    out.append((put("r.tsv", b'"unterminated\tx\n1\t2\n'), layout.responses_key(1), "table"))
    out.append((put("c.ctab", b"0 Unknown\nV1 oops\n"), layout.ctab_key(1, "streams"), "line 2"))
    out.append((put("c2.ctab", b"\n# only a comment\n"), layout.ctab_key(1, "streams"), "no label lines"))
    out.append((put("j.json", b'{"annotations": [1,'), "annotations/captions_val2017.json", "JSON fails to load"))
    out.append((put("k.json", b'{"images": []}'), "annotations/captions_val2017.json", "annotations"))
    zbio = io.BytesIO()
    with zipfile.ZipFile(zbio, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.json", b"{}" * 1000)
    good = zbio.getvalue()
    i = good.index(b"{}{}")  # flip payload bytes: the member's CRC no longer matches
    out.append((put("z.zip", good[:i] + b"XX" + good[i + 2 :]), "a.zip", "corrupt zip"))
    out.append((put("p.pkl", b"not a pickle"), layout.stim_info_key("pkl"), "pickle"))
    out.append((put("empty.mat", b""), layout.expdesign_key(), "empty"))
    return out


def test_verify_file_rejects_bad_files(tmp_path):
    for path, key, reason in _bad_files(tmp_path):
        with pytest.raises(DownloadError) as ei:
            verify_file(path, key)
        assert key in str(ei.value) and reason in str(ei.value), (key, str(ei.value))


def test_verify_file_accepts_good_files(served, tmp_path):
    server, files, captions = served
    for key in files:
        verify_file(server.root / "nsd" / key, key)
    for m, data in captions.items():
        (tmp_path / "c.json").write_bytes(data)
        verify_file(tmp_path / "c.json", m)
    verify_file(server.root / COCO_ZIP, "annotations_trainval2017.zip")


# --------------------------------------------------------------------------------------
# (g) the Snakemake rules for real, serving the synthetic NSD
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_served(served, tmp_path_factory):
    """Write the synthetic NSD (1 subject, 2 sessions) into the served tree under synth/."""
    synth = pytest.importorskip("brainrecon.synth")
    if not hasattr(synth, "generate"):
        pytest.skip("brainrecon.synth.generate is not available yet")
    server = served[0]
    root = server.root / "synth" / "nsd"
    coco = tmp_path_factory.mktemp("synth_coco")
    synth.generate(
        root, coco, synth.SynthSettings.build(subjects=(1,), sessions=2, n_images=8, n_shared=2, n_reps=3,
                                              image_size=64, seed=0), progress=False,
    )
    zbytes = _coco_zip({m: (coco / m).read_bytes() for m in layout.COCO_CAPTION_FILES})
    _write(server.root, "synth/coco/annotations_trainval2017.zip", zbytes)
    return server, root, coco


def _snakemake_config(tmp: Path, server, retries: int, mirror: str = "synth") -> Path:
    # every nsd key is given: the Snakefile's own configfile (config/config.yaml, found next
    # to the Snakefile) is loaded first and only extended by this one
    cfg = {
        "nsd": {
            "source": "bucket",
            "root": "nsd",
            "base_url": f"{server.base}/{mirror}/nsd/",
            "coco_url": f"{server.base}/{mirror}/coco/annotations_trainval2017.zip",
            "coco_root": "coco",
            "subjects": [1],
            "sessions": 1,
            "betas_format": "nii.gz",
            "download": {"retries": retries, "backoff_s": 0.0, "timeout_s": 10.0},
        },
        "prepare": {"voxel_sets": ["nsdgeneral"]},
    }
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run(tmp: Path, cfg: Path, *targets, keep_going=False):
    # --workflow-profile none: the repo's default profile (found next to the Snakefile even
    # with --directory) must not change what this test checks
    args = ["--configfile", cfg, "--directory", tmp, "--cores", "1", "--workflow-profile", "none"]
    if keep_going:
        args.append("--keep-going")
    return run_snakemake(*args, *targets, env=NO_PROXY, timeout=300)


def test_snakemake_download_rules(synth_served, tmp_path):
    server, synth_root, coco = synth_served
    server.reset()
    keys = [
        layout.expdesign_key(),
        layout.stim_info_key("csv"),
        layout.betas_key(SUBJ, SES, "nii.gz"),
        layout.roi_key(SUBJ, "nsdgeneral"),
        layout.ctab_key(SUBJ, "prf-visualrois"),
        layout.responses_key(SUBJ),
    ]
    cfg = _snakemake_config(tmp_path, server, retries=1)
    server.faults["synth/nsd/" + layout.roi_key(SUBJ, "nsdgeneral")] = ["truncate"]  # recovers on retry
    targets = [f"nsd/{k}" for k in keys] + [f"coco/{m}" for m in layout.COCO_CAPTION_FILES]
    proc = _run(tmp_path, cfg, *targets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for k in keys:
        assert _sha((tmp_path / "nsd" / k).read_bytes()) == _sha((synth_root / k).read_bytes()), k
    for m in layout.COCO_CAPTION_FILES:
        assert (tmp_path / "coco" / m).read_bytes() == (coco / m).read_bytes()
    assert server.count("synth/nsd/" + layout.roi_key(SUBJ, "nsdgeneral")) == 2
    assert _tree(tmp_path / "nsd") == sorted(keys)
    assert _tree(tmp_path / "coco") == sorted(layout.COCO_CAPTION_FILES)
    log = (tmp_path / "logs" / "download" / (layout.roi_key(SUBJ, "nsdgeneral") + ".log")).read_text()
    assert "truncated" in log and "attempt 2/2" in log
    # another mirror / other retry settings do not make the downloaded files out of date
    cfg2 = _snakemake_config(tmp_path, server, retries=3, mirror="elsewhere")
    proc = run_snakemake(
        "-n", *targets, "--configfile", cfg2, "--directory", tmp_path, "--workflow-profile", "none",
        "--rerun-triggers", "mtime", "params", "input", "software-env", "code", env=NO_PROXY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_snakemake_download_failures(synth_served, tmp_path):
    server, _, _ = synth_served
    server.reset()
    cfg = _snakemake_config(tmp_path, server, retries=1)
    trunc_key = layout.expdesign_key()
    missing_key = layout.roi_key(2, "nsdgeneral")  # only subject 1 is served
    server.always["synth/nsd/" + trunc_key] = "truncate"
    server.always["synth/coco/annotations_trainval2017.zip"] = "500"
    proc = _run(
        tmp_path, cfg, f"nsd/{trunc_key}", f"nsd/{missing_key}", f"coco/{layout.COCO_CAPTION_FILES[0]}",
        keep_going=True,
    )
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    cases = [
        (trunc_key, f"{server.base}/synth/nsd/{trunc_key}", "truncated", 2),
        (missing_key, f"{server.base}/synth/nsd/{missing_key}", "HTTP 404", 1),
        ("annotations_trainval2017.zip", f"{server.base}/synth/coco/annotations_trainval2017.zip", "HTTP 500", 2),
    ]
    for key, url, reason, n_requests in cases:
        assert server.count(url.removeprefix(server.base + "/")) == n_requests, key
        line = f"{key} from {url}: {reason}"
        assert line in err, (line, err[-4000:])  # the script's traceback reaches snakemake's stderr
    assert line in (tmp_path / "logs" / "download" / "coco_captions.log").read_text()
    for key, url, reason, _ in cases[:2]:
        log = (tmp_path / "logs" / "download" / f"{key}.log").read_text()
        assert f"{key} from {url}: {reason}" in log
        assert not (tmp_path / "nsd" / key).exists()
    assert _tree(tmp_path / "nsd") == []
    assert _tree(tmp_path / "coco") == []
