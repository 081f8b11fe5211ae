# Takagi & Nishimoto reconstruction (GPU): one job per variant × subject, plus the decoded inputs of +T
# (captions) and +D (depth maps) per subject. Library: brainrecon.reconstruct.takagi.
# Outputs (docs/DATA_PRODUCTS.md "reconstruct"): results/reconstruct/takagi/{variant}/subjXX/images.h5 + png/;
# decoded inputs: results/reconstruct/takagi/decoded/subjXX_captions.csv, subjXX_depth.h5 (+ subjXX_depth_png/).
# Each variant reads only the regression outputs / models / settings it uses
# (brainrecon.reconstruct.takagi_variants): e.g. "c" reads no z prediction and ignores strength.
# The control analysis without LAION-overlapping test images is evaluate.exclude (evaluation stage).
from brainrecon.reconstruct.takagi_variants import (
    VARIANTS as TN_VARIANTS,
    caption_settings as tn_caption_settings,
    variant_settings as tn_variant_settings,
    variant_spec as tn_variant_spec,
)

TN_OUT = "results/reconstruct/takagi"


def tn_config():
    return config["methods"]["takagi"]


def tn_prediction_key(space):
    """Regression output dataset the method reads: re-standardised predictions only if that space's
    regression was configured to re-standardise (Takagi: no, raw ridge predictions)."""
    return "pred_restd" if regression_settings(space)["restandardise"] else "pred"


def tn_regression_file(space, subject):
    return f"results/regression/{space}/subj{subject}.h5"


def takagi_inputs(wildcards):
    """Inputs of one variant × subject: only the regression outputs, decoded inputs and models it reads."""
    spec = tn_variant_spec(wildcards.variant)
    s = wildcards.subject
    inputs = {space: tn_regression_file(space, s) for space in spec.needs if space in ("sdz", "sdc")}
    if "captions" in spec.needs:
        inputs["captions"] = f"{TN_OUT}/decoded/subj{s}_captions.csv"
    if "depth" in spec.needs:
        inputs["depth"] = f"{TN_OUT}/decoded/subj{s}_depth.h5"
        inputs["sd2_model"] = model_dir("sd2_depth")
    inputs["sd_model"] = model_dir("sd")  # img2img, or decoding predicted z for td
    return inputs


def takagi_prediction_keys(wildcards):
    spec = tn_variant_spec(wildcards.variant)
    return {space: tn_prediction_key(space) for space in spec.needs if space in ("sdz", "sdc")}


def takagi_targets():
    """Every Takagi output folder's images.h5: configured variants × subjects."""
    tn = tn_config()
    if not tn["enabled"]:
        return []
    return expand(f"{TN_OUT}/{{variant}}/subj{{subject}}/images.h5", variant=tn["variants"], subject=SUBJECTS)


rule takagi_captions:
    input:
        blip=tn_regression_file("blip", "{subject}"),
        blip_model=model_dir("blip"),
    output:
        f"{TN_OUT}/decoded/subj{{subject}}_captions.csv",
    params:
        caption=lambda wildcards: tn_caption_settings(tn_config()),
        prediction_key=lambda wildcards: tn_prediction_key("blip"),
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    log:
        "logs/reconstruct/takagi/decoded/subj{subject}_captions.log",
    benchmark:
        "benchmarks/reconstruct/takagi/decoded/subj{subject}_captions.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/base.yaml"
    script:
        "../scripts/reconstruct_takagi_captions.py"


rule takagi_depth:
    input:
        dpt=tn_regression_file("dpt", "{subject}"),
        dpt_model=model_dir("dpt"),
        sd2_model=model_dir("sd2_depth"),
    output:
        h5=f"{TN_OUT}/decoded/subj{{subject}}_depth.h5",
        png=directory(f"{TN_OUT}/decoded/subj{{subject}}_depth_png"),
    params:
        image_size=lambda wildcards: tn_config()["image_size"],
        prediction_key=lambda wildcards: tn_prediction_key("dpt"),
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    log:
        "logs/reconstruct/takagi/decoded/subj{subject}_depth.log",
    benchmark:
        "benchmarks/reconstruct/takagi/decoded/subj{subject}_depth.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 32000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/base.yaml"
    script:
        "../scripts/reconstruct_takagi_depth.py"


# batch_size is a function of `output` (not a rerun trigger): every sample has its own generator.
rule reconstruct_takagi:
    input:
        unpack(takagi_inputs),
    output:
        h5=f"{TN_OUT}/{{variant}}/subj{{subject}}/images.h5",
        png=directory(f"{TN_OUT}/{{variant}}/subj{{subject}}/png"),
    wildcard_constraints:
        variant="|".join(TN_VARIANTS),
    params:
        settings=lambda wildcards: tn_variant_settings(wildcards.variant, tn_config()),
        prediction_keys=takagi_prediction_keys,
        batch_size=lambda wildcards, output: tn_config()["batch_size"],
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    log:
        f"logs/reconstruct/takagi/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/reconstruct/takagi/{{variant}}/subj{{subject}}.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 24000 * attempt,
        runtime=lambda wildcards, attempt: 480 * attempt,
    conda:
        "../../envs/base.yaml"
    script:
        "../scripts/reconstruct_takagi.py"
