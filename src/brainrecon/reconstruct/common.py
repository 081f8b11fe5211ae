"""Pieces shared by the reconstruction methods (Brain-Diffuser, Takagi & Nishimoto).

Import-cheap (numpy only at import; PIL, h5py and torch are imported where used), so the
torch-free variant modules (:mod:`.variants`, :mod:`.takagi_variants`) may use it too.

- :class:`SettingsMapping`: ``from_mapping`` / ``as_dict`` of the frozen settings dataclasses;
- seeds: :func:`subject_code`, :func:`derive_seed`;
- images: :func:`upsample` (bicubic, as the references), :func:`to_uint8`;
- outputs: :class:`BatchOutputs` (batches to a sink and/or memory) and :func:`image_outputs`,
  the atomic ``images.h5`` + ``png/`` writer both methods stream their batches into.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from ..io import atomic_dir, atomic_path


# ----------------------------------------------------------------------------- settings
class SettingsMapping:
    """Mixin for frozen settings dataclasses: build from a mapping, dump to a dict.

    ``_label`` names the settings in the error for unknown keys ("unknown <label> setting(s)").
    """

    _label: ClassVar[str] = "reconstruction"

    @classmethod
    def from_mapping(cls, values: Mapping):
        """Settings from a dict (e.g. the rule's params); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls._label} setting(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(values))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    """(B, 3, H, W) float tensor in [0, 1] -> (B, H, W, 3) uint8 numpy (rounded, as ``img2img.to_pil``)."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def png_name(key) -> str:
    """``<key>.png``; a key that is empty, has a '/' or starts with '.' is an error."""
    name = str(key)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cannot name a PNG after {key!r}")
    return f"{name}.png"


# ----------------------------------------------------------------------------- outputs
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
