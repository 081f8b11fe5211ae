"""CnD Phase 1 of one subject (thin: see brainrecon.reconstruct.cnd.stage)."""

import torch

from brainrecon.models import resolve_device
from brainrecon.reconstruct.cnd import Phase1Settings, train_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    inp, out, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    train_subject(
        dict(inp.items()),
        {"encoder": out.encoder, "loss": out.loss, "embeddings": out.embeddings},
        Phase1Settings(**p.settings, checkpoint_every=int(p.checkpoint_every)),
        checkpoint_dir=p.checkpoint_dir,
        subject=snakemake.wildcards.subject,  # noqa: F821
        device=str(resolve_device(p.device)),
    )
