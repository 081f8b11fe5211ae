"""Brain-Diffuser ROI-optimal images of one subject (thin: see brainrecon.reconstruct.braindiffuser)."""

import torch

from brainrecon.reconstruct.braindiffuser import SPACES, reconstruct_rois
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    inp, p = snakemake.input, snakemake.params
    reconstruct_rois(
        snakemake.wildcards.subject,
        p.rois,
        {space: inp[space] for space in SPACES},
        {space: inp[f"features_{space}"] for space in SPACES},
        snakemake.output.h5,
        snakemake.output.png,
        settings={**p.settings, "batch_size": p.batch_size},
        vdvae_dir=inp.vdvae_model,
        vd_dir=inp.vd_model,
        device=p.device,
        dtype=p.dtype,
    )
