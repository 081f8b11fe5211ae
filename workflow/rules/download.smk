# Raw inputs: the real NSD bucket + COCO captions (download, local rules: compute nodes may
# have no internet), or the synthetic NSD written with the very same layout (synth).

if config["nsd"]["source"] == "synthetic":

    rule synth_nsd:
        output:
            nsd_plan.raw_files(config) + nsd_plan.synth_extra_files(config),
            coco=nsd_plan.coco_caption_paths(config),
            planted=f"{config['nsd']['root']}/{nsd_plan.PLANTED_FILE}",
        log:
            "logs/synth/synth_nsd.log",
        benchmark:
            "benchmarks/synth/synth_nsd.tsv"
        conda:
            "../../envs/base.yaml"
        params:
            **config["synth"],
            subjects=[int(s) for s in SUBJECTS],
            sessions=config["nsd"]["sessions"],
        script:
            "../scripts/synth_nsd.py"

else:

    # Params given as functions of `output` are ignored by Snakemake's params rerun trigger:
    # where a file comes from (bucket or a mirror) and how hard we try (retries, back-off,
    # timeout) do not change its content, so changing them must not re-download the raw data
    # and rerun everything downstream (tests/test_download.py checks this).

    rule download_nsd_file:
        output:
            f"{config['nsd']['root']}/{{key}}",
        log:
            "logs/download/{key}.log",
        wildcard_constraints:
            key=r"nsddata(_betas|_stimuli)?/.+",
        retries: 0  # brainrecon.nsd.download retries (back-off, resume) itself
        localrule: True
        conda:
            "../../envs/base.yaml"
        params:
            base_url=lambda wildcards, output: config["nsd"]["base_url"],
            key="{key}",
            retries=lambda wildcards, output: config["nsd"]["download"]["retries"],
            backoff_s=lambda wildcards, output: config["nsd"]["download"]["backoff_s"],
            timeout_s=lambda wildcards, output: config["nsd"]["download"]["timeout_s"],
        script:
            "../scripts/download_nsd_file.py"

    rule download_coco_captions:
        output:
            nsd_plan.coco_caption_paths(config),
        log:
            "logs/download/coco_captions.log",
        retries: 0
        localrule: True
        conda:
            "../../envs/base.yaml"
        params:
            url=lambda wildcards, output: config["nsd"]["coco_url"],
            retries=lambda wildcards, output: config["nsd"]["download"]["retries"],
            backoff_s=lambda wildcards, output: config["nsd"]["download"]["backoff_s"],
            timeout_s=lambda wildcards, output: config["nsd"]["download"]["timeout_s"],
        script:
            "../scripts/download_coco.py"
