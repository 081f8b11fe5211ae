"""The features stage's one writer: per subject and space, ``results/features/{space}/subjXX.h5``.

File layout (docs/DATA_PRODUCTS.md, "features"):

- ``{split}/features`` (n, D) float32, chunked in row bands (:func:`chunk_shape`); ``{split}/nsd_ids`` (n,) int64 in ascending
  order (= the stimulus index's rows of that split); split in (train, test);
- attrs: ``space``, ``feature_shape`` (prod = D), ``role``, ``model_source``, ``settings`` (JSON of the
  space's settings) and each setting as its own attr, ``description``.

Images are read lazily from the imgBrick, one batch of rows at a time (never the whole brick); captions
from the stimulus captions table. Everything is validated before the model is loaded, and the file is
written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..io import atomic_path
from ..models.plan import Runtime
from .plan import FeatureSpace, get_space

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STIMULI_COLUMNS = ("nsdId", "brick_row", "split")
CAPTION_COLUMNS = ("nsdId", "caption_idx", "caption")
#: HDF5 chunks of the feature matrices (default): bands of CHUNK_ROWS rows x as many columns as fit in
#: CHUNK_BYTES (64 x 4096 float32 = 1 MiB, the size of HDF5's default chunk cache). Readers take row blocks
#: (PCA, row subsets) or column slabs over all rows (the ridge streams target columns); both touch only the
#: chunks they need. The writer fills whole row bands, so no chunk is written twice.
CHUNK_ROWS = 64
CHUNK_BYTES = 2**20


def read_stimulus_index(path) -> dict[str, pd.DataFrame]:
    """``results/prepared/stimuli/subjXX.csv`` -> {split: rows (nsdId, brick_row) sorted by nsdId}.

    Raises ``ValueError`` naming the file for a missing column, an unknown split value, duplicate
    nsdIds, negative rows or an empty split.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stimulus index {path} does not exist")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from e
    missing = [c for c in STIMULI_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: stimulus index has no column(s) {missing} (columns: {list(df.columns)})")
    bad = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: column 'split' has value(s) {bad}; expected {list(SPLITS)}")
    for c in ("nsdId", "brick_row"):
        if not pd.api.types.is_integer_dtype(df[c]):
            raise ValueError(f"{path}: column {c!r} must hold integers, got {df[c].dtype}")
        if (df[c] < 0).any():
            raise ValueError(f"{path}: column {c!r} has negative values")
    dup = df["nsdId"][df["nsdId"].duplicated()].unique()
    if dup.size:
        raise ValueError(f"{path}: nsdId(s) {dup[:10].tolist()} appear more than once")
    out = {}
    for split in SPLITS:
        rows = df[df["split"] == split].sort_values("nsdId")
        if rows.empty:
            raise ValueError(f"{path}: no {split!r} rows")
        out[split] = rows[["nsdId", "brick_row"]].astype(np.int64).reset_index(drop=True)
    return out


def read_captions(path, nsd_ids) -> dict[int, list[str]]:
    """``subjXX_captions.csv`` -> {nsdId: captions in caption_idx order} for every id of ``nsd_ids``.

    Captions are read as text verbatim (a caption "NA" or "null" stays a string). Raises ``ValueError``
    naming the file and the nsdIds that have no caption.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions table {path} does not exist")
    try:
        df = pd.read_csv(path, dtype={"caption": str}, keep_default_na=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from e
    missing = [c for c in CAPTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: captions table has no column(s) {missing} (columns: {list(df.columns)})")
    for c in ("nsdId", "caption_idx"):
        if not pd.api.types.is_integer_dtype(df[c]):
            raise ValueError(f"{path}: column {c!r} must hold integers, got {df[c].dtype}")
    df = df.sort_values(["nsdId", "caption_idx"], kind="stable")
    groups = {int(k): list(g["caption"]) for k, g in df.groupby("nsdId", sort=False)}
    lacking = [int(i) for i in nsd_ids if not groups.get(int(i))]
    if lacking:
        raise ValueError(f"{path}: no caption for {len(lacking)} image(s), nsdId(s) {lacking[:10]}")
    return {int(i): groups[int(i)] for i in nsd_ids}


def chunk_shape(n: int, d: int, itemsize: int = 4) -> tuple[int, int]:
    """Default HDF5 chunk of an (n, d) feature matrix: (rows, columns), see :data:`CHUNK_ROWS`."""
    rows = int(max(1, min(n, CHUNK_ROWS)))
    cols = int(max(1, min(d, CHUNK_BYTES // (rows * itemsize))))
    return rows, cols


class _BandWriter:
    """Writes the rows of an (n, d) dataset in whole bands of its chunk rows (one band buffered in memory)."""

    def __init__(self, ds):
        self.ds, self.band = ds, ds.chunks[0]
        self.buf = np.empty((self.band, ds.shape[1]), dtype=ds.dtype)
        self.start, self.fill = 0, 0

    def add(self, rows: np.ndarray) -> None:
        i = 0
        while i < len(rows):
            k = min(len(rows) - i, self.band - self.fill)
            self.buf[self.fill:self.fill + k] = rows[i:i + k]
            self.fill += k
            i += k
            if self.fill == self.band:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            self.ds[self.start:self.start + self.fill] = self.buf[:self.fill]
            self.start += self.fill
            self.fill = 0


@contextlib.contextmanager
def _deterministic_cuda():
    """cuDNN in deterministic mode (same numbers on every run) for the block; restored after."""
    import torch

    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def _attr(value):
    """HDF5-storable form of a setting (None -> "None", other objects -> str)."""
    if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        return np.asarray(value)
    return str(value)


def _extractors() -> dict:
    """Setup function of every extractor kind (:attr:`FeatureSpace.kind`), imported now (torch)."""
    from . import diffusion_spaces as ds
    from . import extractors as ex

    return {"vdvae": ex.setup_vdvae, "clipvision": ex.setup_clipvision, "cliptext": ex.setup_cliptext,
            "sdz": ex.setup_sdz, "sdc": ex.setup_sdc, "blip": ex.setup_blip, "dpt": ex.setup_dpt,
            "zc": ds.setup_zc, "unet": ds.setup_unet}


def check_options(spec: FeatureSpace, options: Mapping) -> dict:
    """The space's config settings: exactly its ``config_keys`` (unknown or missing names are an error)."""
    given = dict(options or {})
    unknown = sorted(set(given) - set(spec.config_keys))
    if unknown:
        raise TypeError(f"feature space {spec.name!r} takes no option(s) {unknown}; its options: "
                        f"{sorted(spec.config_keys)}")
    missing = [k for k in spec.config_keys if k not in given]
    if missing:
        raise TypeError(f"feature space {spec.name!r} needs the setting(s) {missing} "
                        f"(config section {spec.section!r}; brainrecon.features.plan.space_options)")
    return given


def extract_features(space: str, out_h5, inputs: Mapping, options: Mapping, runtime: Runtime, *,
                     model_source: str | None = None, progress: bool = True) -> Path:
    """Extract the features of every image in the stimulus index and write ``out_h5``.

    space: a feature space (:func:`brainrecon.features.plan.get_space`).
    inputs: the files :func:`brainrecon.features.plan.inputs` names: ``stimuli``
        (``results/prepared/stimuli/subjXX.csv``: nsdId, brick_row, split), ``model`` (the folder of the
        space's role, loaded with :func:`brainrecon.models.load_model`), ``brick`` (image spaces) or
        ``captions`` (caption spaces), ``c`` (the sdc features, spaces that read c).
    options: the space's config settings (:func:`brainrecon.features.plan.space_options`).
    runtime: device, dtype (``models.dtype``; CPU computes in float32, a space may force its dtype)
        and batch size (images per model call; results do not depend on it).
    model_source: recorded in attrs (default: what the loader infers from the folder).
    Returns ``out_h5`` as a Path. Nothing is written under ``out_h5`` unless the whole file is complete.
    """
    import h5py
    import torch
    from tqdm.auto import tqdm

    from ..models import load_model, resolve_device, resolve_dtype
    from ..nsd.readers import ImageBrick

    spec = get_space(space)
    opts = {**spec.fixed, **check_options(spec, options)}
    stimuli_csv, captions_csv = inputs.get("stimuli"), inputs.get("captions")
    brick_path, model_folder = inputs.get("brick"), inputs.get("model")
    if spec.reads_c:
        if inputs.get("c") is None:
            raise ValueError(f"feature space {space!r} reads c: give inputs['c'] (the subject's sdc features file)")
        opts["c_features"] = str(inputs["c"])
    batch_size, device, dtype = runtime.batch_size, runtime.device, runtime.dtype
    out_h5 = Path(out_h5)

    # ---- inputs first: nothing is loaded or written before they are known to be good
    index = read_stimulus_index(stimuli_csv)
    captions = None
    if spec.inputs == "captions":
        if captions_csv is None:
            raise ValueError(f"feature space {space!r} reads captions: give inputs['captions']")
        all_ids = np.concatenate([index[s]["nsdId"].to_numpy() for s in SPLITS])
        captions = read_captions(captions_csv, all_ids)
    else:
        if brick_path is None:
            raise ValueError(f"feature space {space!r} reads images: give inputs['brick']")
        if not Path(brick_path).is_file():
            raise FileNotFoundError(f"image brick {brick_path} does not exist")
    if model_folder is None:
        raise ValueError(f"feature space {space!r} needs the folder of model role {spec.role!r}: give inputs['model']")

    dev = resolve_device(device)
    dt = torch.float32 if spec.dtype == "float32" else resolve_dtype(spec.dtype or dtype, dev)
    parts = load_model(spec.role, model_folder, device=dev, dtype=dt, components=spec.components)
    extractor = _extractors()[spec.kind](parts, **opts)
    settings = dict(getattr(extractor, "settings", {}))
    source = model_source or parts.source
    n_total = sum(len(index[s]) for s in SPLITS)
    log.info("%s features of %d images (%s) with role %s from %s on %s/%s, batch %d",
             space, n_total, ", ".join(f"{s} {len(index[s])}" for s in SPLITS), spec.role, model_folder,
             dev, dt, batch_size)

    with contextlib.ExitStack() as stack:
        brick = stack.enter_context(ImageBrick(brick_path)) if spec.inputs == "images" else None
        stack.enter_context(_deterministic_cuda())
        stack.enter_context(torch.inference_mode())
        tmp = stack.enter_context(atomic_path(out_h5))
        f = stack.enter_context(h5py.File(tmp, "w"))
        bar = stack.enter_context(tqdm(total=n_total, desc=f"{space} features", unit="img", disable=not progress))
        feature_shape = None
        for split in SPLITS:
            rows = index[split]
            ids, brick_rows = rows["nsdId"].to_numpy(), rows["brick_row"].to_numpy()
            g = f.create_group(split)
            g.create_dataset("nsd_ids", data=ids.astype(np.int64))
            ds = None
            for start in range(0, len(ids), batch_size):
                b_ids = ids[start:start + batch_size]
                images = brick.read(brick_rows[start:start + batch_size]) if brick is not None else None
                caps = [captions[int(i)] for i in b_ids] if captions is not None else None
                out = np.asarray(extractor(b_ids, images, caps))
                if out.ndim < 2 or out.shape[0] != len(b_ids):
                    raise RuntimeError(f"space {space!r}: extractor returned shape {out.shape} "
                                       f"for a batch of {len(b_ids)} images")
                if feature_shape is None:
                    feature_shape = tuple(int(d) for d in out.shape[1:])
                elif tuple(out.shape[1:]) != feature_shape:
                    raise RuntimeError(f"space {space!r}: feature shape changed from {feature_shape} "
                                       f"to {tuple(out.shape[1:])} (nsdIds {b_ids.tolist()})")
                if not np.all(np.isfinite(out)):
                    bad = b_ids[~np.isfinite(out.reshape(len(b_ids), -1)).all(axis=1)]
                    raise FloatingPointError(f"space {space!r}: non-finite features for nsdId(s) {bad.tolist()} "
                                             f"(model {model_folder}, dtype {dt})")
                if ds is None:
                    d = int(np.prod(feature_shape))
                    # an extractor may ask for float16 storage and its own (rows, columns) chunks (Takagi's
                    # dpt: 2.4M columns per row); default: float32, chunk_shape()
                    store = np.dtype(getattr(extractor, "storage_dtype", "float32"))
                    shape = getattr(extractor, "chunk_shape", None)
                    chunks = ((min(len(ids), int(shape[0])), min(d, int(shape[1]))) if shape else
                              chunk_shape(len(ids), d, store.itemsize))
                    ds = g.create_dataset("features", shape=(len(ids), d), dtype=store, chunks=chunks)
                    writer = _BandWriter(ds)
                block = out.reshape(len(b_ids), -1).astype(store)
                if not np.all(np.isfinite(block)):
                    raise FloatingPointError(f"space {space!r}: features overflow {store} storage "
                                             f"(nsdIds {b_ids.tolist()})")
                writer.add(block)
                bar.update(len(b_ids))
            writer.flush()
            if writer.start != len(ids):  # pragma: no cover - guards the band bookkeeping
                raise RuntimeError(f"space {space!r}: wrote {writer.start} of {len(ids)} {split} rows")
        f.attrs["space"] = space
        f.attrs["feature_shape"] = np.asarray(feature_shape, dtype=np.int64)
        f.attrs["role"] = spec.role
        f.attrs["model_source"] = str(source)
        f.attrs["description"] = spec.description
        f.attrs["dtype"] = str(dt).replace("torch.", "")
        f.attrs["storage_dtype"] = str(np.dtype(getattr(extractor, "storage_dtype", "float32")))
        f.attrs["settings"] = json.dumps(settings, sort_keys=True, default=str)
        for k, v in settings.items():
            if k not in f.attrs:
                f.attrs[k] = _attr(v)
    log.info("wrote %s: feature_shape %s", out_h5, feature_shape)
    return out_h5


def read_features(path, split: str, reshape: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(features, nsd_ids)`` of one split; ``reshape=True`` gives ``(n, *feature_shape)``."""
    import h5py

    with h5py.File(path, "r") as f:
        if split not in f:
            raise KeyError(f"{path}: no split {split!r} (groups: {list(f.keys())})")
        x = f[f"{split}/features"][()]
        ids = f[f"{split}/nsd_ids"][()]
        if reshape:
            x = x.reshape((x.shape[0], *[int(d) for d in f.attrs["feature_shape"]]))
    return x, ids
