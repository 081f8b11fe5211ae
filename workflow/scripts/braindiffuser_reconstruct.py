"""Brain-Diffuser: one variant for one subject (thin: see brainrecon.reconstruct.braindiffuser)."""

import torch

from brainrecon.reconstruct.braindiffuser import Settings, reconstruct_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    inp, out, p, wc = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards  # noqa: F821
    reconstruct_subject(
        wc.variant,
        wc.subject,
        dict(inp.items()),
        {"h5": out.h5, "png": out.png},
        settings=Settings.from_mapping({**p.settings, "batch_size": p.batch_size}),
        prediction_keys=dict(p.prediction_keys),
        device=p.device,
        dtype=p.dtype,
    )
