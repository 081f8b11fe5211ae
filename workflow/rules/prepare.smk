# Per subject: trial table from the experiment design, masked/scaled/normalised betas
# streamed one session at a time, repetition averages, train/test split by shared images.


rule prepare_subject:
    input:
        unpack(subject_raw_inputs),
    output:
        "results/prepared/{voxels}/subj{subject}.h5",
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
        expdesign=nsd_path(layout.expdesign_key()),
        stim_info=nsd_path(layout.stim_info_key("csv")),
        captions=coco_caption_paths(),
    output:
        index="results/prepared/stimuli/subj{subject}.csv",
        captions="results/prepared/stimuli/subj{subject}_captions.csv",
    log:
        "logs/prepare/stimuli_subj{subject}.log",
    conda:
        "../../envs/base.yaml"
    params:
        subject="{subject}",
        sessions=config["nsd"]["sessions"],
    script:
        "../scripts/prepare_stimuli.py"
