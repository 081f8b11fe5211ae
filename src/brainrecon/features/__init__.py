"""brainrecon.features: per-image features of every stimulus, one HDF5 per subject and space.

- :mod:`brainrecon.features.plan` (no torch): the feature spaces (:data:`SPACES`, :func:`get_space` for
  the fixed and the parametric ``zc_s…`` / ``unet_…`` spaces), their settings and files;
- :func:`extract_features` ``(space, out_h5, inputs, options, runtime)``: the one writer
  (:mod:`brainrecon.features.extract`);
- :func:`read_features` ``(path, split)``: ``(features, nsd_ids)``.
"""

from __future__ import annotations

import importlib

from .plan import SPACES, FeatureSpace, default_options, get_space, space_options, space_role

_LAZY = {
    "extract_features": "extract", "read_features": "extract", "read_stimulus_index": "extract",
    "read_captions": "extract", "image_seed": "extractors",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SPACES", "FeatureSpace", "get_space", "space_options", "default_options", "space_role", *_LAZY]
