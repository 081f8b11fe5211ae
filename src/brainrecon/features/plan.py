"""The features stage's plan (no torch): every feature space, what it reads, its settings, its files.

One table, :data:`SPACES`, declares the fixed spaces; the parametric spaces of the encoding
analysis resolve through the same lookup, :func:`get_space`:

========================= ====== ======== =============================================================
space                     role   reads    what it is
========================= ====== ======== =============================================================
``vdvae``                 vdvae  images   VDVAE posterior latents of the first ``vdvae_layers`` blocks
``clipvision``            vd     images   Versatile Diffusion CLIP-vision context (257×768)
``cliptext``              vd     captions Versatile Diffusion CLIP-text context (77×768), caption mean
``sdz``                   sd     images   SD v1-4 VAE latent of the image at 320 px (4×40×40)
``sdc``                   sd     captions SD v1-4 text context (77×768), caption mean
``blip``                  blip   images   BLIP ViT visual tokens at ``blip_size`` px (226×768 at 240)
``dpt``                   dpt    images   DPT-large hidden states at the backbone outputs (4·577×1024)
``zc_s<strength>``        sd     images   img2img of the image's z conditioned on its c (sdc file) at a
                                          noise level: the final latent (encoding analysis)
``unet_<block>_t<step>``  sd     images   a U-Net block's output at one denoising step of that img2img
========================= ====== ======== =============================================================

A space's settings are (a) ``fixed``: part of its definition (the reference's values, e.g. 320 px for
sdz; the noise level of ``zc_s0.4``), and (b) ``config_keys``: read from the config's ``features``
section (fixed spaces) or ``encoding.img2img`` / ``encoding.unet`` (parametric ones) by
:func:`space_options` — the rule passes them as params, so changing one reruns only the spaces that
use it. The extractors themselves are in :mod:`brainrecon.features.extract` (torch).

Parametric names use only ``[a-z0-9_.]`` (they are a wildcard and a folder name):

================================ ==============================================================
``zc_s<strength>``               strength in (0, 1] with 1 to 3 decimals, canonical form of
                                 :func:`format_strength` (``0.4``, ``0.25``, ``1.0``; not ``0.40``)
``unet_<block>_t<step>``         block ``down<i>`` / ``mid`` / ``up<i>`` (no leading zeros), step a
                                 positive integer (the 1-based UNet call of the run)
================================ ==============================================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..models import plan as models_plan
from ..nsd import plan as nsd_plan

#: features of one subject and space (brainrecon.features.extract)
FEATURES = "results/features/{space}/subj{subject}.h5"
INPUT_KINDS = ("images", "captions")


@dataclass(frozen=True)
class FeatureSpace:
    """One feature space.

    name: the ``{space}`` wildcard and file name part; kind: its extractor (the name of a fixed space,
    ``zc`` or ``unet``); role: the model role whose folder it reads; inputs: ``"images"`` (imgBrick
    rows) or ``"captions"``; components: the role's components it loads (``None``: all);
    fixed: its own settings; config_keys: settings from the config (``section``: ``features`` or
    ``encoding``); dtype: compute dtype it forces (``None``: the config's on a GPU); reads_c: it
    also reads the subject's ``sdc`` features (c conditions its img2img); description: one line.
    """

    name: str
    kind: str
    role: str
    inputs: str
    components: tuple[str, ...] | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    config_keys: tuple[str, ...] = ()
    section: str = "features"
    dtype: str | None = None
    reads_c: bool = False
    description: str = ""

    def __post_init__(self):
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"feature space {self.name!r}: inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")


def _space(name, role, inputs, **kw) -> FeatureSpace:
    return FeatureSpace(name=name, kind=name, role=role, inputs=inputs, **kw)


#: the fixed feature spaces
SPACES: dict[str, FeatureSpace] = {s.name: s for s in (
    _space("vdvae", "vdvae", "images", fixed={"seed": 0}, config_keys=("vdvae_layers",),
           dtype="float32",  # the reference runs VDVAE in float32; 64-px images are cheap
           description="VDVAE posterior latents of the first vdvae_layers decoder blocks (91168 dims for 31, "
                       "ImageNet64), images 425->64 px, one seeded posterior sample per image"),
    _space("clipvision", "vd", "images", components=("image_encoder", "image_feature_extractor"),
           description="Versatile Diffusion CLIP-vision context (257x768): projected post-layernorm tokens / CLS norm"),
    _space("cliptext", "vd", "captions", components=("text_encoder", "tokenizer"), config_keys=("max_captions",),
           description="Versatile Diffusion CLIP-text context (77x768): projected tokens / pooled norm, mean over "
                       "captions"),
    _space("sdz", "sd", "images", components=("vae",), config_keys=("sdz_size",),
           description="Stable Diffusion v1-4 VAE posterior mean x scaling factor of the image resized to sdz_size "
                       "(4x40x40 at 320 px)"),
    _space("sdc", "sd", "captions", components=("text_encoder", "tokenizer"), config_keys=("max_captions",),
           description="Stable Diffusion v1-4 text encoder last_hidden_state (77x768), mean over captions"),
    _space("blip", "blip", "images", components=("model", "processor"), config_keys=("blip_size", "blip_normalize"),
           description="BLIP ViT-B visual tokens (last_hidden_state) of the image at blip_size px (226x768 at 240 px)"),
    _space("dpt", "dpt", "images", components=("model", "image_processor"), config_keys=("dpt_resize", "dpt_dtype"),
           description="DPT-large ViT hidden states at backbone_out_indices, layers x tokens flattened ((4*577)x1024), "
                       "image resized to dpt_resize px then by the DPT processor (384 px)"),
)}

# ----------------------------------------------------------------------------- parametric spaces
#: block names: down<i>, mid, up<i>
BLOCK_RE = r"(?:down(?:0|[1-9]\d*)|mid|up(?:0|[1-9]\d*))"
ZC_RE = r"zc_s\d\.\d{1,3}"
UNET_RE = rf"unet_{BLOCK_RE}_t[1-9]\d*"
#: every parametric (encoding) space name
PARAMETRIC_RE = rf"(?:{ZC_RE}|{UNET_RE})"
#: the ``{space}`` wildcard of the features rule: a fixed space or a parametric name
SPACE_WILDCARD = "|".join([re.escape(s) for s in SPACES] + [PARAMETRIC_RE])
#: SD components the zc / U-Net spaces load
IMG2IMG_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: settings of encoding.img2img that change the zc / U-Net features (batch_size does not)
IMG2IMG_KEYS = ("num_inference_steps", "guidance_scale", "eta", "seed", "image_size", "init_noise")
#: encoding.unet settings of the U-Net spaces -> their option names
UNET_KEYS = {"strength": "unet_strength", "pool": "pool", "storage_dtype": "storage_dtype"}


def format_strength(strength: float) -> str:
    """Canonical text of a noise level: 0.4 -> ``"0.4"``, 0.25 -> ``"0.25"``, 1 -> ``"1.0"``.

    Raises ``ValueError`` outside (0, 1] or when more than 3 decimals are needed.
    """
    s = float(strength)
    if not (0.0 < s <= 1.0) or not math.isfinite(s):
        raise ValueError(f"zc strength must be in (0, 1], got {strength!r}")
    text = f"{s:.3f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    if abs(float(text) - s) > 1e-12:
        raise ValueError(f"zc strength {strength!r} needs more than 3 decimals (file names hold at most 3)")
    return text


def zc_space_name(strength: float) -> str:
    """``zc_s<strength>`` (see :func:`format_strength`)."""
    return f"zc_s{format_strength(strength)}"


def check_block(block: str) -> str:
    if not isinstance(block, str) or not re.fullmatch(BLOCK_RE, block):
        raise ValueError(f"U-Net block must be 'down<i>', 'mid' or 'up<i>' (e.g. down1, mid, up2), got {block!r}")
    return block


def unet_space_name(block: str, step: int) -> str:
    """``unet_<block>_t<step>``; step is the 1-based denoising step."""
    check_block(block)
    if isinstance(step, bool) or int(step) != step or int(step) < 1:
        raise ValueError(f"U-Net step must be a positive integer (1-based denoising step), got {step!r}")
    return f"unet_{block}_t{int(step)}"


def is_parametric(name: str) -> bool:
    return isinstance(name, str) and re.fullmatch(PARAMETRIC_RE, name) is not None


def parse_parametric(name: str) -> dict:
    """``{"kind": "zc", "strength": float}`` or ``{"kind": "unet", "block": str, "step": int}``.

    Raises ``ValueError`` naming the space for anything else, including non-canonical spellings
    (``zc_s0.40``), so one setting has one file name.
    """
    m = re.fullmatch(r"zc_s(\d\.\d{1,3})", name or "")
    if m:
        s = float(m.group(1))
        try:
            canonical = zc_space_name(s)
        except ValueError as e:
            raise ValueError(f"feature space {name!r}: {e}") from None
        if canonical != name:
            raise ValueError(f"feature space {name!r}: write this noise level as {canonical!r}")
        return {"kind": "zc", "strength": s}
    m = re.fullmatch(rf"unet_({BLOCK_RE})_t([1-9]\d*)", name or "")
    if m:
        return {"kind": "unet", "block": m.group(1), "step": int(m.group(2))}
    raise ValueError(
        f"{name!r} is not an encoding feature space name: expected zc_s<strength> (e.g. zc_s0.4) or "
        f"unet_<block>_t<step> (e.g. unet_mid_t10)"
    )


def _parametric_space(name: str) -> FeatureSpace:
    p = parse_parametric(name)
    if p["kind"] == "zc":
        return FeatureSpace(
            name=name, kind="zc", role="sd", inputs="images", components=IMG2IMG_COMPONENTS,
            fixed={"strength": p["strength"]}, config_keys=IMG2IMG_KEYS, section="encoding", reads_c=True,
            description=f"SD img2img of the image's z conditioned on its c (sdc) at strength {p['strength']}: "
                        f"final denoised latent of the int(strength*num_inference_steps)-step partial schedule",
        )
    return FeatureSpace(
        name=name, kind="unet", role="sd", inputs="images", components=IMG2IMG_COMPONENTS,
        fixed={"block": p["block"], "step": p["step"]}, config_keys=IMG2IMG_KEYS + tuple(UNET_KEYS.values()),
        section="encoding", reads_c=True,
        description=f"SD U-Net block {p['block']} output (conditional half of the CFG batch) at denoising step "
                    f"{p['step']} of an img2img of the image's z conditioned on its c (sdc)",
    )


def get_space(name: str) -> FeatureSpace:
    """The space ``name``: a fixed one (:data:`SPACES`) or a parametric ``zc_s…`` / ``unet_…`` name."""
    if name in SPACES:
        return SPACES[name]
    if is_parametric(name):
        return _parametric_space(name)
    raise KeyError(f"unknown feature space {name!r}; known spaces: {sorted(SPACES)} and zc_s<strength> / "
                   f"unet_<block>_t<step>")


def space_role(name: str) -> str:
    """Model role a space reads (vdvae -> vdvae, clipvision/cliptext -> vd, sdz/sdc -> sd, ...)."""
    return get_space(name).role


# ----------------------------------------------------------------------------- config -> settings
def space_options(name: str, config: Mapping) -> dict:
    """The config settings of space ``name`` (the rule's params): its ``config_keys`` from the validated
    config's ``features`` section (fixed spaces) or ``encoding.img2img`` / ``encoding.unet``."""
    space = get_space(name)
    if space.section == "features":
        return {k: config["features"][k] for k in space.config_keys}
    enc = config["encoding"]
    opts = {k: enc["img2img"][k] for k in IMG2IMG_KEYS}
    if space.kind == "unet":
        opts.update({opt: enc["unet"][key] for key, opt in UNET_KEYS.items()})
    return opts


def default_options(name: str) -> dict:
    """:func:`space_options` with the schema's defaults (for library use outside the workflow)."""
    from ..schema import defaults

    return space_options(name, {"features": defaults("features"), "encoding": defaults("encoding")})


def space_dtype(name: str, models: Mapping) -> str:
    """Effective compute dtype of a space: the one it forces, else float32 on CPU / ``models.dtype``."""
    return get_space(name).dtype or models_plan.compute_dtype(models)


def batch_size(name: str, config: Mapping) -> int:
    """Images per model call: ``features.batch_size`` (parametric spaces: ``encoding.img2img.batch_size``)."""
    if get_space(name).section == "encoding":
        return int(config["encoding"]["img2img"]["batch_size"])
    return int(config["features"]["batch_size"])


def inputs(name: str, subject: str, config: Mapping) -> dict:
    """Files the features job of ``name`` × ``subject`` reads: the stimulus index, the role's model folder,
    the brick (image spaces) or captions (caption spaces), and the sdc features (spaces with ``reads_c``)."""
    space = get_space(name)
    out = {"stimuli": nsd_plan.STIMULI.format(subject=subject),
           "model": models_plan.model_dir(config["models"], space.role)}
    if space.inputs == "images":
        out["brick"] = nsd_plan.brick(config)
    else:
        out["captions"] = nsd_plan.CAPTIONS.format(subject=subject)
    if space.reads_c:
        out["c"] = FEATURES.format(space="sdc", subject=subject)
    return out


__all__ = [
    "FEATURES", "INPUT_KINDS", "FeatureSpace", "SPACES", "BLOCK_RE", "PARAMETRIC_RE", "SPACE_WILDCARD",
    "IMG2IMG_KEYS", "UNET_KEYS", "format_strength", "zc_space_name", "check_block", "unet_space_name",
    "is_parametric", "parse_parametric", "get_space", "space_role", "space_options", "default_options",
    "space_dtype", "batch_size", "inputs",
]
