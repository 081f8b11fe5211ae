"""Takagi +T: captions decoded by BLIP from one subject's predicted visual tokens (thin)."""

import torch

from brainrecon.reconstruct.takagi import CaptionSettings, captions_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    p = snakemake.params  # noqa: F821
    captions_subject(
        dict(snakemake.input.items()),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        settings=CaptionSettings(**p.caption),
        prediction_key=p.prediction_key,
        device=p.device,
        dtype=p.dtype,
    )
