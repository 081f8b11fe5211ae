"""Features of one subject's images in one feature space -> results/features/{space}/subjXX.h5."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for the hub

import torch

from brainrecon.features import extract_features
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    torch.set_num_threads(max(1, int(snakemake.threads)))  # noqa: F821
    extract_features(
        p.space,
        snakemake.output[0],  # noqa: F821
        stimuli_csv=inp.stimuli,
        captions_csv=inp.get("captions"),
        brick_path=inp.get("brick"),
        model_folder=inp.model,
        batch_size=int(p.batch_size),
        device=p.device,
        dtype=p.dtype,
        model_source=p.model_source,
        **dict(p.options),
    )
