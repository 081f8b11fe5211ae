"""Tiny random-weight stand-ins for the pretrained models (tests and the demo).

Every tiny component is an instance of the *same class* as the real one (diffusers
``UNet2DConditionModel``, ``UNetFlatConditionModel``, ``AutoencoderKL``; transformers
``CLIPTextModel(WithProjection)``, ``CLIPVisionModelWithProjection``, ``CLIPModel``,
``CLIPTokenizer``, ``CLIPImageProcessor``), built from a small config with weights drawn
from a seeded generator. The registry saves them in the on-disk layout of the real
Hugging Face repositories and loads them back with ``from_pretrained``, so the tiny path
exercises the same loading code as a real run.

Sizes (chosen so one UNet call takes milliseconds on one CPU core):

- images 32x32 px; VAE with 3 blocks (downsampling factor 4) -> latents 4x8x8;
- UNet block channels (32, 64), one layer per block, cross-attention dim 32;
- CLIP hidden size 32, projection dim 32; text context 77 tokens (as the real CLIP, so
  the tokenizer's ``model_max_length`` and ``max_position_embeddings`` agree); vision
  32 px / patch 8 -> 16 patches + CLS = 17 tokens (the real ViT-L/14 at 224 px has 257:
  code must read the length from the model, never hard-code 257).

The tokenizer has an in-memory byte-level vocabulary (256 byte symbols, the same 256 with
the end-of-word suffix ``</w>``, then ``<|startoftext|>`` and ``<|endoftext|>``) and no
merges, i.e. every word is spelled byte by byte. No download is needed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

TINY_IMAGE_SIZE = 32
TINY_TEXT_LEN = 77
TINY_CLIP_DIM = 32
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block with torch's global CPU RNG seeded, restoring the previous state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


# ----------------------------------------------------------------------------- tokenizer
def byte_level_vocab() -> dict[str, int]:
    """CLIP-style byte-level vocabulary without merges: 256 symbols, 256 ``</w>`` forms, BOS, EOS."""
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    if len(symbols) != 256:  # pragma: no cover - guards a tokenizers API change
        raise RuntimeError(f"expected 256 byte-level symbols, tokenizers gave {len(symbols)}")
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab[BOS_TOKEN] = 512
    vocab[EOS_TOKEN] = 513
    return vocab


def tiny_clip_tokenizer(model_max_length: int = TINY_TEXT_LEN):
    """A ``CLIPTokenizer`` over :func:`byte_level_vocab` (transformers 5 accepts ``vocab=`` dicts)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=model_max_length)


def save_clip_tokenizer(tokenizer, dest, *, with_tokenizer_json: bool) -> None:
    """Save ``tokenizer`` into ``dest`` in the file layout of the real CLIP tokenizer folders.

    ``save_pretrained`` writes ``tokenizer_config.json`` (+ ``tokenizer.json``); we add
    the slow-tokenizer files the hub repos carry (``vocab.json``, ``merges.txt``,
    ``special_tokens_map.json``). The Stable Diffusion / Versatile Diffusion repos have no
    ``tokenizer.json`` (``with_tokenizer_json=False`` removes it, so loading goes through
    vocab.json + merges.txt exactly as for the real folder); openai/clip-vit-large-patch14
    has both.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(dest))
    vocab = tokenizer.get_vocab()
    (dest / "vocab.json").write_text(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1]))))
    merges = getattr(tokenizer, "_merges", None) or []
    lines = ["#version: 0.2"] + [" ".join(m) if isinstance(m, (tuple, list)) else str(m) for m in merges]
    (dest / "merges.txt").write_text("\n".join(lines) + "\n")
    specials = {
        "bos_token": str(tokenizer.bos_token),
        "eos_token": str(tokenizer.eos_token),
        "unk_token": str(tokenizer.unk_token),
        "pad_token": str(tokenizer.pad_token),
    }
    (dest / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    if not with_tokenizer_json:
        (dest / "tokenizer.json").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- configs
def _clip_text_config(**extra):
    from transformers import CLIPTextConfig

    vocab = byte_level_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_CLIP_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_TEXT_LEN,
        projection_dim=TINY_CLIP_DIM,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        **extra,
    )


def _clip_vision_config(**extra):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=TINY_CLIP_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
        projection_dim=TINY_CLIP_DIM,
        **extra,
    )


def tiny_image_processor():
    """``CLIPImageProcessor`` with the real defaults (bicubic, CLIP mean/std) at 32 px."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )


def tiny_unet(cross_attention_dim: int = TINY_CLIP_DIM, in_channels: int = 4):
    """Tiny ``UNet2DConditionModel``: cross-attention in the first down / last up block and the mid block."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 4,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def tiny_text_unet(cross_attention_dim: int = TINY_CLIP_DIM, text_latent_dim: int = 16):
    """Tiny Versatile Diffusion ``UNetFlatConditionModel`` with the same block channels as :func:`tiny_unet`.

    Its transformer blocks have the image UNet's channel counts (as in the real model,
    where both UNets use 320/640/1280), so they can be swapped into the image UNet.
    """
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    return UNetFlatConditionModel(
        sample_size=None,
        in_channels=(text_latent_dim, 1, 1),
        out_channels=(text_latent_dim, 1, 1),
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockFlat", "DownBlockFlat"),
        up_block_types=("UpBlockFlat", "CrossAttnUpBlockFlat"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def tiny_vae():
    """Tiny ``AutoencoderKL`` (3 blocks: 32 px -> 8x8x4 latents), scaling factor 0.18215 as SD/VD."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=0.18215,
    )


_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def tiny_ddim_scheduler():
    """DDIM with the SD/VD training schedule (scaled linear betas 0.00085..0.012), offset 1."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_pndm_scheduler():
    """The scheduler *class and config* of CompVis/stable-diffusion-v1-4 (PNDM); loaded as DDIM."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(**_SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


# ----------------------------------------------------------------------------- roles
def build_vd_components(seed: int = 0) -> dict:
    """Tiny Versatile Diffusion: every component of shi-labs/versatile-diffusion."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    with seeded(seed):
        return {
            "image_unet": tiny_unet(),
            "text_unet": tiny_text_unet(),
            "vae": tiny_vae(),
            "text_encoder": CLIPTextModelWithProjection(_clip_text_config()),
            "image_encoder": CLIPVisionModelWithProjection(_clip_vision_config()),
            "tokenizer": tiny_clip_tokenizer(),
            "image_feature_extractor": tiny_image_processor(),
            "scheduler": tiny_ddim_scheduler(),
        }


def build_sd_components(seed: int = 0) -> dict:
    """Tiny Stable Diffusion v1: unet, vae, text_encoder (CLIPTextModel), tokenizer, scheduler (PNDM config)."""
    from transformers import CLIPTextModel

    with seeded(seed):
        return {
            "unet": tiny_unet(),
            "vae": tiny_vae(),
            "text_encoder": CLIPTextModel(_clip_text_config()),
            "tokenizer": tiny_clip_tokenizer(),
            "scheduler": tiny_pndm_scheduler(),
        }


def build_clip_components(seed: int = 0) -> dict:
    """Tiny CLIP (the openai/clip-vit-large-patch14 classes): model, tokenizer, image processor."""
    from transformers import CLIPConfig, CLIPModel

    with seeded(seed):
        config = CLIPConfig(
            text_config=_clip_text_config().to_dict(),
            vision_config=_clip_vision_config().to_dict(),
            projection_dim=TINY_CLIP_DIM,
        )
        return {
            "model": CLIPModel(config),
            "tokenizer": tiny_clip_tokenizer(),
            "image_processor": tiny_image_processor(),
        }
