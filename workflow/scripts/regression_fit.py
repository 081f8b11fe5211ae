"""Fit one feature space for one subject (thin: see brainrecon.regression.stage)."""

from brainrecon.nsd.rois import roi_patterns
from brainrecon.regression.plan import SpaceFit
from brainrecon.regression.stage import fit_space
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    extra = None
    if p.roi_optimal:
        extra = {f"roi_{k}": v for k, v in roi_patterns(inp.prepared, p.roi_optimal).items()}
    fit_space(inp.prepared, inp.features, snakemake.output[0], SpaceFit(**p.settings), extra_patterns=extra)  # noqa: F821
