"""Stable Diffusion v1 (Takagi & Nishimoto): text conditioning.

The SD text context ``c`` is the CLIP text encoder's ``last_hidden_state`` (B, 77, 768)
for prompts padded to the tokenizer's ``model_max_length`` (SPEC §4); the
classifier-free-guidance context is the same for the empty prompt. Image latents ``z``
(VAE posterior x scaling factor) come from :func:`brainrecon.models.diffusion.vae_encode`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .text import encode_prompts


def encode_sd_text(prompts: str | Sequence[str], text_encoder, tokenizer, batch_size: int = 64) -> torch.Tensor:
    """SD text context: ``last_hidden_state`` (B, 77, D) float32 on the encoder's device."""
    return encode_prompts(prompts, text_encoder, tokenizer, lambda res: res.last_hidden_state,
                          batch_size=batch_size, name="encode_sd_text")


def sd_unconditional(parts) -> torch.Tensor:
    """Classifier-free-guidance context: SD text context of the empty prompt, (1, 77, D)."""
    return encode_sd_text([""], parts.text_encoder, parts.tokenizer)
