# CnD (Sun, Li, Moens 2023), Phase 1: per subject, the double-contrastive masked fMRI encoder trained on the
# single training trials of a prepared voxel set (GPU when models.device is not cpu). Outputs
# (docs/DATA_PRODUCTS.md "cnd"): encoder/ (config.json + model.safetensors), loss.csv, embeddings.h5; the
# checkpoint folder beside them is not an output, so a killed job resumes from it when Snakemake reruns it.
# Plan: brainrecon.reconstruct.cnd.plan.
from brainrecon.reconstruct.cnd import plan as cnd_plan

CND = config["methods"]["cnd"]


rule cnd_phase1:
    input:
        unpack(lambda wildcards: cnd_plan.phase1_inputs(config, wildcards.subject)),
    output:
        encoder=directory(cnd_plan.phase1_outputs()["encoder"]),
        loss=cnd_plan.phase1_outputs()["loss"],
        embeddings=cnd_plan.phase1_outputs()["embeddings"],
    log:
        "logs/reconstruct/cnd/phase1/subj{subject}.log",
    benchmark:
        "benchmarks/reconstruct/cnd/phase1/subj{subject}.tsv"
    wildcard_constraints:
        subject=r"\d\d",
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 32000 * attempt,
        runtime=lambda wildcards, attempt: 1440 * attempt,
    params:
        settings={
            k: v
            for k, v in cnd_plan.phase1_settings(config).items()
            if k not in cnd_plan.NOT_RESULTS
        },
        # a function of `output`: not a rerun trigger (checkpoints do not change the weights)
        checkpoint_every=lambda wildcards, output: CND["phase1"]["checkpoint_every"],
        checkpoint_dir=lambda wildcards: cnd_plan.checkpoint_dir(wildcards.subject),
        device=config["models"]["device"],
    script:
        "../scripts/cnd_phase1.py"


rule cnd_loss_figure:
    input:
        [cnd_plan.phase1_outputs(s)["loss"] for s in SUBJECTS],
    output:
        report(
            cnd_plan.LOSS_FIGURE,
            caption="../report/cnd_loss.rst",
            category="CnD",
        ),
    log:
        "logs/report/cnd_phase1_loss.log",
    localrule: True
    conda:
        "../../envs/base.yaml"
    params:
        labels=[f"subject {s}" for s in SUBJECTS],
        dpi=config["report"]["dpi"],
    script:
        "../scripts/cnd_loss_figure.py"
