"""Brain-Diffuser (Ozcelik & VanRullen 2023): VDVAE initial guess, then dual-guided Versatile Diffusion.

- :mod:`.plan` (no torch): variants, settings, each job's inputs and outputs;
- :mod:`.pipeline`: the method — stage 1 (VDVAE), stage 2 (VD img2img), the variants;
- :mod:`.roi`: the ROI-optimal images.

Importing the package is cheap (the Snakefile reads :mod:`.plan`); the method's names load on first use.
"""

import importlib

from .plan import (  # noqa: F401
    METHOD,
    SPACES,
    VARIANTS,
    Settings,
    VariantSpec,
    num_denoising_steps,
    roi_settings,
    variant_settings,
    variant_spec,
)

_LAZY = {
    **dict.fromkeys(("context_shapes", "decode_stage1", "image_seed", "layout", "output_attrs", "reconstruct",
                     "reconstruct_subject", "reconstruct_to_files", "run_stage2", "vdvae_num_layers"), "pipeline"),
    **dict.fromkeys(("mean_row_norm", "reconstruct_rois", "renormalise", "rms_norm_from_moments", "feature_moments",
                     "reference_vdvae", "reference_clip", "recipe_constants", "roi_inputs_for",
                     "PUBLISHED_CONSTANTS"), "roi"),
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", "SPACES", "VARIANTS", "Settings", "VariantSpec", "variant_spec", "variant_settings",
           "roi_settings", "num_denoising_steps", *_LAZY]
