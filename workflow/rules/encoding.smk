# Voxelwise encoding models (Takagi & Nishimoto CVPR 2023, "Encoding"; brainrecon.encoding.stage): per
# voxel set × feature space × subject, PCA of the features (fit on the training images) -> ridge with CV
# alphas -> Pearson r on the repetition-averaged test betas, one-sided Gaussian-null p, BH-FDR; r and
# significance NIfTI maps in func1pt8mm, per-ROI tables; then one ROI CSV per voxel set, slice mosaics
# over the mean EPI and r-by-ROI figures for the report.
#
# Feature spaces: z = sdz and c = sdc, zc_s<strength> and unet_<block>_t<step> (brainrecon.features.plan;
# rule features writes them like every other space, reading the images and the subject's sdc file: c
# conditions the img2img). Plan (targets, settings, figures): brainrecon.encoding.plan.
# Outputs: results/encoding/{voxels}/{space}/subj{subject}{.h5,_r.nii.gz,_sig.nii.gz,_rois.csv,_mosaic.png},
# results/encoding/{voxels}/roi_summary.csv, results/encoding/{voxels}/figures/r_by_roi_{figure}.png.
from brainrecon.encoding import plan as encoding_plan

ENC = config["encoding"]
ENC_OUT = encoding_plan.ENCODING_OUT
ENC_SPACES = encoding_plan.space_names(ENC)
# every setting that changes a map's statistics (params: changing one reruns the fits)
ENC_FIT_SETTINGS = encoding_plan.fit_settings(config)


rule encoding_all:
    input:
        encoding_plan.targets(config, SUBJECTS),


rule encoding_fit:
    input:
        prepared="results/prepared/{voxels}/subj{subject}.h5",
        features="results/features/{space}/subj{subject}.h5",
    output:
        h5=f"{ENC_OUT}/{{voxels}}/{{space}}/subj{{subject}}.h5",
        r=f"{ENC_OUT}/{{voxels}}/{{space}}/subj{{subject}}_r.nii.gz",
        sig=f"{ENC_OUT}/{{voxels}}/{{space}}/subj{{subject}}_sig.nii.gz",
        rois=f"{ENC_OUT}/{{voxels}}/{{space}}/subj{{subject}}_rois.csv",
    log:
        f"logs/encoding/{{voxels}}/{{space}}/subj{{subject}}.log",
    benchmark:
        f"benchmarks/encoding/{{voxels}}/{{space}}/subj{{subject}}.tsv"
    wildcard_constraints:
        space=features_plan.SPACE_WILDCARD,
    conda:
        "../../envs/base.yaml"
    threads: 4
    resources:
        gpu=lambda wildcards: int(ENC_FIT_SETTINGS["backend"] == "torch_cuda"),
        # PCA scores without the k x D components (brainrecon.encoding.pca_scores): memory does not
        # grow with D (U-Net blocks are read in column blocks); the single-trial design dominates
        mem_mb=lambda wildcards, attempt: 32000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    params:
        space="{space}",
        subject="{subject}",
        settings=ENC_FIT_SETTINGS,
    script:
        "../scripts/encoding_fit.py"


# One job per subject and voxel set draws every space's map (one shared colour range).
rule encoding_mosaics:
    input:
        stats=expand(
            f"{ENC_OUT}/{{{{voxels}}}}/{{space}}/subj{{{{subject}}}}.h5",
            space=ENC_SPACES,
        ),
        mean_epi=lambda wildcards: nsd_plan.nsd_path(
            config, layout.anatomy_key(int(wildcards.subject), "mean")
        ),
    output:
        [
            report(
                f"{ENC_OUT}/{{voxels}}/{space}/subj{{subject}}_mosaic.png",
                caption="../report/encoding_mosaic.rst",
                category="Encoding",
                subcategory="Maps ({voxels} voxels)",
                labels={"subject": "{subject}", "space": space},
            )
            for space in ENC_SPACES
        ],
    log:
        f"logs/encoding/{{voxels}}/mosaics_subj{{subject}}.log",
    conda:
        "../../envs/base.yaml"
    params:
        spaces=ENC_SPACES,
        q=ENC["q"],
    script:
        "../scripts/encoding_mosaics.py"


rule encoding_summary:
    input:
        expand(
            f"{ENC_OUT}/{{{{voxels}}}}/{{space}}/subj{{subject}}_rois.csv",
            space=ENC_SPACES,
            subject=SUBJECTS,
        ),
    output:
        report(
            f"{ENC_OUT}/{{voxels}}/roi_summary.csv",
            caption="../report/encoding_table.rst",
            category="Encoding",
            subcategory="ROI tables",
            labels={"voxels": "{voxels}"},
        ),
    log:
        f"logs/encoding/{{voxels}}/roi_summary.log",
    localrule: True
    conda:
        "../../envs/base.yaml"
    params:
        spaces=ENC_SPACES,
    script:
        "../scripts/encoding_summary.py"


rule encoding_figure:
    input:
        f"{ENC_OUT}/{{voxels}}/roi_summary.csv",
    output:
        report(
            f"{ENC_OUT}/{{voxels}}/figures/r_by_roi_{{figure}}.png",
            caption="../report/encoding_roi.rst",
            category="Encoding",
            subcategory="Accuracy by ROI ({voxels} voxels)",
            labels={"figure": "{figure}"},
        ),
    log:
        f"logs/encoding/{{voxels}}/figure_{{figure}}.log",
    wildcard_constraints:
        figure="|".join(encoding_plan.FIGURE_NAMES),
    localrule: True
    conda:
        "../../envs/base.yaml"
    params:
        figure="{figure}",
        roi_file=ENC["figure_roi_file"],
        q=ENC["q"],
    script:
        "../scripts/encoding_figure.py"
