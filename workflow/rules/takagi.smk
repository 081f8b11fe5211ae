# Takagi & Nishimoto reconstruction (GPU): one job per variant × subject, plus the decoded inputs of +T
# (captions) and +D (depth maps) per subject. Library: brainrecon.reconstruct.takagi.
# Outputs (docs/DATA_PRODUCTS.md "reconstruct"): results/reconstruct/takagi/{variant}/subjXX/images.h5 + png/;
# decoded inputs: results/reconstruct/takagi/decoded/subjXX_captions.csv, subjXX_depth.h5 (+ subjXX_depth_png/).
# Each variant reads only the regression outputs / models / settings it uses
# (brainrecon.reconstruct.takagi_variants): e.g. "c" reads no z prediction and ignores strength.
# The control analysis without LAION-overlapping test images is evaluate.exclude (evaluation stage).


rule takagi_captions:
    input:
        blip=tn_regression_file("blip", "{subject}"),
        blip_model=model_dir("blip"),
    output:
        f"{TN_OUT}/decoded/subj{{subject}}_captions.csv",
    log:
        "logs/reconstruct/takagi/decoded/subj{subject}_captions.log",
    benchmark:
        "benchmarks/reconstruct/takagi/decoded/subj{subject}_captions.tsv"
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        caption=lambda wildcards: tn_caption_settings(tn_config()),
        prediction_key=lambda wildcards: tn_prediction_key("blip"),
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
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
    log:
        "logs/reconstruct/takagi/decoded/subj{subject}_depth.log",
    benchmark:
        "benchmarks/reconstruct/takagi/decoded/subj{subject}_depth.tsv"
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 32000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        image_size=lambda wildcards: tn_config()["image_size"],
        prediction_key=lambda wildcards: tn_prediction_key("dpt"),
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/reconstruct_takagi_depth.py"


# batch_size is a function of `output` (not a rerun trigger): every sample has its own generator.
rule reconstruct_takagi:
    input:
        unpack(takagi_inputs),
    output:
        h5=f"{TN_OUT}/{{variant}}/subj{{subject}}/images.h5",
        png=directory(f"{TN_OUT}/{{variant}}/subj{{subject}}/png"),
    log:
        f"logs/reconstruct/takagi/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/reconstruct/takagi/{{variant}}/subj{{subject}}.tsv"
    wildcard_constraints:
        variant="|".join(TN_VARIANTS),
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 24000 * attempt,
        runtime=lambda wildcards, attempt: 480 * attempt,
    params:
        settings=lambda wildcards: tn_variant_settings(wildcards.variant, tn_config()),
        prediction_keys=takagi_prediction_keys,
        batch_size=lambda wildcards, output: tn_config()["batch_size"],
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/reconstruct_takagi.py"
