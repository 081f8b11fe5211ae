"""Takagi +T: captions decoded by BLIP from one subject's predicted visual tokens (thin)."""

import torch

from brainrecon.reconstruct.takagi import captions_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    captions_subject(
        snakemake.input.blip,
        snakemake.output[0],
        blip_dir=snakemake.input.blip_model,
        settings=p.caption,
        prediction_key=p.prediction_key,
        device=p.device,
        dtype=p.dtype,
    )
