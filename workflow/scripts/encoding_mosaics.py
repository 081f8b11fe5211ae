"""Slice mosaics (significant test r over the mean EPI) of every encoding map of one subject and voxel set."""

from brainrecon.encoding.stage import write_mosaics
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp = snakemake.input  # noqa: F821
    write_mosaics(list(inp.stats), inp.mean_epi, list(snakemake.output))  # noqa: F821
