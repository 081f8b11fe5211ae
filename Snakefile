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
    voxels="|".join(nsd_plan.VOXEL_SETS),


include: "workflow/rules/download.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/regression.smk"
include: "workflow/rules/braindiffuser.smk"
include: "workflow/rules/takagi.smk"
include: "workflow/rules/cnd.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/encoding.smk"


from brainrecon.reconstruct import plan as reconstruct_plan


rule all:
    default_target: True
    input:
        nsd_plan.raw_targets(config),
        nsd_plan.prepare_targets(config),
        reconstruct_plan.targets(config),
        cnd_plan.targets(config),
        evaluate_plan.targets(config),
        report_plan.targets(config),
        encoding_plan.targets(config, SUBJECTS),


rule raw_all:
    input:
        nsd_plan.raw_targets(config),


rule prepare_all:
    input:
        nsd_plan.prepare_targets(config),


rule reconstruct_all:
    input:
        reconstruct_plan.targets(config),
