"""Takagi & Nishimoto (CVPR 2023) and the decoded-input follow-up (+T captions, +D depth).

- :mod:`.plan` (no torch): variants, settings, each job's inputs and outputs;
- :mod:`.pipeline`: the method — X_z, img2img from X_z conditioned on c (or a caption, or a depth map),
  5 seeded samples per image;
- :mod:`.decoded`: the decoded inputs of +T (BLIP captions) and +D (DPT depth maps).

Importing the package is cheap (the Snakefile reads :mod:`.plan`); the method's names load on first use.
"""

import importlib

from .plan import (  # noqa: F401
    METHOD,
    SPACES,
    VARIANTS,
    CaptionSettings,
    Settings,
    VariantSpec,
    num_denoising_steps,
    variant_settings,
    variant_spec,
)

_LAZY = {
    **dict.fromkeys(("sample_seed", "sample_seeds", "decode_z", "run_img2img", "reconstruct", "layout",
                     "output_attrs", "reconstruct_to_files", "reconstruct_subject"), "pipeline"),
    **dict.fromkeys(("decode_captions", "write_captions_csv", "read_captions_csv", "dpt_hidden_layout",
                     "decode_depth", "depth_to_uint8", "write_depth", "read_depth", "captions_subject",
                     "depth_subject"), "decoded"),
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", "SPACES", "VARIANTS", "Settings", "CaptionSettings", "VariantSpec", "variant_spec",
           "variant_settings", "num_denoising_steps", *_LAZY]
