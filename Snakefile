# brainrecon: from raw NSD to reconstructions, encoding maps, tables, figures and a report.
# Run: snakemake --cores all --configfile config/config.yaml  (see README.md)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/prepare.smk"


rule all:
    input:
        prepare_targets(),
    default_target: True
