"""Fit one feature space for one subject (thin: see brainrecon.regression.stage)."""

from brainrecon.regression.stage import fit_space
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    s = p.space_settings
    extra = None
    if p.roi_optimal:
        from brainrecon.nsd.rois import roi_patterns

        extra = {f"roi_{k}": v for k, v in roi_patterns(snakemake.input.prepared, p.roi_optimal).items()}
    fit_space(
        snakemake.input.prepared,
        snakemake.input.features,
        snakemake.output[0],
        alphas=s["alphas"],
        cv=p.cv,
        backend=p.backend,
        target_batch=p.target_batch,
        train_on=s["train_on"],
        voxels=s["voxels"],
        restandardise=s["restandardise"],
        extra_patterns=extra,
    )
