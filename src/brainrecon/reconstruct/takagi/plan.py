"""Takagi & Nishimoto's plan (no torch): variants, settings, what each job reads and writes.

``workflow/rules/takagi.smk`` reads it to decide, per variant, which inputs a job reads and which
settings it depends on (so e.g. a new ``strength`` does not rerun the pure-noise variant ``c``, and a
new ``guidance_scale`` does not rerun ``z``). The method is :mod:`brainrecon.reconstruct.takagi.pipeline`
(its module docstring explains each variant); the decoded inputs of +T / +D are
:mod:`brainrecon.reconstruct.takagi.decoded`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from ...schema import SectionSettings
from ...models.plan import model_dir
from ...nsd.plan import subjects as nsd_subjects
from ...regression.plan import regression_file

METHOD = "takagi"
SECTION = "methods.takagi"
VARIANTS = ("z", "c", "zc", "t", "td")
#: regression spaces of the method (z, c, BLIP tokens, DPT hidden states)
SPACES = ("sdz", "sdc", "blip", "dpt")
OUT = "results/reconstruct/takagi"
CAPTIONS = OUT + "/decoded/subj{subject}_captions.csv"
DEPTH = OUT + "/decoded/subj{subject}_depth.h5"
DEPTH_PNG = OUT + "/decoded/subj{subject}_depth_png"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings(SectionSettings):
    """``methods.takagi`` settings used by reconstruction (config.schema.yaml has their defaults: the paper's).

    steps, strength: DDIM grid and the fraction run (``int(strength · steps)`` = 40 steps).
    guidance_scale: classifier-free guidance weight (5.0); eta: DDIM eta (0).
    init_noise: the init latent's noise level (``reference``: t = 801 for 40 of 50 steps, the reference
    sampler; ``consistent``: 781, the first denoised timestep; :class:`brainrecon.models.diffusion.Sampler`).
    n_samples: samples per test image (5). image_size: img2img / output side in pixels (512).
    batch_size: image-samples per UNet batch. seed: base of every sample's seed.
    """

    steps: int
    strength: float
    guidance_scale: float
    eta: float
    init_noise: str
    n_samples: int
    image_size: int
    batch_size: int
    seed: int

    SECTION = SECTION


@dataclass(frozen=True)
class CaptionSettings(SectionSettings):
    """BLIP beam-search settings (the reference's ``generate_from_imageembeds`` call;
    ``methods.takagi.caption``)."""

    num_beams: int
    max_length: int
    min_length: int
    repetition_penalty: float
    prompt: str
    batch_size: int

    def __post_init__(self):
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(f"caption min_length {self.min_length} must be in [0, max_length={self.max_length}]")

    SECTION = SECTION + ".caption"


@dataclass(frozen=True)
class VariantSpec:
    """What a variant runs.

    init: ``"z"`` (X_z, ``strength``) or ``"noise"`` (pure noise, full schedule);
    text: ``"c"`` (predicted c), ``"empty"`` (empty prompt) or ``"caption"`` (BLIP caption);
    depth: SD2-depth with the decoded depth map; needs: the inputs it reads
    (regression spaces ``sdz``/``sdc``, ``captions``, ``depth``).
    """

    name: str
    init: str
    text: str
    depth: bool
    needs: tuple[str, ...]

    @property
    def model(self) -> str:
        """Model role of the img2img step."""
        return "sd2_depth" if self.depth else "sd"

    @property
    def spaces(self) -> tuple[str, ...]:
        """The regression spaces it reads (``sdz``, ``sdc``)."""
        return tuple(s for s in self.needs if s in ("sdz", "sdc"))


def variant_spec(name: str) -> VariantSpec:
    """The composition behind a variant name (table in :mod:`brainrecon.reconstruct.takagi.pipeline`)."""
    specs = {
        "zc": VariantSpec("zc", "z", "c", False, ("sdz", "sdc")),
        "z": VariantSpec("z", "z", "empty", False, ("sdz",)),
        "c": VariantSpec("c", "noise", "c", False, ("sdc",)),
        "t": VariantSpec("t", "z", "caption", False, ("sdz", "captions")),
        "td": VariantSpec("td", "z", "caption", True, ("sdz", "captions", "depth")),
    }
    try:
        return specs[name]
    except KeyError:
        raise ValueError(f"unknown Takagi variant {name!r}; known: {list(VARIANTS)}") from None


def num_denoising_steps(variant: str, steps: int, strength: float) -> int:
    """Denoising steps a variant runs: ``int(strength · steps)`` from X_z, all ``steps`` from noise."""
    return int(steps) if variant_spec(variant).init == "noise" else int(float(strength) * int(steps))


#: settings that do not change a variant's images (left out of its rule params, so no rerun)
_IRRELEVANT = {
    "c": ("strength", "init_noise"),  # pure-noise init runs the full schedule (no level above the grid)
    "z": ("guidance_scale",),  # conditional context == unconditional context
}
#: settings that change numbers but not which numbers (batching: each sample has its own generator)
_NOT_RESULTS = ("batch_size",)


def variant_settings(name: str, settings: Mapping) -> dict:
    """The reconstruction settings (``methods.takagi`` keys of :class:`Settings`) that variant ``name``
    depends on — its rule's params. ``batch_size`` is excluded (results do not depend on batching)."""
    variant_spec(name)
    names = [f.name for f in dataclasses.fields(Settings)]
    drop = set(_IRRELEVANT.get(name, ())) | set(_NOT_RESULTS)
    return {k: settings[k] for k in names if k in settings and k not in drop}


def caption_settings(cfg: Mapping) -> dict:
    """The ``methods.takagi.caption`` mapping (schema defaults filled), as :class:`CaptionSettings` fields."""
    return CaptionSettings.from_mapping(cfg.get("caption", {})).as_dict()


# ----------------------------------------------------------------------------- workflow
def prediction_key(config: Mapping, space: str) -> str:
    """Regression output dataset read: re-standardised predictions only if that space's regression was
    configured to re-standardise (Takagi: no, raw ridge predictions)."""
    return "pred_restd" if config["regression"]["spaces"][space]["restandardise"] else "pred"


def prediction_keys(config: Mapping, variant: str) -> dict:
    return {space: prediction_key(config, space) for space in variant_spec(variant).spaces}


def inputs(config: Mapping, variant: str, subject: str) -> dict:
    """Inputs of one variant × subject: only the regression outputs, decoded inputs and models it reads."""
    spec = variant_spec(variant)
    out = {space: regression_file(space, subject) for space in spec.spaces}
    if "captions" in spec.needs:
        out["captions"] = CAPTIONS.format(subject=subject)
    if "depth" in spec.needs:
        out["depth"] = DEPTH.format(subject=subject)
        out["sd2_model"] = model_dir(config["models"], "sd2_depth")
    out["sd_model"] = model_dir(config["models"], "sd")  # img2img, or decoding predicted z for td
    return out


def targets(config: Mapping) -> list[str]:
    """Every output folder's images.h5: configured variants × subjects."""
    tn = config["methods"]["takagi"]
    if not tn["enabled"]:
        return []
    return [f"{OUT}/{v}/subj{s}/images.h5" for v in tn["variants"] for s in nsd_subjects(config)]


__all__ = ["METHOD", "SECTION", "VARIANTS", "SPACES", "OUT", "CAPTIONS", "DEPTH", "DEPTH_PNG", "Settings",
           "CaptionSettings", "VariantSpec", "variant_spec", "num_denoising_steps", "variant_settings",
           "caption_settings", "prediction_key", "prediction_keys", "inputs", "targets"]
