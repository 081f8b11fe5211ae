"""Takagi & Nishimoto variants and settings — plain Python, no torch.

Imported by the Snakefile (``workflow/rules/takagi.smk``) to decide, per variant, which inputs a job reads
and which settings it depends on (so e.g. a new ``strength`` does not rerun the pure-noise variant ``c``,
and a new ``guidance_scale`` does not rerun ``z``). The reconstruction itself is
:mod:`brainrecon.reconstruct.takagi` (its module docstring explains each variant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Mapping

from .common import SettingsMapping

METHOD = "takagi"
VARIANTS = ("z", "c", "zc", "t", "td")
#: regression spaces of the method (z, c, BLIP tokens, DPT hidden states)
SPACES = ("sdz", "sdc", "blip", "dpt")


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings(SettingsMapping):
    """``methods.takagi`` settings used by reconstruction (paper values by default).

    steps, strength: DDIM grid and the fraction run (``int(strength · steps)`` = 40 steps).
    guidance_scale: classifier-free guidance weight (5.0); eta: DDIM eta (0).
    n_samples: samples per test image (5). image_size: img2img / output side in pixels (512).
    batch_size: image-samples per UNet batch. seed: base of every sample's seed.
    """

    steps: int = 50
    strength: float = 0.8
    guidance_scale: float = 5.0
    eta: float = 0.0
    n_samples: int = 5
    image_size: int = 512
    batch_size: int = 5
    seed: int = 0

    _label: ClassVar[str] = "Takagi"

    def __post_init__(self):
        if self.steps < 1 or self.n_samples < 1 or self.batch_size < 1 or self.image_size < 8:
            raise ValueError(f"invalid Takagi settings {self}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")


@dataclass(frozen=True)
class CaptionSettings(SettingsMapping):
    """BLIP beam-search settings (the reference's ``generate_from_imageembeds`` call)."""

    num_beams: int = 3
    max_length: int = 20
    min_length: int = 5
    repetition_penalty: float = 1.5
    prompt: str = "a picture of "
    batch_size: int = 16

    _label: ClassVar[str] = "caption"

    def __post_init__(self):
        if self.num_beams < 1 or self.max_length < 1 or self.batch_size < 1:
            raise ValueError(f"invalid caption settings {self}")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(f"caption min_length {self.min_length} must be in [0, max_length={self.max_length}]")


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


def variant_spec(name: str) -> VariantSpec:
    """The composition behind a variant name (table in the module docstring)."""
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
    "c": ("strength",),  # pure-noise init runs the full schedule
    "z": ("guidance_scale",),  # conditional context == unconditional context
}
#: settings that change numbers but not which numbers (batching: each sample has its own generator)
_NOT_RESULTS = ("batch_size",)


def variant_settings(name: str, settings: Mapping) -> dict:
    """The reconstruction settings (``methods.takagi`` keys of :class:`Settings`) that variant ``name``
    depends on — its rule's params. ``batch_size`` is excluded (results do not depend on batching);
    call :meth:`Settings.from_mapping` with the full mapping to run."""
    variant_spec(name)
    names = [f.name for f in dataclasses.fields(Settings)]
    drop = set(_IRRELEVANT.get(name, ())) | set(_NOT_RESULTS)
    return {k: settings[k] for k in names if k in settings and k not in drop}


def caption_settings(cfg: Mapping) -> dict:
    """The ``methods.takagi.caption`` mapping as :class:`CaptionSettings` keyword arguments."""
    return dict(CaptionSettings.from_mapping(cfg.get("caption", {})).__dict__)
