"""One voxelwise encoding map: subject × feature space × voxel set (thin: see brainrecon.encoding.stage)."""

import torch

from brainrecon.encoding.plan import FitSettings
from brainrecon.encoding.stage import fit_encoding
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, out, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    torch.set_num_threads(max(1, int(snakemake.threads)))  # noqa: F821
    fit_encoding(inp.prepared, inp.features, {"h5": out.h5, "r": out.r, "sig": out.sig, "rois": out.rois},
                 FitSettings(**p.settings), space=p.space, subject=p.subject)
