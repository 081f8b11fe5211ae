"""The run template every reconstruction method follows, and the pieces its steps share.

A method (``reconstruct/<method>/``) is a pipeline that reads top to bottom like its paper; what is
the same for every method lives here:

1. **read predictions** — :func:`open_predictions`: the regression outputs a variant reads
   (``pred`` or ``pred_restd``, row-sliced lazily by :class:`Predictions`), checked to list the same
   test images in the same order; :func:`read_extra` for the ROI-optimal patterns;
2. **load components** — :func:`load_components` (the models registry; CPU always float32);
3. **batches with per-image generators** — :func:`run_batches`: chunks of images, each chunk's images
   and stage-1 images handed to a sink (every random draw of an image comes from its own seeded
   generator, :func:`derive_seed`, so a chunk's composition never changes an image);
4. **atomic write** — :func:`write_reconstruction`: ``images.h5`` + ``png/`` streamed chunk by chunk
   into temporary names and renamed into place only when the run finished (:mod:`brainrecon.io`).

Settings of a method are a frozen dataclass built by :func:`brainrecon.config.build_settings` from its
config section (the schema is the only home of their defaults and ranges).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..io import atomic_dir, atomic_path


# ----------------------------------------------------------------------------- seeds
def subject_code(subject) -> int:
    """Integer code of a subject label: "01" / 1 -> 1, "avg" -> 0."""
    s = str(subject)
    if s == "avg":
        return 0
    try:
        code = int(s)
    except ValueError:
        raise ValueError(f"subject must be a number (e.g. '01') or 'avg', got {subject!r}") from None
    if code < 1:
        raise ValueError(f"subject must be >= 1 or 'avg', got {subject!r}")
    return code


def derive_seed(*values: int) -> int:
    """A 63-bit seed from non-negative integers (numpy ``SeedSequence``; stable across versions)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def generators(seeds: Sequence[int], stream: int | None = None):
    """One CPU ``torch.Generator`` per seed (``derive_seed(seed, stream)`` when a stream is given)."""
    import torch

    return [torch.Generator().manual_seed(int(s) if stream is None else derive_seed(int(s), stream)) for s in seeds]


# ----------------------------------------------------------------------------- images
def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic (PIL) resize of uint8 images (n, h, w, 3) to (n, size, size, 3), as the reference."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"upsample expects uint8 images (n, h, w, 3), got {images.dtype} {images.shape}")
    if images.shape[1:3] == (size, size):
        return images.copy()
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), resample=Image.BICUBIC)) for a in images])


def to_uint8(images) -> np.ndarray:
    """(B, 3, H, W) float tensor in [0, 1] -> (B, H, W, 3) uint8 numpy (rounded, as ``diffusion.to_pil``)."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def png_name(key) -> str:
    """``<key>.png``; a key that is empty, has a '/' or starts with '.' is an error."""
    name = str(key)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cannot name a PNG after {key!r}")
    return f"{name}.png"


def finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    return x


# ----------------------------------------------------------------------------- 1. predictions
def rows_of(have: np.ndarray, want, where: str) -> np.ndarray:
    pos = {int(k): i for i, k in enumerate(have)}
    missing = [int(k) for k in want if int(k) not in pos]
    if missing:
        raise KeyError(f"{where}: no rows for nsdId(s) {missing[:10]}")
    return np.asarray([pos[int(k)] for k in want], dtype=np.int64)


class Predictions:
    """Row access to a regression output file: ``pred`` (or ``pred_restd``) in the order of ``nsd_ids``.

    key: ``"pred"`` (raw predictions) or ``"pred_restd"`` (Brain-Diffuser's re-standardised ones).
    Rows are read lazily (``obj[i0:i1]`` → float32 numpy, shape (rows, *feature shape); ``flat()``
    views them as (rows, D)), so large spaces (DPT: 9 GB at NSD scale) are never loaded whole.
    """

    def __init__(self, path, key: str = "pred", nsd_ids=None):
        import h5py

        self.path, self.key = str(path), key
        self.f = h5py.File(path, "r")
        for k in (key, "nsd_ids"):
            if k not in self.f:
                have = sorted(self.f)
                self.f.close()
                raise KeyError(f"{path}: no dataset {k!r} (have {have}; a regression output expected)")
        self.ds = self.f[key]
        ids = self.f["nsd_ids"][:].astype(np.int64)
        if self.ds.shape[0] != ids.size:
            self.f.close()
            raise ValueError(f"{path}: {key} has {self.ds.shape[0]} rows but nsd_ids has {ids.size}")
        self.nsd_ids = ids if nsd_ids is None else np.asarray(nsd_ids, np.int64)
        self.rows = np.arange(ids.size) if nsd_ids is None else rows_of(ids, self.nsd_ids, self.path)
        self.shape = (self.rows.size, *self.ds.shape[1:])

    def __len__(self):
        return int(self.rows.size)

    def __getitem__(self, sl):
        if not isinstance(sl, slice):
            raise IndexError("Predictions supports row slices only")
        rows = self.rows[sl]
        order = np.argsort(rows)
        block = self.ds[np.sort(rows).tolist()] if rows.size else np.empty((0, *self.ds.shape[1:]))
        out = np.empty_like(block)
        out[order] = block
        return out.astype(np.float32)

    def flat(self) -> "_Flat":
        """The same rows as (rows, D) (VDVAE latents)."""
        return _Flat(self)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Flat:
    def __init__(self, src):
        self.src = src

    def __len__(self):
        return len(self.src)

    def __getitem__(self, sl):
        a = np.asarray(self.src[sl])
        return a.reshape(a.shape[0], -1)


def open_predictions(stack: contextlib.ExitStack, files: Mapping[str, str], keys: Mapping[str, str]):
    """Open the regression outputs ``files`` = ``{space: path}``, reading ``keys[space]`` (``pred`` /
    ``pred_restd``) of each; closed when ``stack`` closes. Every file must list the same test nsdIds (the
    regression outputs of one subject, or of the subject average); rows are read in ascending nsdId.

    Returns ``(nsd_ids, {space: Predictions}, {space: "path:key"})``.
    """
    ids, first = None, None
    for space, path in files.items():
        with Predictions(path, keys[space]) as p:
            have = np.sort(p.nsd_ids)
        if ids is None:
            ids, first = have, space
        elif not np.array_equal(ids, have):
            raise ValueError(f"test nsdIds differ between {files[first]} and {path}: the regression outputs "
                             f"of one subject must list the same images")
    if ids is None:
        raise ValueError("no regression output to reconstruct from")
    preds, used = {}, {}
    for space, path in files.items():
        preds[space] = Predictions(path, keys[space], nsd_ids=ids)
        stack.callback(preds[space].close)
        used[space] = f"{path}:{keys[space]}"
    return ids, preds, used


def read_extra(path, name: str) -> np.ndarray:
    """``extra/<name>`` of a regression output (an extra pattern set, e.g. ``roi_V1``), float32."""
    import h5py

    with h5py.File(path, "r") as f:
        k = f"extra/{name}"
        if k not in f:
            have = sorted(f["extra"]) if "extra" in f else []
            raise KeyError(f"{path}: no {k!r} (ROI-optimal prediction; extra patterns present: {have})")
        return np.asarray(f[k][()], dtype=np.float32)


# ----------------------------------------------------------------------------- 2. components
def load_components(folders: Mapping[str, str | None], device: str, dtype: str, float32: Sequence[str] = ()):
    """Load model roles with :func:`brainrecon.models.load_model`: ``{role: folder}`` (``None``: not
    needed, skipped) on ``device`` in ``dtype`` (roles in ``float32`` always float32; CPU always float32).
    Returns ``({role: components}, device name, dtype name of the last role loaded)``."""
    from ..models import load_model
    from ..models.registry import resolve_device_dtype

    dev, dt = resolve_device_dtype(device, dtype)
    loaded, used = {}, "float32"
    for role, folder in folders.items():
        if folder is None:
            continue
        role_dtype = "float32" if role in float32 else dt
        loaded[role] = load_model(role, folder, device=dev, dtype=role_dtype)
        used = str(role_dtype).replace("torch.", "")
    return loaded, str(dev), used


# ----------------------------------------------------------------------------- 3. batches
@dataclass(frozen=True)
class Schedule:
    """What the diffusion of one image ran: ``num_steps`` denoising steps at ``timesteps``, from init latents
    noised to ``noise_timestep`` (``None``: no diffusion ran)."""

    num_steps: int = 0
    timesteps: tuple = ()
    noise_timestep: int | None = None

    @classmethod
    def of(cls, result) -> "Schedule":
        """From a :class:`brainrecon.models.diffusion.Img2ImgResult`."""
        return cls(int(result.num_steps), tuple(int(t) for t in result.timesteps), result.noise_timestep)


@dataclass
class Reconstruction:
    """One run's result: images (n, S, S, 3) — or (n, samples, S, S, 3) — uint8; stage1 (the coarse
    images the diffusion started from) or None; keys (nsdIds or ROI names); seeds; schedule (the same
    for every image: denoising steps, timesteps, init noise level); datasets: further per-image outputs
    (captions, depth maps)."""

    images: np.ndarray
    stage1: np.ndarray | None
    keys: list
    seeds: np.ndarray
    schedule: Schedule
    datasets: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def timesteps(self) -> list[int]:
        return list(self.schedule.timesteps)


class BatchOutputs:
    """The batches of one reconstruction: each is handed to ``sink(i0, images, stage1)`` (e.g.
    :func:`image_outputs`'s) and, with ``keep``, also kept for the in-memory result."""

    def __init__(self, sink: Callable | None, keep: bool):
        self.sink, self.keep = sink, bool(keep)
        self._images: list[np.ndarray] = []
        self._stage1: list[np.ndarray] = []

    def add(self, i0: int, images: np.ndarray, stage1: np.ndarray | None = None) -> None:
        if self.sink is not None:
            self.sink(i0, images, stage1)
        if self.keep:
            self._images.append(images)
            if stage1 is not None:
                self._stage1.append(stage1)

    @property
    def images(self) -> np.ndarray:
        """All kept images, concatenated on axis 0 (an empty array without ``keep``)."""
        return np.concatenate(self._images) if self.keep else np.empty((0,), np.uint8)

    @property
    def stage1(self) -> np.ndarray | None:
        """All kept stage-1 images, or None (none given, or no ``keep``)."""
        return np.concatenate(self._stage1) if self.keep and self._stage1 else None


def run_batches(n: int, chunk: int, step: Callable[[int, int], tuple], *, sink=None, keep: bool = True,
                desc: str = "reconstruct", progress: bool = True):
    """Run ``step(i0, i1) -> (images, stage1 | None, Schedule)`` over ``range(0, n, chunk)``.

    Every chunk's outputs go to ``sink`` (and are kept with ``keep``); every chunk must run the same
    schedule. Returns ``(BatchOutputs, Schedule)``.
    """
    from tqdm.auto import tqdm

    if n == 0:
        raise ValueError("nothing to reconstruct: no images")
    outputs = BatchOutputs(sink, keep)
    schedule = None
    for i0 in tqdm(range(0, n, chunk), desc=desc, disable=not progress):
        i1 = min(i0 + chunk, n)
        images, stage1, ran = step(i0, i1)
        if schedule is not None and ran != schedule:
            raise RuntimeError(f"the chunk at {i0} ran {ran}, earlier chunks {schedule}")
        schedule = ran
        outputs.add(i0, images, stage1)
    return outputs, schedule


# ----------------------------------------------------------------------------- 4. atomic write
@contextlib.contextmanager
def image_outputs(out_h5, png_dir, *, n: int, image_shape: Sequence[int], png_names: Callable[[int], Sequence[str]],
                  stage1_shape: Sequence[int] | None = None) -> Iterator[tuple[object, Callable]]:
    """Atomic ``images.h5`` + ``png/`` writer; yields ``(h5py file, sink)``.

    Creates ``images`` uint8 ``(n, *image_shape)`` (e.g. (S, S, 3), or (n_samples, S, S, 3))
    and, with ``stage1_shape``, ``stage1`` uint8 ``(n, *stage1_shape)``; both gzip-1, one row per
    chunk. ``sink(i0, images, stage1=None)`` stores rows ``i0 : i0 + len(images)`` and saves
    every image of row i as PNG, named ``png_names(i)`` (one name per image of the row, in
    order). The caller adds the other datasets and attrs to the file inside the block. Both
    outputs are written under temporary names and renamed into place only when the block
    ends without error; otherwise neither is left (:mod:`brainrecon.io`).
    """
    import h5py
    from PIL import Image

    image_shape = tuple(int(s) for s in image_shape)
    with contextlib.ExitStack() as stack:
        tmp_png = Path(stack.enter_context(atomic_dir(png_dir)))
        tmp_h5 = stack.enter_context(atomic_path(out_h5))
        f = stack.enter_context(h5py.File(tmp_h5, "w"))
        ds_img = f.create_dataset("images", shape=(n, *image_shape), dtype=np.uint8, chunks=(1, *image_shape),
                                  compression="gzip", compression_opts=1)
        ds_s1 = None
        if stage1_shape is not None:
            s1 = tuple(int(s) for s in stage1_shape)
            ds_s1 = f.create_dataset("stage1", shape=(n, *s1), dtype=np.uint8, chunks=(1, *s1),
                                     compression="gzip", compression_opts=1)

        def sink(i0: int, images: np.ndarray, stage1: np.ndarray | None = None) -> None:
            images = np.asarray(images)
            ds_img[i0:i0 + len(images)] = images
            if ds_s1 is not None and stage1 is not None:
                ds_s1[i0:i0 + len(stage1)] = stage1
            for j, row in enumerate(images):
                pics = row.reshape(-1, *row.shape[-3:])
                names = list(png_names(i0 + j))
                if len(names) != len(pics):
                    raise ValueError(f"row {i0 + j} has {len(pics)} image(s) but {len(names)} PNG name(s)")
                for name, im in zip(names, pics):
                    Image.fromarray(im).save(tmp_png / name)

        yield f, sink


@dataclass(frozen=True)
class Layout:
    """What one method writes per image: ``image_shape`` (one row of ``images``), ``stage1_shape``
    (None: no stage-1 images), ``png_names(key) -> names`` (one per image of the row)."""

    image_shape: tuple
    stage1_shape: tuple | None
    png_names: Callable


def _attr(v):
    import json

    return v if isinstance(v, (int, float, str, bool, np.integer, np.floating, np.ndarray)) else json.dumps(v)


def write_reconstruction(out_h5, png_dir, keys: Sequence, layout: Layout, run: Callable, *,
                         key_name: str = "nsd_ids", attrs: Callable | Mapping | None = None) -> Reconstruction:
    """The template's last step: ``run(sink) -> Reconstruction`` streams its chunks into ``images.h5`` +
    ``png/`` (:func:`image_outputs`), then the keys (``nsd_ids`` int64, or ``rois`` strings), ``seeds``,
    the run's ``datasets`` and the attrs (a mapping, or ``attrs(rec) -> mapping`` for attrs that need the
    run, e.g. its step count) are written. Nothing is left under the final names if anything fails."""
    import h5py

    keys = list(keys)
    with image_outputs(out_h5, png_dir, n=len(keys), image_shape=layout.image_shape,
                       stage1_shape=layout.stage1_shape, png_names=lambda i: layout.png_names(keys[i])) as (f, sink):
        rec = run(sink)
        if key_name == "nsd_ids":
            f["nsd_ids"] = np.asarray(keys, dtype=np.int64)
        else:
            f[key_name] = np.asarray([str(k) for k in keys], dtype=h5py.string_dtype())
        f["seeds"] = rec.seeds
        for name, data in rec.datasets.items():
            if data is not None and len(data) and isinstance(data[0], str):
                f.create_dataset(name, data=np.asarray(list(data), dtype=object), dtype=h5py.string_dtype("utf-8"))
            elif data is not None:
                f[name] = data
        for k, v in dict((attrs(rec) if callable(attrs) else attrs) or {}).items():
            f.attrs[k] = _attr(v)
    return rec


__all__ = ["subject_code", "derive_seed", "generators", "upsample", "to_uint8", "png_name",
           "finite", "rows_of", "Predictions", "open_predictions", "read_extra", "load_components", "Reconstruction", "Schedule",
           "BatchOutputs", "run_batches", "image_outputs", "Layout", "write_reconstruction"]
