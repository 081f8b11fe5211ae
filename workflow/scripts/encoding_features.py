"""Features of one encoding space (zc_s<strength> / unet_<block>_t<step>) for one subject (thin: see
brainrecon.features.encoding_spaces)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for the hub

import torch

from brainrecon.features.encoding_spaces import extract_encoding_features
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    torch.set_num_threads(max(1, int(snakemake.threads)))  # noqa: F821
    extract_encoding_features(
        p.space,
        snakemake.output[0],  # noqa: F821
        stimuli_csv=inp.stimuli,
        brick_path=inp.brick,
        model_folder=inp.model,
        c_features=inp.c,
        options=dict(p.options),
        batch_size=int(p.batch_size),
        device=p.device,
        dtype=p.dtype,
        model_source=p.model_source,
    )
