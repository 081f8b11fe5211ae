"""Versatile Diffusion (Brain-Diffuser stage 2): dual-guided UNet and CLIP conditioning.

Dual guidance (as diffusers' ``VersatileDiffusionDualGuidedPipeline``): every
``Transformer2DModel`` of the image UNet is replaced by a ``DualTransformer2DModel`` that
holds two transformers, ``transformers[0]`` = the image UNet's own block (trained with
CLIP-image context) and ``transformers[1]`` = the text UNet's block at the same place
(trained with CLIP-text context). The UNet's ``encoder_hidden_states`` is the
concatenation of the two contexts along the token axis; each transformer attends to its
own slice, and the two residuals are mixed::

    out = x + mix_ratio * (T_c0(x, ctx_0) - x) + (1 - mix_ratio) * (T_c1(x, ctx_1) - x)

``mix_ratio`` weights *condition 0*. With condition order (text, image) — the pipeline's
``prompt_types`` — condition 0 is text, so ``mix_ratio = text_to_image_strength``; the
Brain-Diffuser mix 0.6 vision / 0.4 text is ``mix_ratio = 0.4``. The condition lengths
are the text encoder's ``max_position_embeddings`` (77) and the vision encoder's token
count ((224/14)^2 + 1 = 257 for ViT-L/14); both are read from the models here.

diffusers 0.42 breakage (upstream issue #13651): ``UNet2DConditionModel``'s blocks call
every attention module with ``encoder_attention_mask=...`` but
``DualTransformer2DModel.forward`` has no such parameter, so the first UNet call raises
``TypeError``. :class:`MaskTolerantDualTransformer2DModel` is a subclass whose forward
accepts it (a mask, when given, is sliced per condition and passed on; ``None`` — what
the UNet passes here — changes nothing). :func:`convert_to_dual_guided` builds that
subclass; :func:`make_mask_tolerant` upgrades library ``DualTransformer2DModel`` blocks
already in a UNet. The library module itself is never patched.

Conditioning (SPEC §3):

- :func:`encode_vd_text`: CLIP text, ``text_projection(last_hidden_state)`` divided by the
  norm of the projected pooled output (``text_embeds``) -> (B, 77, 768);
- :func:`encode_vd_image`: CLIP vision, ``visual_projection(post_layernorm(last_hidden_state))``
  with every token divided by the CLS token's norm -> (B, 257, 768);
- :func:`vd_unconditional`: the classifier-free-guidance contexts CLIP-text("") and
  CLIP-vision(uniform grey image, value 0.5 in [0, 1]).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers.models import DualTransformer2DModel, Transformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .text import encode_prompts

TEXT, IMAGE = "text", "image"
# Brain-Diffuser: cross-attention outputs mixed 0.6 vision / 0.4 text
BRAIN_DIFFUSER_MIX_RATIO = 0.4


class MaskTolerantDualTransformer2DModel(DualTransformer2DModel):
    """``DualTransformer2DModel`` whose forward accepts ``encoder_attention_mask`` (issue #13651).

    Same mixing as the library class (see module docstring). ``encoder_attention_mask``
    (B, sum(condition_lengths)) is sliced per condition and given to that condition's
    transformer; ``None`` (what the UNet passes for VD) changes nothing. ``attention_mask``
    (self-attention) stays unused, as in the library.
    """

    def forward(
        self,
        hidden_states,
        encoder_hidden_states,
        timestep=None,
        attention_mask=None,
        cross_attention_kwargs=None,
        encoder_attention_mask=None,
        return_dict: bool = True,
    ):
        total = sum(self.condition_lengths)
        if encoder_hidden_states.shape[1] != total:
            raise ValueError(
                f"dual-guided UNet expects encoder_hidden_states with {total} tokens "
                f"(condition_lengths {list(self.condition_lengths)}), got shape {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_attention_mask is not None and encoder_attention_mask.shape[-1] != total:
            raise ValueError(f"encoder_attention_mask has {encoder_attention_mask.shape[-1]} tokens, expected {total}")
        residuals = []
        start = 0
        for i, length in enumerate(self.condition_lengths):
            context = encoder_hidden_states[:, start:start + length]
            mask = None if encoder_attention_mask is None else encoder_attention_mask[..., start:start + length]
            block = self.transformers[self.transformer_index_for_condition[i]]
            out = block(
                hidden_states,
                encoder_hidden_states=context,
                timestep=timestep,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=mask,
                return_dict=False,
            )[0]
            residuals.append(out - hidden_states)
            start += length
        mixed = residuals[0] * self.mix_ratio + residuals[1] * (1 - self.mix_ratio) + hidden_states
        if not return_dict:
            return (mixed,)
        return Transformer2DModelOutput(sample=mixed)


def _new_dual(dual_cls, config, first: nn.Module, second: nn.Module):
    """A dual block holding ``first`` (index 0) and ``second`` (index 1); no weights are allocated."""
    kwargs = dict(
        num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim,
        in_channels=config.in_channels,
        num_layers=config.num_layers,
        dropout=config.dropout,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.cross_attention_dim,
        attention_bias=config.attention_bias,
        sample_size=config.sample_size,
        num_vector_embeds=config.num_vector_embeds,
        activation_fn=config.activation_fn,
        num_embeds_ada_norm=config.num_embeds_ada_norm,
    )
    with torch.device("meta"):  # the constructor's two fresh transformers are thrown away
        dual = dual_cls(**kwargs)
    dual.transformers = nn.ModuleList([first, second])
    return dual


def _top_level_transformers(unet) -> list[str]:
    """Names of the Transformer2DModel blocks of ``unet`` that are not inside a dual block."""
    names = []
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            if any(isinstance(unet.get_submodule(p), DualTransformer2DModel) for p in _parents(name)):
                continue
            names.append(name)
    return names


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def dual_blocks(unet) -> list[nn.Module]:
    """The ``DualTransformer2DModel`` blocks of ``unet`` (any subclass), in module order."""
    return [m for m in unet.modules() if isinstance(m, DualTransformer2DModel)]


def convert_to_dual_guided(image_unet, text_unet, dual_cls: type | None = None):
    """Make ``image_unet`` dual-guided, in place, with the transformer blocks of ``text_unet``.

    Each ``Transformer2DModel`` at name N of the image UNet becomes a dual block with
    ``transformers[0]`` = that block and ``transformers[1]`` = ``text_unet.get_submodule(N)``
    (the text UNet's block at the same place), as the diffusers pipeline's
    ``_convert_to_dual_attention``. ``dual_cls`` defaults to
    :class:`MaskTolerantDualTransformer2DModel` (pass diffusers' ``DualTransformer2DModel``
    only to reproduce the upstream failure). Idempotent: blocks already dual are left
    alone. Afterwards the text UNet's other weights are not needed. Returns ``image_unet``.
    """
    dual_cls = dual_cls or MaskTolerantDualTransformer2DModel
    names = _top_level_transformers(image_unet)
    for name in names:
        image_block = image_unet.get_submodule(name)
        try:
            text_block = text_unet.get_submodule(name)
        except AttributeError:
            raise ValueError(f"text UNet has no transformer block {name!r} to pair with the image UNet's") from None
        if not isinstance(text_block, Transformer2DModel):
            raise ValueError(f"text UNet module {name!r} is a {type(text_block).__name__}, not a Transformer2DModel")
        for key in ("in_channels", "cross_attention_dim", "num_attention_heads", "attention_head_dim"):
            a, b = getattr(image_block.config, key), getattr(text_block.config, key)
            if a != b:
                raise ValueError(f"transformer block {name!r}: image UNet {key}={a} but text UNet {key}={b}")
        _set_child(image_unet, name, _new_dual(dual_cls, image_block.config, image_block, text_block))
    if names:
        image_unet.register_to_config(dual_cross_attention=True)
    if not dual_blocks(image_unet):
        raise ValueError("image UNet has no transformer blocks to make dual-guided")
    return image_unet


def make_mask_tolerant(unet) -> int:
    """Replace library ``DualTransformer2DModel`` blocks of ``unet`` by the mask-tolerant subclass.

    Keeps their transformers and settings (mix_ratio, condition_lengths,
    transformer_index_for_condition). Idempotent; returns the number of blocks replaced.
    """
    Tolerant = MaskTolerantDualTransformer2DModel
    names = [
        n for n, m in unet.named_modules() if isinstance(m, DualTransformer2DModel) and not isinstance(m, Tolerant)
    ]
    for name in names:
        old = unet.get_submodule(name)
        new = _new_dual(Tolerant, old.transformers[0].config, old.transformers[0], old.transformers[1])
        new.mix_ratio = old.mix_ratio
        new.condition_lengths = list(old.condition_lengths)
        new.transformer_index_for_condition = list(old.transformer_index_for_condition)
        _set_child(unet, name, new)
    return len(names)


def set_dual_guidance(
    unet,
    mix_ratio: float = BRAIN_DIFFUSER_MIX_RATIO,
    condition_types: Sequence[str] = (TEXT, IMAGE),
    text_len: int = 77,
    image_len: int = 257,
) -> int:
    """Set the mixing of every dual block of ``unet`` (as the pipeline's ``set_transformer_params``).

    condition_types: order of the contexts in ``encoder_hidden_states``; ``mix_ratio``
        weights the first one. Text conditions use ``transformers[1]`` (the text UNet's
        block), image conditions ``transformers[0]``.
    text_len, image_len: token counts of the two contexts (see :func:`vd_condition_lengths`).
    Returns the number of dual blocks set; raises if there are none.
    """
    if not 0.0 <= float(mix_ratio) <= 1.0:
        raise ValueError(f"mix_ratio must be in [0, 1], got {mix_ratio}")
    condition_types = tuple(condition_types)
    if sorted(condition_types) != sorted((TEXT, IMAGE)):
        raise ValueError(f"condition_types must order 'text' and 'image', got {condition_types}")
    blocks = dual_blocks(unet)
    if not blocks:
        raise ValueError("UNet has no dual transformer blocks; call convert_to_dual_guided first")
    lengths = {TEXT: int(text_len), IMAGE: int(image_len)}
    index = {TEXT: 1, IMAGE: 0}
    for block in blocks:
        block.mix_ratio = float(mix_ratio)
        block.condition_lengths = [lengths[c] for c in condition_types]
        block.transformer_index_for_condition = [index[c] for c in condition_types]
    return len(blocks)


def vd_condition_lengths(text_encoder, image_encoder) -> tuple[int, int]:
    """(text tokens, image tokens): ``max_position_embeddings`` and (image_size/patch_size)^2 + 1."""
    text_len = int(text_encoder.config.max_position_embeddings)
    vc = image_encoder.config
    image_len = (int(vc.image_size) // int(vc.patch_size)) ** 2 + 1
    return text_len, image_len


def prepare_vd_components(parts, mix_ratio: float = BRAIN_DIFFUSER_MIX_RATIO, keep_text_unet: bool = False):
    """Post-load step of role "vd": dual-guided ``image_unet`` with (text, image) order and ``mix_ratio``.

    The text UNet's transformer blocks move into ``image_unet``; the rest of the text UNet
    is dropped (``parts.text_unet = None``) unless ``keep_text_unet``. Adds
    ``parts.text_len`` / ``parts.image_len`` (context token counts).
    """
    convert_to_dual_guided(parts.image_unet, parts.text_unet)
    text_len, image_len = vd_condition_lengths(parts.text_encoder, parts.image_encoder)
    set_dual_guidance(parts.image_unet, mix_ratio, (TEXT, IMAGE), text_len, image_len)
    parts.text_len, parts.image_len = text_len, image_len
    if not keep_text_unet:
        parts.text_unet = None
    return parts


def vd_context(text_ctx: torch.Tensor, image_ctx: torch.Tensor) -> torch.Tensor:
    """Dual-guided ``encoder_hidden_states``: text (B, 77, D) then image (B, 257, D) -> (B, 334, D).

    A batch of 1 on either side is broadcast to the other's batch size.
    """
    if text_ctx.ndim != 3 or image_ctx.ndim != 3:
        raise ValueError(f"contexts must be (B, tokens, dim), got {tuple(text_ctx.shape)} and {tuple(image_ctx.shape)}")
    if text_ctx.shape[-1] != image_ctx.shape[-1]:
        raise ValueError(f"text and image context dims differ: {text_ctx.shape[-1]} vs {image_ctx.shape[-1]}")
    b = max(text_ctx.shape[0], image_ctx.shape[0])
    if {text_ctx.shape[0], image_ctx.shape[0]} - {1, b}:
        raise ValueError(f"context batch sizes {text_ctx.shape[0]} and {image_ctx.shape[0]} do not match")
    image_ctx = image_ctx.to(text_ctx.device, text_ctx.dtype)
    return torch.cat([text_ctx.expand(b, -1, -1), image_ctx.expand(b, -1, -1)], dim=1)


# ----------------------------------------------------------------------------- encoders
def _module_device_dtype(module):
    p = next(module.parameters())
    return p.device, p.dtype


def encode_vd_text(prompts: str | Sequence[str], text_encoder, tokenizer, batch_size: int = 64) -> torch.Tensor:
    """CLIP text context of Versatile Diffusion: (B, L, D) float32 on the encoder's device.

    Tokens padded/truncated to ``tokenizer.model_max_length`` (77); returns
    ``text_projection(last_hidden_state) / ||text_embeds||`` per prompt (SPEC §3).
    """
    def head(res):
        embeds = text_encoder.text_projection(res.last_hidden_state)
        norm = torch.linalg.vector_norm(res.text_embeds, dim=-1, keepdim=True).unsqueeze(1)
        return embeds / norm

    return encode_prompts(prompts, text_encoder, tokenizer, head, batch_size=batch_size, name="encode_vd_text")


def images_to_unit_tensor(images) -> torch.Tensor:
    """Images as float32 (B, 3, H, W) in [0, 1].

    Accepts a list of PIL images, a uint8 array/tensor (B, H, W, 3) or (B, 3, H, W), or a
    float tensor/array (B, 3, H, W) already in [0, 1].
    """
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        if all(isinstance(im, Image.Image) for im in images):
            arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
            return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        images = torch.stack([torch.as_tensor(np.asarray(im)) for im in images])
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"images must be 4-D (B, C, H, W) or (B, H, W, C), got shape {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise ValueError(f"images must have 3 channels, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    t = t.float()
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float images must be in [0, 1], got range [{lo:.3f}, {hi:.3f}]")
    return t


@torch.no_grad()
def encode_vd_image(images, image_encoder, image_processor, batch_size: int = 32) -> torch.Tensor:
    """CLIP vision context of Versatile Diffusion: (B, T, D) float32 on the encoder's device.

    images: see :func:`images_to_unit_tensor` (values in [0, 1]); preprocessed by the
    repo's ``CLIPImageProcessor`` (bicubic resize of the short side, centre crop, CLIP
    mean/std; T = 257 at 224 px). Returns
    ``visual_projection(post_layernorm(last_hidden_state))`` with every token divided by
    the CLS token's norm (SPEC §3).
    """
    x = images_to_unit_tensor(images)
    device, dtype = _module_device_dtype(image_encoder)
    out = []
    for i in range(0, x.shape[0], batch_size):
        batch = list(x[i:i + batch_size])
        pixels = image_processor(images=batch, do_rescale=False, return_tensors="pt").pixel_values
        res = image_encoder(pixels.to(device, dtype))
        embeds = image_encoder.visual_projection(image_encoder.vision_model.post_layernorm(res.last_hidden_state))
        norm = torch.linalg.vector_norm(embeds[:, :1], dim=-1, keepdim=True)
        out.append((embeds / norm).float())
    return torch.cat(out)


def grey_image(size: int = 512) -> torch.Tensor:
    """A (1, 3, size, size) uniform grey image, value 0.5 in [0, 1]."""
    return torch.full((1, 3, size, size), 0.5)


def vd_unconditional(parts) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free-guidance contexts: CLIP-text("") (1, 77, D) and CLIP-vision(grey) (1, 257, D).

    The grey image is 0.5 in [0, 1] (the diffusers pipeline feeds 0.5-valued floats through
    a rescale by 1/255 and so actually encodes a near-black image; we do not).
    """
    text = encode_vd_text([""], parts.text_encoder, parts.tokenizer)
    image = encode_vd_image(grey_image(), parts.image_encoder, parts.image_feature_extractor)
    return text, image
