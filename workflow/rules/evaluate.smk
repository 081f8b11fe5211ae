# One metric suite for every method (brainrecon.evaluate): per method × variant × subject (01.. or avg),
# reconstructions (images.h5) vs the NSD ground truth read lazily from the imgBrick, the same nets, the
# same preprocessing convention and the same test split for all. Outputs (docs/DATA_PRODUCTS.md,
# "evaluate"): results/evaluate/{method}/{variant}/subj{subject}.csv (one row: ids, convention,
# n_images, n_samples, metric columns), its _excl-<tag> twin when evaluate.exclude is set, and a
# per-image CSV. Targets, inputs and settings: brainrecon.evaluate.plan (no torch at parse time).
from brainrecon.evaluate import plan as evaluate_plan
from brainrecon.reconstruct import plan as reconstruct_plan

EVAL = config["evaluate"]
EVAL_WEIGHTS = evaluate_plan.weights(config)
EVAL_NETS = evaluate_plan.nets_needed(config)


if EVAL_WEIGHTS == "pretrained" and set(EVAL_NETS) - {"clip"}:

    # torchvision AlexNet / Inception-v3 / EfficientNet-B1 and SwAV ResNet-50 weight files (needs
    # internet: a local rule, run once); CLIP comes from the models' clip folder (rule fetch_models).
    rule evaluate_fetch_nets:
        output:
            directory(evaluate_plan.evalnets_dir(config)),
        log:
            "logs/evaluate/fetch_evalnets.log",
        retries: 0  # download_file retries itself
        localrule: True
        conda:
            "../../envs/base.yaml"
        params:
            nets=[n for n in EVAL_NETS if n != "clip"],
            members=evaluate_plan.EvalSettings.from_section(EVAL).net_weights(),
            retries=config["nsd"]["download"]["retries"],
            backoff_s=config["nsd"]["download"]["backoff_s"],
            timeout_s=config["nsd"]["download"]["timeout_s"],
        script:
            "../scripts/evaluate_fetch_nets.py"


# Params that change the numbers are constants (Snakemake's params trigger reruns on them);
# batch_size and device are functions of `output`, which the trigger ignores: batching does not change
# the values and "auto" vs "cuda" is the same device.
rule evaluate_recon:
    input:
        unpack(
            lambda wildcards: evaluate_plan.inputs(
                config, wildcards.method, wildcards.variant, wildcards.subject
            )
        ),
    output:
        **evaluate_plan.outputs(config),
    log:
        f"logs/evaluate/{{method}}/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/evaluate/{{method}}/{{variant}}/subj{{subject}}.tsv"
    wildcard_constraints:
        method="|".join(reconstruct_plan.METHODS),
        variant=r"[A-Za-z0-9+-]+(_[A-Za-z0-9+-]+)*",
        subject=r"\d\d|avg",
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 32000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        ids=lambda wildcards: {
            "method": wildcards.method,
            "variant": wildcards.variant,
            "subject": wildcards.subject,
            "weights": EVAL_WEIGHTS,
        },
        settings=lambda wildcards: evaluate_plan.rule_settings(config, wildcards.method),
        model_seed=config["models"]["seed"],
        dtype=models_plan.compute_dtype(config["models"]),
        batch_size=lambda wildcards, output: EVAL["batch_size"],
        device=lambda wildcards, output: config["models"]["device"],
    script:
        "../scripts/evaluate_recon.py"
