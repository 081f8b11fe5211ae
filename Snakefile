# brainrecon: from raw NSD to reconstructions, encoding maps, tables, figures and a report.
# Run: snakemake --cores all --configfile config/config.yaml  (see README.md)
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# Defaults: the repo's config/config.yaml (real NSD); --configfile FILE overrides keys.
configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    subject=r"\d\d",
    voxels=r"nsdgeneral|brainmask",


include: "workflow/rules/download.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/regression.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/takagi.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/encoding.smk"


rule all:
    default_target: True
    input:
        raw_targets(),
        prepare_targets(),
        braindiffuser_targets(),
        takagi_targets(),
        evaluate_targets(),
        report_targets(),
        encoding_targets(),


rule raw_all:
    input:
        raw_targets(),


rule prepare_all:
    input:
        prepare_targets(),


rule reconstruct_all:
    input:
        braindiffuser_targets(),
        takagi_targets(),
