"""One CSV of the per-ROI encoding tables of every space and subject of a voxel set."""

from brainrecon.encoding.stage import summarise_rois
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    summarise_rois(list(snakemake.input), snakemake.output[0], space_order=snakemake.params.spaces)  # noqa: F821
