# Takagi & Nishimoto reconstruction (GPU): one job per variant × subject, plus the decoded inputs of +T
# (captions) and +D (depth maps) per subject. Library: brainrecon.reconstruct.takagi (plan: the inputs,
# models and settings each variant reads — e.g. "c" reads no z prediction and ignores strength).
# Outputs (docs/DATA_PRODUCTS.md "reconstruct"): results/reconstruct/takagi/{variant}/subjXX/images.h5 + png/;
# decoded inputs: results/reconstruct/takagi/decoded/subjXX_captions.csv, subjXX_depth.h5 (+ subjXX_depth_png/).
# The control analysis without LAION-overlapping test images is evaluate.exclude (evaluation stage).
from brainrecon.reconstruct.takagi import plan as takagi_plan
from brainrecon.regression.plan import regression_file

TN = config["methods"]["takagi"]


rule takagi_captions:
    input:
        blip=regression_file("blip", "{subject}"),
        blip_model=model_dir("blip"),
    output:
        takagi_plan.CAPTIONS,
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
        caption=takagi_plan.caption_settings(TN),
        prediction_key=takagi_plan.prediction_key(config, "blip"),
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/takagi_captions.py"


rule takagi_depth:
    input:
        dpt=regression_file("dpt", "{subject}"),
        dpt_model=model_dir("dpt"),
        sd2_model=model_dir("sd2_depth"),
    output:
        h5=takagi_plan.DEPTH,
        png=directory(takagi_plan.DEPTH_PNG),
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
        image_size=TN["image_size"],
        prediction_key=takagi_plan.prediction_key(config, "dpt"),
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/takagi_depth.py"


# batch_size is a function of `output` (not a rerun trigger): every sample has its own generator.
rule reconstruct_takagi:
    input:
        unpack(
            lambda wildcards: takagi_plan.inputs(
                config, wildcards.variant, wildcards.subject
            )
        ),
    output:
        h5=f"{takagi_plan.OUT}/{{variant}}/subj{{subject}}/images.h5",
        png=directory(f"{takagi_plan.OUT}/{{variant}}/subj{{subject}}/png"),
    log:
        f"logs/reconstruct/takagi/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/reconstruct/takagi/{{variant}}/subj{{subject}}.tsv"
    wildcard_constraints:
        variant="|".join(takagi_plan.VARIANTS),
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 24000 * attempt,
        runtime=lambda wildcards, attempt: 480 * attempt,
    params:
        settings=lambda wildcards: takagi_plan.variant_settings(wildcards.variant, TN),
        prediction_keys=lambda wildcards: takagi_plan.prediction_keys(
            config, wildcards.variant
        ),
        batch_size=lambda wildcards, output: TN["batch_size"],
        device=config["models"]["device"],
        dtype=config["models"]["dtype"],
    script:
        "../scripts/takagi_reconstruct.py"
