# Brain-Diffuser reconstruction (GPU): one job per variant × subject (01.. or avg = subject average),
# plus the ROI-optimal images of each subject. Library: brainrecon.reconstruct.braindiffuser.
# Outputs per folder (docs/DATA_PRODUCTS.md "reconstruct"): images.h5 (file) and png/ (directory), both
# written under temporary names and renamed only when the whole job succeeded.
# Each variant reads only the regression outputs / models / settings it uses
# (brainrecon.reconstruct.variants): e.g. only_vdvae reads no CLIP prediction and no VD model, so a new
# CLIP alpha or guidance_scale does not rerun it.


rule reconstruct_braindiffuser:
    input:
        unpack(braindiffuser_inputs),
    output:
        h5=f"{BD_OUT}/{{variant}}/subj{{subject}}/images.h5",
        png=directory(f"{BD_OUT}/{{variant}}/subj{{subject}}/png"),
    log:
        f"logs/reconstruct/braindiffuser/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/reconstruct/braindiffuser/{{variant}}/subj{{subject}}.tsv"
    wildcard_constraints:
        variant="|".join(BD_VARIANTS),
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
        settings=lambda wildcards: bd_variant_settings(wildcards.variant, bd_config()),
        # a function of `output`: not a rerun trigger (every image has its own generators)
        batch_size=lambda wildcards, output: bd_config()["batch_size"],
        device=config["models"]["device"],
        dtype=bd_vd_dtype,
    script:
        "../scripts/reconstruct_braindiffuser.py"


rule reconstruct_braindiffuser_roi:
    input:
        unpack(braindiffuser_roi_inputs),
    output:
        h5=f"{BD_OUT}/roi/subj{{subject}}/images.h5",
        png=directory(f"{BD_OUT}/roi/subj{{subject}}/png"),
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
        settings=bd_roi_settings(bd_config()),
        batch_size=lambda wildcards, output: bd_config()["batch_size"],
        rois=bd_config()["roi_optimal"],
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/reconstruct_braindiffuser_roi.py"
