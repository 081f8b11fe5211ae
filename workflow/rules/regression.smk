# One ridge for every feature space: per subject × space, prepared betas → test predictions
# (+ ROI-optimal patterns for Brain-Diffuser spaces); subject average of the predictions.


rule regression_fit:
    input:
        prepared="results/prepared/nsdgeneral/subj{subject}.h5",
        features="results/features/{space}/subj{subject}.h5",
    output:
        "results/regression/{space}/subj{subject}.h5",
    log:
        "logs/regression/{space}/subj{subject}.log",
    benchmark:
        "benchmarks/regression/{space}/subj{subject}.tsv"
    conda:
        "../../envs/base.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=lambda wildcards: int(config["regression"]["backend"] == "torch_cuda"),
    params:
        space_settings=lambda wildcards: regression_settings(wildcards.space),
        backend=config["regression"]["backend"],
        target_batch=config["regression"]["target_batch"],
        cv=config["regression"]["cv"],
        roi_optimal=lambda wildcards: roi_optimal_for(wildcards.space),
    script:
        "../scripts/regression_fit.py"


rule regression_subject_average:
    input:
        expand("results/regression/{{space}}/subj{subject}.h5", subject=SUBJECTS),
    output:
        "results/regression/{space}/subjavg.h5",
    log:
        "logs/regression/{space}/subjavg.log",
    conda:
        "../../envs/base.yaml"
    script:
        "../scripts/regression_average.py"
