"""Brain-Diffuser: one variant for one subject (thin: see brainrecon.reconstruct.braindiffuser)."""

import torch

from brainrecon.reconstruct.braindiffuser import SPACES, reconstruct_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    inp, p = snakemake.input, snakemake.params
    reconstruct_subject(
        snakemake.wildcards.variant,
        snakemake.wildcards.subject,
        {space: inp[space] for space in SPACES if space in inp.keys()},
        snakemake.output.h5,
        snakemake.output.png,
        settings={**p.settings, "batch_size": p.batch_size},
        vdvae_dir=inp.get("vdvae_model"),
        vd_dir=inp.get("vd_model"),
        device=p.device,
        dtype=p.dtype,
    )
