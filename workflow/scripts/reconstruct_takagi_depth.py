"""Takagi +D: depth maps decoded by DPT from one subject's predicted hidden states (thin)."""

import torch

from brainrecon.reconstruct.takagi import depth_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    depth_subject(
        snakemake.input.dpt,
        snakemake.output.h5,
        snakemake.output.png,
        dpt_dir=snakemake.input.dpt_model,
        sd2_dir=snakemake.input.sd2_model,
        image_size=p.image_size,
        prediction_key=p.prediction_key,
        device=p.device,
        dtype=p.dtype,
    )
