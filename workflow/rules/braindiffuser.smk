# Brain-Diffuser reconstruction (GPU): one job per variant × subject (01.. or avg = subject average),
# plus the ROI-optimal images of each subject. Library: brainrecon.reconstruct.braindiffuser (plan: which
# regression outputs, models and settings each variant reads — e.g. only_vdvae reads no CLIP prediction
# and no VD model, so a new CLIP alpha or guidance_scale does not rerun it).
# Outputs per folder (docs/DATA_PRODUCTS.md "reconstruct"): images.h5 (file) and png/ (directory), both
# written under temporary names and renamed only when the whole job succeeded.
from brainrecon.reconstruct.braindiffuser import plan as braindiffuser_plan

BD = config["methods"]["braindiffuser"]


rule reconstruct_braindiffuser:
    input:
        unpack(
            lambda wildcards: braindiffuser_plan.inputs(
                config, wildcards.variant, wildcards.subject
            )
        ),
    output:
        h5=f"{braindiffuser_plan.OUT}/{{variant}}/subj{{subject}}/images.h5",
        png=directory(f"{braindiffuser_plan.OUT}/{{variant}}/subj{{subject}}/png"),
    log:
        f"logs/reconstruct/braindiffuser/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/reconstruct/braindiffuser/{{variant}}/subj{{subject}}.tsv"
    wildcard_constraints:
        variant="|".join(braindiffuser_plan.VARIANTS),
        subject=r"\d\d|avg",
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 24000 * attempt,
        runtime=lambda wildcards, attempt: (
            60 if wildcards.variant == "only_vdvae" else 360
        )
        * attempt,
    params:
        settings=lambda wildcards: braindiffuser_plan.variant_settings(
            wildcards.variant, BD
        ),
        prediction_keys=lambda wildcards: {
            s: braindiffuser_plan.prediction_key(config, s)
            for s in braindiffuser_plan.variant_spec(wildcards.variant).needs
        },
        # a function of `output`: not a rerun trigger (every image has its own generators)
        batch_size=lambda wildcards, output: BD["batch_size"],
        device=config["models"]["device"],
        dtype=lambda wildcards: braindiffuser_plan.vd_dtype(config, wildcards.variant),
    script:
        "../scripts/braindiffuser_reconstruct.py"


rule reconstruct_braindiffuser_roi:
    input:
        unpack(
            lambda wildcards: braindiffuser_plan.roi_inputs(config, wildcards.subject)
        ),
    output:
        h5=f"{braindiffuser_plan.OUT}/roi/subj{{subject}}/images.h5",
        png=directory(f"{braindiffuser_plan.OUT}/roi/subj{{subject}}/png"),
    log:
        "logs/reconstruct/braindiffuser/roi/subj{subject}.log",
    benchmark:
        "benchmarks/reconstruct/braindiffuser/roi/subj{subject}.tsv"
    wildcard_constraints:
        subject=r"\d\d|avg",
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 24000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        settings=braindiffuser_plan.roi_settings(BD),
        batch_size=lambda wildcards, output: BD["batch_size"],
        rois=BD["roi_optimal"],
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/braindiffuser_roi.py"
