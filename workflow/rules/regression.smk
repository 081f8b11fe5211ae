# One ridge for every feature space: per subject × space, prepared betas → test predictions
# (+ ROI-optimal patterns for Brain-Diffuser spaces); subject average of the predictions.
# Plan: brainrecon.regression.plan (settings per space: regression.spaces.<space>, schema defaults).
from brainrecon.reconstruct.braindiffuser import plan as braindiffuser_plan
from brainrecon.regression import plan as regression_plan


rule regression_fit:
    input:
        unpack(
            lambda wildcards: regression_plan.inputs(
                config, wildcards.space, wildcards.subject
            )
        ),
    output:
        regression_plan.REGRESSION,
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
        settings=lambda wildcards: regression_plan.space_settings(
            config, wildcards.space
        ),
        roi_optimal=lambda wildcards: braindiffuser_plan.roi_optimal_for(
            config, wildcards.space
        ),
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
