# Per subject: trial table from the experiment design, masked/scaled/normalised betas
# streamed one session at a time, repetition averages, train/test split by shared images
# (brainrecon.nsd.prepare; paths and inputs: brainrecon.nsd.plan).
from brainrecon.nsd import layout


rule prepare_subject:
    input:
        unpack(lambda wildcards: nsd_plan.subject_raw_inputs(config, wildcards.subject)),
    output:
        nsd_plan.PREPARED,
    log:
        "logs/prepare/{voxels}/subj{subject}.log",
    benchmark:
        "benchmarks/prepare/{voxels}/subj{subject}.tsv"
    conda:
        "../../envs/base.yaml"
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        subject="{subject}",
        voxels="{voxels}",
        sessions=config["nsd"]["sessions"],
        scale=config["prepare"]["scale"],
        normalise=config["prepare"]["normalise"],
    script:
        "../scripts/prepare_subject.py"


rule prepare_stimuli:
    input:
        expdesign=nsd_plan.nsd_path(config, layout.expdesign_key()),
        stim_info=nsd_plan.nsd_path(config, layout.stim_info_key("csv")),
        captions=nsd_plan.coco_caption_paths(config),
    output:
        index=nsd_plan.STIMULI,
        captions=nsd_plan.CAPTIONS,
    log:
        "logs/prepare/stimuli_subj{subject}.log",
    conda:
        "../../envs/base.yaml"
    params:
        subject="{subject}",
        sessions=config["nsd"]["sessions"],
    script:
        "../scripts/prepare_stimuli.py"
