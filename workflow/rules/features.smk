# Per subject and feature space: features of every image the subject saw (docs/DATA_PRODUCTS.md,
# "features"). Spaces, their model role and their options come from brainrecon.features.SPACES;
# the encoding-only spaces (zc_s<strength>, unet_<block>_t<step>) from
# brainrecon.features.encoding_spaces — one rule and one writer for all of them.


# Params that change the numbers are functions of wildcards only (Snakemake tracks those): the
# space's own options (so e.g. features.vdvae_layers reruns vdvae only) and its effective dtype.
# batch_size and device are functions of `output`, which the params trigger ignores: the features do
# not depend on batching (tests/test_features.py checks it), and "auto" vs "cuda" is the same device.
rule features:
    input:
        unpack(features_inputs),
    output:
        "results/features/{space}/subj{subject}.h5",
    log:
        "logs/features/{space}/subj{subject}.log",
    benchmark:
        "benchmarks/features/{space}/subj{subject}.tsv"
    wildcard_constraints:
        space=FEATURE_SPACE_WC,
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=models_gpu,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: (
            240 if is_encoding_space(wildcards.space) else 120
        )
        * attempt,
    params:
        space="{space}",
        options=features_options,
        dtype=features_dtype,
        model_source=config["models"]["source"],
        batch_size=lambda wildcards, output: features_batch_size(wildcards),
        device=lambda wildcards, output: config["models"]["device"],
    script:
        "../scripts/features_extract.py"
