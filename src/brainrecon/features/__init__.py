"""brainrecon.features: per-image features of every stimulus, one HDF5 per subject and space.

- :data:`SPACES` / :func:`register_space` / :func:`get_space` / :func:`space_role`: the feature spaces
  (vdvae, clipvision, cliptext, sdz, sdc), what they read and which model role they use
  (:mod:`brainrecon.features.spaces`, importable without torch);
- :func:`extract_features` ``(space, out_h5, stimuli_csv, captions_csv, brick_path, model_folder,
  batch_size, device, dtype, **space_opts)``: the one writer (:mod:`brainrecon.features.extract`);
- :func:`read_features` ``(path, split)``: ``(features, nsd_ids)``.
"""

from __future__ import annotations

import importlib

from .spaces import (
    SPACES,
    FeatureSpace,
    get_space,
    register_space,
    space_config_options,
    space_dtype,
    space_role,
)

_LAZY = {
    "extract_features": "extract", "read_features": "extract", "read_stimulus_index": "extract",
    "read_captions": "extract", "image_seed": "extractors", "encode_latents_per_image": "extractors",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SPACES", "FeatureSpace", "get_space", "register_space", "space_config_options", "space_dtype", "space_role",
    *_LAZY,
]
