"""Features of one subject's images in one feature space -> results/features/{space}/subjXX.h5 (thin: see
brainrecon.features.extract; the rule's inputs are brainrecon.features.plan.inputs)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for the hub

import torch

from brainrecon.features import extract_features
from brainrecon.models.plan import Runtime
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    torch.set_num_threads(max(1, int(snakemake.threads)))  # noqa: F821
    extract_features(
        p.space,
        snakemake.output[0],  # noqa: F821
        dict(inp.items()),
        dict(p.options),
        Runtime(device=p.device, dtype=p.dtype, batch_size=int(p.batch_size)),
        model_source=p.model_source,
    )
