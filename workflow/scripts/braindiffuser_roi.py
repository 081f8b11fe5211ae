"""Brain-Diffuser ROI-optimal images of one subject (thin: see brainrecon.reconstruct.braindiffuser.roi)."""

import torch

from brainrecon.reconstruct.braindiffuser import Settings, reconstruct_rois
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    inp, out, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    reconstruct_rois(
        snakemake.wildcards.subject,  # noqa: F821
        p.rois,
        dict(inp.items()),
        {"h5": out.h5, "png": out.png},
        settings=Settings.from_mapping({**p.settings, "batch_size": p.batch_size}),
        device=p.device,
        dtype=p.dtype,
    )
