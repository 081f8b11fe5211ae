"""Per-row random draws: row i of a batch from generator i (batch-independent, device-independent).

Used by the img2img loop (:mod:`brainrecon.models.diffusion`: posterior samples, init
noise, DDIM noise) and the VDVAE (:mod:`brainrecon.models.vdvae`: prior/posterior noise,
DMoL sampling), so that an image's numbers do not depend on the other images of its batch
nor on the device the model runs on.
"""

from __future__ import annotations

from typing import Sequence

import torch


def per_row_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device=None,
                  dtype: torch.dtype = torch.float32, kind: str = "normal") -> torch.Tensor:
    """(len(generators), *shape) noise, row i drawn from ``generators[i]``.

    kind: ``"normal"`` (standard normal) or ``"uniform"`` (U[0, 1)). Each row is drawn in
    float32 on its generator's device with shape ``shape`` — the numbers a batch of one would
    get from that generator — then moved to ``device`` (default: the generator's) and cast to
    ``dtype``.
    """
    if kind == "normal":
        fn = torch.randn
    elif kind == "uniform":
        fn = torch.rand
    else:
        raise ValueError(f"noise kind must be 'normal' or 'uniform', got {kind!r}")
    shape = tuple(int(s) for s in shape)
    rows = [fn(shape, generator=g, device=g.device, dtype=torch.float32).to(device) for g in generators]
    return torch.stack(rows).to(dtype)
