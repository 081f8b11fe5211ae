"""Stable Diffusion v1 (Takagi & Nishimoto): text conditioning.

The SD text context ``c`` is the CLIP text encoder's ``last_hidden_state`` (B, 77, 768)
for prompts padded to the tokenizer's ``model_max_length`` (SPEC §4); the
classifier-free-guidance context is the same for the empty prompt. Image latents ``z``
(VAE posterior x scaling factor) come from :func:`brainrecon.reconstruct.img2img.vae_encode`.
"""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def encode_sd_text(prompts: str | Sequence[str], text_encoder, tokenizer, batch_size: int = 64) -> torch.Tensor:
    """SD text context: ``last_hidden_state`` (B, 77, D) float32 on the encoder's device."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_sd_text needs at least one prompt")
    device = next(text_encoder.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(
            prompts[i:i + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out.append(text_encoder(tokens.input_ids.to(device)).last_hidden_state.float())
    return torch.cat(out)


def sd_unconditional(parts) -> torch.Tensor:
    """Classifier-free-guidance context: SD text context of the empty prompt, (1, 77, D)."""
    return encode_sd_text([""], parts.text_encoder, parts.tokenizer)
