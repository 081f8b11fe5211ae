"""Subject average of the test predictions (thin: see brainrecon.regression.stage)."""

from brainrecon.regression.stage import average_subjects
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):
    average_subjects(list(snakemake.input), snakemake.output[0])
