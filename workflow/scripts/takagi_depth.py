"""Takagi +D: depth maps decoded by DPT from one subject's predicted hidden states (thin)."""

import torch

from brainrecon.reconstruct.takagi import depth_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    p, out = snakemake.params, snakemake.output  # noqa: F821
    depth_subject(
        dict(snakemake.input.items()),  # noqa: F821
        {"h5": out.h5, "png": out.png},
        image_size=p.image_size,
        prediction_key=p.prediction_key,
        device=p.device,
        dtype=p.dtype,
    )
