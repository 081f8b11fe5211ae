"""Shared CLIP-text tokenise-and-encode loop (SD and Versatile Diffusion conditioning).

Both Stable Diffusion's text context (:func:`brainrecon.models.sd.encode_sd_text`) and
Versatile Diffusion's (:func:`brainrecon.models.vd.encode_vd_text`) tokenise prompts padded
and truncated to ``tokenizer.model_max_length`` (77), run the CLIP text encoder in batches
and differ only in what they read off its output; that part is the ``head`` argument here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


@torch.no_grad()
def encode_prompts(
    prompts: str | Sequence[str],
    text_encoder,
    tokenizer,
    head: Callable[[object], torch.Tensor],
    *,
    batch_size: int = 64,
    name: str = "encode_prompts",
) -> torch.Tensor:
    """Tokenise ``prompts`` (padded to ``model_max_length``) and encode them in batches.

    ``head(output)`` maps the text encoder's output for one batch to a (b, L, D) tensor;
    the batches are concatenated to (B, L, D) float32 on the encoder's device. A single
    string counts as one prompt; an empty list raises ``ValueError`` naming ``name``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{name} needs at least one prompt")
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
        out.append(head(text_encoder(tokens.input_ids.to(device))).float())
    return torch.cat(out)
