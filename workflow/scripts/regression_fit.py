"""Fit one feature space for one subject (thin: see brainrecon.regression.stage)."""

from brainrecon.nsd.rois import roi_extra_patterns
from brainrecon.regression.plan import SpaceFit
from brainrecon.regression.stage import fit_space
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    extra = roi_extra_patterns(inp.prepared, p.roi_optimal) if p.roi_optimal else None
    fit_space(inp.prepared, inp.features, snakemake.output[0], SpaceFit(**p.settings), extra_patterns=extra)  # noqa: F821
