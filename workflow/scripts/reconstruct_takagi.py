"""Takagi & Nishimoto: one variant for one subject (thin: see brainrecon.reconstruct.takagi)."""

import torch

from brainrecon.reconstruct.takagi import reconstruct_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    inp, p = snakemake.input, snakemake.params
    reconstruct_subject(
        snakemake.wildcards.variant,
        snakemake.wildcards.subject,
        {space: inp[space] for space in ("sdz", "sdc") if space in inp.keys()},
        snakemake.output.h5,
        snakemake.output.png,
        settings={**p.settings, "batch_size": p.batch_size},
        sd_dir=inp.sd_model,
        sd2_dir=inp.get("sd2_model"),
        captions_csv=inp.get("captions"),
        depth_h5=inp.get("depth"),
        prediction_keys=p.prediction_keys,
        device=p.device,
        dtype=p.dtype,
    )
