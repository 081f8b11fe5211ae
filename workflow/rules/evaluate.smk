# One metric suite for every method (brainrecon.evaluate): per method × variant × subject (01.. or avg),
# reconstructions (images.h5) vs the NSD ground truth read lazily from the imgBrick, the same nets, the
# same preprocessing convention and the same test split for all. Outputs (docs/DATA_PRODUCTS.md,
# "evaluate"): results/evaluate/{method}/{variant}/subj{subject}.csv (one row: ids, convention,
# n_images, n_samples, metric columns), its _excl-<tag> twin when evaluate.exclude is set, and a
# per-image CSV. Targets and inputs are listed by brainrecon.report.targets (no torch at parse time).
from brainrecon.report.targets import (
    KNOWN_METHODS as EVAL_METHODS,
    eval_nets_needed,
    evaluation_files,
    exclusion_tag as eval_exclusion_tag,
    method_plan as eval_method_plan,
)

EVAL = config["evaluate"]
# evaluation nets: tiny (seeded random, nothing to fetch) or pretrained; default follows models.source
EVAL_WEIGHTS = EVAL.get("weights") or config["models"]["source"]
if EVAL_WEIGHTS == "pretrained" and config["models"]["source"] != "pretrained":
    raise ValueError(
        "config key evaluate.weights: 'pretrained' needs models.source: pretrained "
        "(CLIP is read from the models' clip folder, model_dir('clip'))"
    )
EVAL_EXCL_TAG = eval_exclusion_tag(EVAL["exclude"]) if EVAL["exclude"] else None
EVAL_NWAY = EVAL.get("nway")
EVAL_NETS = eval_nets_needed(
    EVAL["metrics"], EVAL_NWAY, EVAL["takagi_for_samples"], eval_method_plan(config)
)
EVAL_OUT = "results/evaluate/{method}/{variant}/subj{subject}"


def evaluate_targets():
    """Every evaluation CSV of the configured methods (+ _excl-<tag> twins, + per-image CSVs)."""
    return (
        evaluation_files(config)
        + evaluation_files(config, excluded=True)
        + evaluation_files(config, per_image=True)
    )


def evaluate_inputs(wildcards):
    """images.h5, the stimulus brick, the stimulus tables defining the test split (every subject's for
    "avg"), the evaluation model folders (pretrained), the exclusion list (if any)."""
    s = wildcards.subject
    subjects = list(SUBJECTS) if s == "avg" else [s]
    inputs = {
        "images": f"results/reconstruct/{wildcards.method}/{wildcards.variant}/subj{s}/images.h5",
        "brick": nsd_path(layout.stimuli_key()),
        "stimuli": [f"results/prepared/stimuli/subj{x}.csv" for x in subjects],
    }
    if EVAL_WEIGHTS == "pretrained":
        if set(EVAL_NETS) - {"clip"}:
            inputs["evalnets"] = model_dir("evalnets")
        if "clip" in EVAL_NETS:
            inputs["clip"] = model_dir("clip")
    if EVAL["exclude"]:
        inputs["exclude"] = EVAL["exclude"]
    return inputs


def evaluate_outputs():
    out = {"csv": f"{EVAL_OUT}.csv"}
    if EVAL_EXCL_TAG:
        out["excluded"] = f"{EVAL_OUT}_{EVAL_EXCL_TAG}.csv"
    if EVAL["per_image"]:
        out["per_image"] = f"{EVAL_OUT}_images.csv"
    return out


if EVAL_WEIGHTS == "pretrained" and set(EVAL_NETS) - {"clip"}:

    # torchvision AlexNet / Inception-v3 / EfficientNet-B1 and SwAV ResNet-50 weight files (needs
    # internet: a local rule, run once); CLIP comes from the models' clip folder (rule fetch_models).
    rule evaluate_fetch_nets:
        output:
            directory(model_dir("evalnets")),
        params:
            nets=[n for n in EVAL_NETS if n != "clip"],
            retries=config["nsd"]["download"]["retries"],
            backoff_s=config["nsd"]["download"]["backoff_s"],
            timeout_s=config["nsd"]["download"]["timeout_s"],
        log:
            "logs/evaluate/fetch_evalnets.log",
        localrule: True
        retries: 0  # download_file retries itself
        conda:
            "../../envs/base.yaml"
        script:
            "../scripts/evaluate_fetch_nets.py"


# Params that change the numbers are constants (Snakemake's params trigger reruns on them);
# batch_size and device are functions of `output`, which the trigger ignores: batching does not change
# the values and "auto" vs "cuda" is the same device.
rule evaluate_recon:
    input:
        unpack(evaluate_inputs),
    output:
        **evaluate_outputs(),
    wildcard_constraints:
        method="|".join(EVAL_METHODS),
        variant=r"[A-Za-z0-9+-]+(_[A-Za-z0-9+-]+)*",
        subject=r"\d\d|avg",
    params:
        ids=lambda wildcards: {
            "method": wildcards.method,
            "variant": wildcards.variant,
            "subject": wildcards.subject,
            "weights": EVAL_WEIGHTS,
        },
        convention=EVAL["convention"],
        metrics=EVAL["metrics"],
        takagi_for_samples=EVAL["takagi_for_samples"],
        nway=EVAL_NWAY,
        seed=EVAL["seed"],
        model_seed=config["models"]["seed"],
        dtype=config["models"]["dtype"] if config["models"]["device"] != "cpu" else "float32",
        batch_size=lambda wildcards, output: EVAL["batch_size"],
        device=lambda wildcards, output: config["models"]["device"],
    log:
        f"logs/evaluate/{{method}}/{{variant}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/evaluate/{{method}}/{{variant}}/subj{{subject}}.tsv"
    threads: 4
    resources:
        gpu=lambda wildcards: 0 if config["models"]["device"] == "cpu" else 1,
        mem_mb=lambda wildcards, attempt: 32000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/base.yaml"
    script:
        "../scripts/evaluate_recon.py"
