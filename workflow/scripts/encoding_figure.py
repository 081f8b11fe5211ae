"""One r-by-ROI figure (spaces, noise levels, denoising steps or U-Net layers) from the ROI summary."""

from brainrecon.encoding.stage import encoding_figures
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p = snakemake.params  # noqa: F821
    encoding_figures(snakemake.input[0], {p.figure: snakemake.output[0]}, roi_file=p.roi_file)  # noqa: F821
