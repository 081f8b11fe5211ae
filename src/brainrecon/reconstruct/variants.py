"""Brain-Diffuser variants and ROI-optimal pattern definitions — plain Python, no torch.

Imported by the Snakefile (``workflow/rules/reconstruct.smk``) to decide, per variant, which
regression outputs and model folders a job reads and which settings it depends on, so that
e.g. a new CLIP-text alpha does not rerun ``only_vdvae`` and a new ``guidance_scale`` does
not rerun it either. The reconstruction itself is :mod:`brainrecon.reconstruct.braindiffuser`
(whose module docstring explains each variant and cites the paper's ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

METHOD = "braindiffuser"
VARIANTS = ("full", "only_vdvae", "no_vdvae", "no_text", "no_vision")
#: regression spaces of Brain-Diffuser
SPACES = ("vdvae", "clipvision", "cliptext")

@dataclass(frozen=True)
class VariantSpec:
    """What a variant runs.

    stage1: decode the predicted VDVAE latents; stage2: run VD img2img;
    init: ``"stage1"`` (encode the upsampled stage-1 image), ``"noise"`` (random AutoKL
    latent) or ``None`` (no stage 2); text_weight: dual-guidance weight of CLIP-text
    (``None`` without stage 2); needs: the regression spaces whose predictions it reads.
    """

    name: str
    stage1: bool
    stage2: bool
    init: str | None
    text_weight: float | None
    needs: tuple[str, ...]

    @property
    def needs_vdvae_model(self) -> bool:
        return self.stage1

    @property
    def needs_vd_model(self) -> bool:
        return self.stage2


def variant_spec(name: str, text_weight: float = 0.4) -> VariantSpec:
    """The composition behind a variant name.

    ============ ====== ====== ======== ============ ==============================
    variant      stage1 stage2 init     text weight  reads
    ============ ====== ====== ======== ============ ==============================
    full         yes    yes    stage1   text_weight  vdvae, clipvision, cliptext
    only_vdvae   yes    no     -        -            vdvae
    no_vdvae     no     yes    noise    text_weight  clipvision, cliptext
    no_text      yes    yes    stage1   0            vdvae, clipvision
    no_vision    yes    yes    stage1   1            vdvae, cliptext
    ============ ====== ====== ======== ============ ==============================
    """
    tw = float(text_weight)
    specs = {
        "full": VariantSpec("full", True, True, "stage1", tw, ("vdvae", "clipvision", "cliptext")),
        "only_vdvae": VariantSpec("only_vdvae", True, False, None, None, ("vdvae",)),
        "no_vdvae": VariantSpec("no_vdvae", False, True, "noise", tw, ("clipvision", "cliptext")),
        "no_text": VariantSpec("no_text", True, True, "stage1", 0.0, ("vdvae", "clipvision")),
        "no_vision": VariantSpec("no_vision", True, True, "stage1", 1.0, ("vdvae", "cliptext")),
    }
    if name not in specs:
        raise ValueError(f"unknown Brain-Diffuser variant {name!r}; known: {list(VARIANTS)}")
    return specs[name]


def variant_settings(name: str, settings: Mapping) -> dict:
    """The subset of ``methods.braindiffuser`` that variant ``name`` depends on.

    The rule passes exactly this as ``params``: ``only_vdvae`` depends on
    (image_size, seed, vdvae_temperature) only; ``no_vdvae`` not on vdvae_temperature;
    ``text_weight`` only where the variant does not fix it (full, no_vdvae).
    ``batch_size`` is not included: every image has its own generators, so the batch only
    changes floating-point reassociation in batched kernels (at most a rounding flip of a
    pixel level); the rule passes it as a non-triggering param, so fitting the batch to a
    GPU's memory does not rerun finished reconstructions.
    """
    spec = variant_spec(name, settings.get("text_weight", 0.4))
    keys = ["image_size", "seed"]
    if spec.stage1:
        keys += ["vdvae_temperature"]
    if spec.stage2:
        keys += ["steps", "strength", "guidance_scale"]
        if name in ("full", "no_vdvae"):
            keys += ["text_weight"]
    missing = [k for k in keys if k not in settings]
    if missing:
        raise KeyError(f"methods.braindiffuser is missing {missing} (needed by variant {name!r})")
    return {k: settings[k] for k in keys}


def roi_settings(settings: Mapping) -> dict:
    """Settings the ROI-optimal images depend on (they are reconstructed with ``full``)."""
    return variant_settings("full", settings)


def num_denoising_steps(steps: int, strength: float) -> int:
    """Denoising steps of img2img: ``int(strength · steps)`` (reference truncation; 37 for 0.75 · 50)."""
    return int(float(strength) * int(steps))


__all__ = ["METHOD", "VARIANTS", "SPACES", "VariantSpec", "variant_spec", "variant_settings",
           "roi_settings", "num_denoising_steps"]
