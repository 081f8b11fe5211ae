"""One voxelwise encoding map: subject × feature space × voxel set (thin: see brainrecon.encoding.stage)."""

import torch

from brainrecon.encoding.stage import fit_encoding
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, out, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    torch.set_num_threads(max(1, int(snakemake.threads)))  # noqa: F821
    s = p.settings
    fit_encoding(
        inp.prepared,
        inp.features,
        out.h5,
        out.r,
        out.sig,
        out.rois,
        space=p.space,
        subject=p.subject,
        n_components=s["n_components"],
        alphas=s["alphas"],
        cv=s["cv"],
        backend=s["backend"],
        train_on=s["train_on"],
        standardize_X=s["standardize_X"],
        q=s["q"],
        target_batch=s["target_batch"],
        roi_files=s["roi_files"],
    )
