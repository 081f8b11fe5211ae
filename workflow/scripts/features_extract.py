"""Features of one subject's images in one feature space -> results/features/{space}/subjXX.h5.

Registered spaces go through brainrecon.features.extract_features; the encoding-only spaces
(zc_s<strength> / unet_<block>_t<step>) are registered first and also read the subject's sdc file.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for the hub

import torch

from brainrecon.features import extract_features
from brainrecon.features.encoding_spaces import extract_encoding_features, is_encoding_space
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    torch.set_num_threads(max(1, int(snakemake.threads)))  # noqa: F821
    common = dict(
        stimuli_csv=inp.stimuli,
        brick_path=inp.get("brick"),
        model_folder=inp.model,
        batch_size=int(p.batch_size),
        device=p.device,
        dtype=p.dtype,
        model_source=p.model_source,
    )
    if is_encoding_space(p.space):
        extract_encoding_features(
            p.space, snakemake.output[0], c_features=inp.c, options=dict(p.options), **common  # noqa: F821
        )
    else:
        extract_features(
            p.space, snakemake.output[0], captions_csv=inp.get("captions"), **common, **dict(p.options)  # noqa: F821
        )
