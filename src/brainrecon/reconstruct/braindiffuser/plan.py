"""Brain-Diffuser's plan (no torch): variants, settings, what each job reads and writes.

``workflow/rules/braindiffuser.smk`` reads it to decide, per variant, which regression outputs and
model folders a job reads and which settings it depends on, so that e.g. a new CLIP-text alpha does
not rerun ``only_vdvae`` and a new ``guidance_scale`` does not rerun it either. The method itself is
:mod:`brainrecon.reconstruct.braindiffuser.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ...schema import SectionSettings
from ...features.plan import FEATURES
from ...models.plan import compute_dtype, model_dir
from ...nsd.plan import subjects as nsd_subjects
from ...regression.plan import regression_file

METHOD = "braindiffuser"
SECTION = "methods.braindiffuser"
VARIANTS = ("full", "only_vdvae", "no_vdvae", "no_text", "no_vision")
#: regression spaces of Brain-Diffuser
SPACES = ("vdvae", "clipvision", "cliptext")
OUT = "results/reconstruct/braindiffuser"


@dataclass(frozen=True)
class Settings(SectionSettings):
    """``methods.braindiffuser`` settings used by reconstruction (config.schema.yaml has their defaults).

    vdvae_temperature: prior temperature of the VDVAE blocks without a predicted latent.
    steps, strength: DDIM grid and the fraction run (``int(strength · steps)`` steps).
    guidance_scale: classifier-free guidance weight.
    init_noise: the init latent's noise level (``reference``: t = 741 for 37 of 50 steps, the reference
    sampler; ``consistent``: 721, the first denoised timestep; :class:`brainrecon.models.diffusion.Sampler`).
    text_weight: dual-guidance weight of CLIP-text (vision gets ``1 - text_weight``).
    image_size: stage-2 / output image side in pixels (the stage-1 image is upsampled to it).
    batch_size: images per stage-2 call. seed: base of every image's seed.
    roi_recipe, roi_constants: how ROI-optimal predictions become model inputs (:mod:`.roi`).
    """

    vdvae_temperature: float
    steps: int
    strength: float
    guidance_scale: float
    init_noise: str
    text_weight: float
    image_size: int
    batch_size: int
    seed: int
    roi_recipe: str
    roi_constants: str

    SECTION = SECTION


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


def variant_spec(name: str, text_weight: float | None = None) -> VariantSpec:
    """The composition behind a variant name (``text_weight``: the configured dual-guidance weight;
    ``None`` leaves it unresolved for the variants that use it, when only ``needs`` matters).

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
    tw = None if text_weight is None else float(text_weight)
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
    spec = variant_spec(name)
    keys = ["image_size", "seed"]
    if spec.stage1:
        keys += ["vdvae_temperature"]
    if spec.stage2:
        keys += ["steps", "strength", "guidance_scale", "init_noise"]
        if name in ("full", "no_vdvae"):
            keys += ["text_weight"]
    missing = [k for k in keys if k not in settings]
    if missing:
        raise KeyError(f"methods.braindiffuser is missing {missing} (needed by variant {name!r})")
    return {k: settings[k] for k in keys}


def roi_settings(settings: Mapping) -> dict:
    """Settings the ROI-optimal images depend on: ``full``'s (they are reconstructed with it) and the recipe."""
    return {**variant_settings("full", settings), "roi_recipe": settings["roi_recipe"],
            "roi_constants": settings["roi_constants"]}


def num_denoising_steps(steps: int, strength: float) -> int:
    """Denoising steps of img2img: ``int(strength · steps)`` (reference truncation; 37 for 0.75 · 50)."""
    return int(float(strength) * int(steps))


# ----------------------------------------------------------------------------- workflow
def subjects(config: Mapping) -> list[str]:
    """Subjects reconstructed: the configured ones, plus "avg" when subject_average is on."""
    bd = config["methods"]["braindiffuser"]
    return nsd_subjects(config) + (["avg"] if bd["subject_average"] else [])


def prediction_key(config: Mapping, space: str) -> str:
    """The regression output dataset read: ``pred_restd`` when the space's regression re-standardises."""
    return "pred_restd" if config["regression"]["spaces"][space]["restandardise"] else "pred"


def inputs(config: Mapping, variant: str, subject: str) -> dict:
    """Inputs of one variant × subject: only the regression outputs and model folders it reads."""
    spec = variant_spec(variant)
    out = {space: regression_file(space, subject) for space in spec.needs}
    if spec.needs_vdvae_model:
        out["vdvae_model"] = model_dir(config["models"], "vdvae")
    if spec.needs_vd_model:
        out["vd_model"] = model_dir(config["models"], "vd")
    return out


def roi_inputs(config: Mapping, subject: str) -> dict:
    """ROI-optimal inputs: the three regression outputs (``extra/roi_*``), the features files whose
    training rows give the target norms (the subject's own; every subject's for "avg"), both models."""
    feature_subjects = nsd_subjects(config) if subject == "avg" else [subject]
    out = {space: regression_file(space, subject) for space in SPACES}
    for space in SPACES:
        out[f"features_{space}"] = [FEATURES.format(space=space, subject=x) for x in feature_subjects]
    out["vdvae_model"] = model_dir(config["models"], "vdvae")
    out["vd_model"] = model_dir(config["models"], "vd")
    return out


def vd_dtype(config: Mapping, variant: str) -> str:
    """Compute dtype of a variant's job: the models' on a GPU for variants that run VD; VDVAE always
    runs float32 (so only_vdvae does not rerun on a dtype change)."""
    return compute_dtype(config["models"]) if variant_spec(variant).stage2 else "float32"


def targets(config: Mapping) -> list[str]:
    """Every output folder's images.h5: variants × subjects (+ avg), and the ROI-optimal folders."""
    bd = config["methods"]["braindiffuser"]
    if not bd["enabled"]:
        return []
    subs = subjects(config)
    out = [f"{OUT}/{v}/subj{s}/images.h5" for v in bd["variants"] for s in subs]
    if bd["roi_optimal"]:
        out += [f"{OUT}/roi/subj{s}/images.h5" for s in subs]
    return out


def roi_optimal_for(config: Mapping, space: str) -> list[str]:
    """ROI-optimal patterns predicted along with a Brain-Diffuser space's test set (regression rule)."""
    bd = config["methods"]["braindiffuser"]
    return list(bd["roi_optimal"]) if space in SPACES and bd["enabled"] else []


__all__ = ["METHOD", "SECTION", "VARIANTS", "SPACES", "OUT", "Settings", "VariantSpec", "variant_spec",
           "variant_settings", "roi_settings", "num_denoising_steps", "subjects", "prediction_key", "inputs",
           "roi_inputs", "vd_dtype", "targets", "roi_optimal_for"]
