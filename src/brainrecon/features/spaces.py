"""Feature spaces: what each space reads, which model role it uses, which options it takes.

This module is light (no torch): the Snakefile reads it for wildcard constraints, inputs and params.
The extractors themselves live in :mod:`brainrecon.features.extractors` and are named here as
``"module:function"`` strings, imported only when features are extracted.

A space's ``setup`` function is called as ``setup(parts, **options)`` with the loaded model
components (:func:`brainrecon.models.load_model` with ``components=space.components``) and returns an
extractor: a callable ``extractor(nsd_ids, images, captions) -> (b, *feature_shape)`` float32 numpy
array, with a ``settings`` dict attribute (recorded in the HDF5 attrs). ``images`` are the imgBrick
rows (b, H, W, 3) uint8 for image spaces, ``captions`` a list of b caption lists for caption spaces.

Add a space (Takagi's ``blip``, ``dpt``, ...) with :func:`register_space`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INPUT_KINDS = ("images", "captions")


@dataclass(frozen=True)
class FeatureSpace:
    """One feature space.

    name: the ``{space}`` wildcard and file name part.
    role: model role whose folder it reads (``vdvae``, ``vd``, ``sd``, ...).
    inputs: ``"images"`` (imgBrick rows) or ``"captions"`` (the image's COCO captions).
    setup: ``"module:function"``, ``function(parts, **options) -> extractor`` (see module docstring).
    components: components of an HF role to load (``None``: the whole role / the VDVAE model).
    options: option name -> default. Options whose name is a key of the config's ``features``
        section are passed from there by the workflow (e.g. ``vdvae_layers``).
    dtype: compute dtype forced whatever ``models.dtype`` says (``None``: the config's dtype on GPU).
    description: one line for docs and attrs.
    """

    name: str
    role: str
    inputs: str
    setup: str
    components: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"feature space {self.name!r}: inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")

    def resolve_options(self, given: dict) -> dict:
        """Defaults updated with ``given``; unknown names raise ``TypeError`` naming the space."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise TypeError(
                f"feature space {self.name!r} takes no option(s) {unknown}; its options: {sorted(self.options)}"
            )
        return {**self.options, **given}


SPACES: dict[str, FeatureSpace] = {}


def register_space(space: FeatureSpace, replace: bool = False) -> None:
    """Add ``space`` to :data:`SPACES` (``replace=True`` to redefine one)."""
    if space.name in SPACES and not replace:
        raise ValueError(f"feature space {space.name!r} is already registered")
    SPACES[space.name] = space


def get_space(name: str) -> FeatureSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise KeyError(f"unknown feature space {name!r}; known spaces: {sorted(SPACES)}") from None


def space_role(name: str) -> str:
    """Model role a space reads (vdvae -> vdvae, clipvision/cliptext -> vd, sdz/sdc -> sd)."""
    return get_space(name).role


def space_config_options(name: str, features_config: dict) -> dict:
    """The options of space ``name`` that the config's ``features`` section sets (only those the
    space uses, so changing another space's setting changes nothing here)."""
    return {k: features_config[k] for k in get_space(name).options if k in features_config}


def space_dtype(name: str, device: str, dtype: str) -> str:
    """Effective compute dtype name of a space for config ``models.device`` / ``models.dtype``:
    the space's forced dtype, float32 on CPU, else ``dtype``."""
    forced = get_space(name).dtype
    if forced:
        return forced
    return "float32" if device == "cpu" else dtype


_X = "brainrecon.features.extractors"

register_space(FeatureSpace(
    name="vdvae",
    role="vdvae",
    inputs="images",
    setup=f"{_X}:setup_vdvae",
    options={"vdvae_layers": 31, "seed": 0},
    dtype="float32",  # the reference runs VDVAE in float32; 64-px images are cheap
    description="VDVAE posterior latents of the first vdvae_layers decoder blocks (91168 dims for 31, ImageNet64), "
                "images 425->64 px, one seeded posterior sample per image",
))
register_space(FeatureSpace(
    name="clipvision",
    role="vd",
    inputs="images",
    setup=f"{_X}:setup_clipvision",
    components=("image_encoder", "image_feature_extractor"),
    description="Versatile Diffusion CLIP-vision context (257x768): projected post-layernorm tokens / CLS norm",
))
register_space(FeatureSpace(
    name="cliptext",
    role="vd",
    inputs="captions",
    setup=f"{_X}:setup_cliptext",
    components=("text_encoder", "tokenizer"),
    options={"max_captions": 5},
    description="Versatile Diffusion CLIP-text context (77x768): projected tokens / pooled norm, mean over captions",
))
register_space(FeatureSpace(
    name="sdz",
    role="sd",
    inputs="images",
    setup=f"{_X}:setup_sdz",
    components=("vae",),
    options={"sdz_size": 320},
    description="Stable Diffusion v1-4 VAE posterior mean x scaling factor of the image resized to sdz_size "
                "(4x40x40 at 320 px)",
))
register_space(FeatureSpace(
    name="sdc",
    role="sd",
    inputs="captions",
    setup=f"{_X}:setup_sdc",
    components=("text_encoder", "tokenizer"),
    options={"max_captions": 5},
    description="Stable Diffusion v1-4 text encoder last_hidden_state (77x768), mean over captions",
))


# spaces defined in their own modules register themselves on import (Takagi +T/+D: blip, dpt; torch-free)
from . import takagi  # noqa: E402,F401
