# Brain-Diffuser reconstruction (GPU): one job per variant × subject (01.. or avg = subject average),
# plus the ROI-optimal images of each subject. Library: brainrecon.reconstruct.braindiffuser.
# Outputs per folder (docs/DATA_PRODUCTS.md "reconstruct"): images.h5 (file) and png/ (directory), both
# written under temporary names and renamed only when the whole job succeeded.
# Each variant reads only the regression outputs / models / settings it uses
# (brainrecon.reconstruct.variants): e.g. only_vdvae reads no CLIP prediction and no VD model, so a new
# CLIP alpha or guidance_scale does not rerun it.
from brainrecon.reconstruct.variants import (
    SPACES as BD_SPACES,
    VARIANTS as BD_VARIANTS,
    roi_settings as bd_roi_settings,
    variant_settings as bd_variant_settings,
    variant_spec as bd_variant_spec,
)

BD_OUT = "results/reconstruct/braindiffuser"


def bd_config():
    return config["methods"]["braindiffuser"]


def braindiffuser_subjects():
    """Subjects reconstructed: the configured ones, plus "avg" when subject_average is on."""
    return list(SUBJECTS) + (["avg"] if bd_config()["subject_average"] else [])


def bd_regression_file(space, subject):
    """Regression output of a space for a subject; "avg" -> subjavg.h5 (rule regression_subject_average)."""
    return f"results/regression/{space}/subj{subject}.h5"


def braindiffuser_inputs(wildcards):
    """Inputs of one variant × subject: only the regression outputs and model folders it reads."""
    spec = bd_variant_spec(wildcards.variant)
    inputs = {
        space: bd_regression_file(space, wildcards.subject) for space in spec.needs
    }
    if spec.needs_vdvae_model:
        inputs["vdvae_model"] = model_dir("vdvae")
    if spec.needs_vd_model:
        inputs["vd_model"] = model_dir("vd")
    return inputs


def braindiffuser_roi_inputs(wildcards):
    """ROI-optimal inputs: the three regression outputs (extra/roi_*), the features files whose
    training rows give the target norms (the subject's own; every subject's for "avg"), both models.
    """
    s = wildcards.subject
    feature_subjects = list(SUBJECTS) if s == "avg" else [s]
    inputs = {space: bd_regression_file(space, s) for space in BD_SPACES}
    for space in BD_SPACES:
        inputs[f"features_{space}"] = [
            f"results/features/{space}/subj{x}.h5" for x in feature_subjects
        ]
    inputs["vdvae_model"] = model_dir("vdvae")
    inputs["vd_model"] = model_dir("vd")
    return inputs


def bd_vd_dtype(wildcards):
    """models.dtype for variants that run VD (VDVAE always runs float32: no rerun on a dtype change)."""
    return (
        config["models"]["dtype"]
        if bd_variant_spec(wildcards.variant).stage2
        else "float32"
    )


def braindiffuser_targets():
    """Every Brain-Diffuser output folder's images.h5: variants × subjects (+ avg), ROI-optimal folders."""
    bd = bd_config()
    if not bd["enabled"]:
        return []
    subjects = braindiffuser_subjects()
    targets = expand(
        f"{BD_OUT}/{{variant}}/subj{{subject}}/images.h5",
        variant=bd["variants"],
        subject=subjects,
    )
    if bd["roi_optimal"]:
        targets += expand(f"{BD_OUT}/roi/subj{{subject}}/images.h5", subject=subjects)
    return targets


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
        gpu=1,
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
        gpu=1,
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
