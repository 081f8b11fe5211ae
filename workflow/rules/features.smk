# Per subject and feature space: features of every image the subject saw (docs/DATA_PRODUCTS.md,
# "features"). Spaces, their model role, inputs and settings come from brainrecon.features.plan — the
# fixed spaces and the encoding analysis' parametric ones (zc_s<strength>, unet_<block>_t<step>) alike:
# one rule and one writer for all of them.
from brainrecon.features import plan as features_plan


# Params that change the numbers are functions of wildcards only (Snakemake tracks those): the
# space's own settings (so e.g. features.vdvae_layers reruns vdvae only) and its effective dtype.
# batch_size and device are functions of `output`, which the params trigger ignores: the features do
# not depend on batching (tests/test_features.py checks it), and "auto" vs "cuda" is the same device.
rule features:
    input:
        unpack(
            lambda wildcards: features_plan.inputs(
                wildcards.space, wildcards.subject, config
            )
        ),
    output:
        features_plan.FEATURES,
    log:
        "logs/features/{space}/subj{subject}.log",
    benchmark:
        "benchmarks/features/{space}/subj{subject}.tsv"
    wildcard_constraints:
        space=features_plan.SPACE_WILDCARD,
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: (
            240 if features_plan.get_space(wildcards.space).reads_c else 120
        )
        * attempt,
    params:
        space="{space}",
        options=lambda wildcards: features_plan.space_options(wildcards.space, config),
        dtype=lambda wildcards: features_plan.space_dtype(
            wildcards.space, config["models"]
        ),
        model_source=config["models"]["source"],
        batch_size=lambda wildcards, output: features_plan.batch_size(
            wildcards.space, config
        ),
        device=lambda wildcards, output: config["models"]["device"],
    script:
        "../scripts/features_extract.py"
