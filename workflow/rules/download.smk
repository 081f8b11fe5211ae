# Raw inputs: the real NSD bucket + COCO captions (download, local rules: compute nodes may
# have no internet), or the synthetic NSD written with the very same layout (synth).

if config["nsd"]["source"] == "synthetic":

    rule synth_nsd:
        output:
            all_raw_files() + synth_extra_files(),
            coco=coco_caption_paths(),
            planted=f"{NSD_ROOT}/synthetic_planted.json",
        params:
            subjects=[int(s) for s in SUBJECTS],
            sessions=config["nsd"]["sessions"],
            **config["synth"],
        log:
            "logs/synth/synth_nsd.log",
        benchmark:
            "benchmarks/synth/synth_nsd.tsv"
        conda:
            "../../envs/base.yaml"
        script:
            "../scripts/synth_nsd.py"

else:

    rule download_nsd_file:
        output:
            f"{NSD_ROOT}/{{key}}",
        params:
            base_url=config["nsd"]["base_url"],
            key="{key}",
            retries=config["nsd"]["download"]["retries"],
            backoff_s=config["nsd"]["download"]["backoff_s"],
            timeout_s=config["nsd"]["download"]["timeout_s"],
        wildcard_constraints:
            key=r"nsddata(_betas|_stimuli)?/.+",
        log:
            "logs/download/{key}.log",
        localrule: True
        retries: 0
        conda:
            "../../envs/base.yaml"
        script:
            "../scripts/download_nsd_file.py"

    rule download_coco_captions:
        output:
            coco_caption_paths(),
        params:
            url=config["nsd"]["coco_url"],
            retries=config["nsd"]["download"]["retries"],
            backoff_s=config["nsd"]["download"]["backoff_s"],
            timeout_s=config["nsd"]["download"]["timeout_s"],
        log:
            "logs/download/coco_captions.log",
        localrule: True
        conda:
            "../../envs/base.yaml"
        script:
            "../scripts/download_coco.py"
