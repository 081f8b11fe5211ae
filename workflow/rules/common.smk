# Included first by the Snakefile: config validation, target and input functions.
# Nothing else is shared through globals.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from brainrecon.config import (
    validate_config,
    subjects as _subjects,
    sessions as _sessions,
)
from brainrecon.nsd import layout

validate_config(config)

NSD_ROOT = config["nsd"]["root"]
COCO_ROOT = config["nsd"]["coco_root"]
SUBJECTS = _subjects(config)
SESSIONS = _sessions(config)


def nsd_path(key):
    """Local path of an NSD bucket key."""
    return f"{NSD_ROOT}/{key}"


def coco_caption_paths():
    return [f"{COCO_ROOT}/{f}" for f in layout.COCO_CAPTION_FILES]


def subject_raw_inputs(wildcards):
    """Raw files one subject's preparation reads (betas, ROIs, ctabs, anatomy, design)."""
    s = int(wildcards.subject)
    fmt = config["nsd"]["betas_format"]
    return {
        "expdesign": nsd_path(layout.expdesign_key()),
        "betas": [nsd_path(layout.betas_key(s, ses, fmt)) for ses in SESSIONS],
        "rois": [nsd_path(layout.roi_key(s, n)) for n in layout.ROI_NAMES],
        "ctabs": [nsd_path(layout.ctab_key(s, n)) for n in layout.ROI_NAMES],
        "brainmask": nsd_path(layout.anatomy_key(s, "brainmask")),
    }


def all_raw_files():
    """Every raw file the configured run needs (download or synth outputs)."""
    fmt = config["nsd"]["betas_format"]
    keys = layout.shared_keys()
    for s in SUBJECTS:
        keys += layout.subject_keys(int(s), SESSIONS, fmt)
    return [nsd_path(k) for k in keys]


def raw_targets():
    """Every raw input (NSD files incl. anatomy for plotting, COCO captions)."""
    return all_raw_files() + coco_caption_paths()


def prepare_targets():
    vs = config["prepare"]["voxel_sets"]
    return expand(
        "results/prepared/{voxels}/subj{subject}.h5", voxels=vs, subject=SUBJECTS
    ) + expand("results/prepared/stimuli/subj{subject}.csv", subject=SUBJECTS)


def synth_extra_files():
    """Files synth writes beyond what the run reads: the other betas format twin."""
    other = "hdf5" if config["nsd"]["betas_format"] == "nii.gz" else "nii.gz"
    return [
        nsd_path(layout.betas_key(int(s), ses, other))
        for s in SUBJECTS
        for ses in SESSIONS
    ] + [nsd_path(layout.stim_info_key("pkl"))]


def model_dir(role):
    """Folder of a model role: fetched real weights or the tiny random-weight stand-in."""
    m = config["models"]
    root = m["root"] if m["source"] == "pretrained" else m["tiny_root"]
    return f"{root}/{role}"


def models_gpu(wildcards):
    """The `gpu` resource of a job that runs the registry's models: 1 unless models.device is
    "cpu" (a CPU run must not hold a GPU slot or land in a GPU partition)."""
    return 0 if config["models"]["device"] == "cpu" else 1


BRAINDIFFUSER_SPACES = ("vdvae", "clipvision", "cliptext")


def regression_settings(space):
    """The regression.spaces entry of a feature space (with defaults), or a clear error."""
    spaces = config["regression"]["spaces"]
    if space not in spaces:
        raise ValueError(
            f"config key regression.spaces has no entry for feature space {space!r} "
            f"(configured: {sorted(spaces)})"
        )
    s = dict(spaces[space])
    s.setdefault("train_on", "averaged")
    s.setdefault("voxels", "all")
    s.setdefault("restandardise", True)
    if "alphas" not in s:
        raise ValueError(
            f"config key regression.spaces.{space}.alphas: missing (required)"
        )
    return s


def roi_optimal_for(space):
    """ROI-optimal pattern names to predict along with a Brain-Diffuser space's test set."""
    bd = config["methods"]["braindiffuser"]
    if space in BRAINDIFFUSER_SPACES and bd["enabled"]:
        return list(bd["roi_optimal"])
    return []


# ---------------------------------------------------------------- features (input and target functions)
from brainrecon.features import SPACES, space_config_options, space_dtype, space_role
from brainrecon.features.encoding_spaces import (
    ENCODING_SPACE_RE,
    encoding_feature_options,
    encoding_model_dtype,
    is_encoding_space,
)

# {space} of the features rule: a registered feature space, or an encoding-only space (zc_s<strength>,
# unet_<block>_t<step>: img2img of the image's z conditioned on its c, see encoding.smk)
FEATURE_SPACE_WC = "|".join([re.escape(s) for s in SPACES] + [ENCODING_SPACE_RE])


def features_inputs(wildcards):
    """Stimulus index, the space's model folder, and the brick (image spaces) or captions (text
    spaces); encoding spaces also read the subject's sdc file (c conditions the img2img).
    """
    stimuli = f"results/prepared/stimuli/subj{wildcards.subject}.csv"
    if is_encoding_space(wildcards.space):
        return {
            "stimuli": stimuli,
            "brick": nsd_path(layout.stimuli_key()),
            "model": model_dir("sd"),
            "c": f"results/features/sdc/subj{wildcards.subject}.h5",
        }
    space = SPACES[wildcards.space]
    inputs = {"stimuli": stimuli, "model": model_dir(space_role(wildcards.space))}
    if space.inputs == "images":
        inputs["brick"] = nsd_path(layout.stimuli_key())
    else:
        inputs["captions"] = (
            f"results/prepared/stimuli/subj{wildcards.subject}_captions.csv"
        )
    return inputs


def features_options(wildcards):
    """The options that change a space's numbers (features.* for the registered spaces, the
    encoding.img2img / encoding.unet settings for encoding spaces)."""
    if is_encoding_space(wildcards.space):
        return encoding_feature_options(wildcards.space, config["encoding"])
    return space_config_options(wildcards.space, config["features"])


def features_dtype(wildcards):
    """Effective compute dtype of the space (see brainrecon.features.space_dtype)."""
    if is_encoding_space(wildcards.space):
        return encoding_model_dtype(config)
    return space_dtype(
        wildcards.space, config["models"]["device"], config["models"]["dtype"]
    )


def features_batch_size(wildcards):
    """Images per model call (encoding spaces: encoding.img2img.batch_size)."""
    if is_encoding_space(wildcards.space):
        return config["encoding"]["img2img"]["batch_size"]
    return config["features"]["batch_size"]


# ---------------------------------------------------------------- reconstruct (input and target functions)
from brainrecon.reconstruct.variants import (
    SPACES as BD_SPACES,
    VARIANTS as BD_VARIANTS,
    roi_settings as bd_roi_settings,
    variant_settings as bd_variant_settings,
    variant_spec as bd_variant_spec,
)

BD_OUT = "results/reconstruct/braindiffuser"


def bd_config():
    return config["methods"]["braindiffuser"]


def braindiffuser_subjects():
    """Subjects reconstructed: the configured ones, plus "avg" when subject_average is on."""
    return list(SUBJECTS) + (["avg"] if bd_config()["subject_average"] else [])


def bd_regression_file(space, subject):
    """Regression output of a space for a subject; "avg" -> subjavg.h5 (rule regression_subject_average)."""
    return f"results/regression/{space}/subj{subject}.h5"


def braindiffuser_inputs(wildcards):
    """Inputs of one variant × subject: only the regression outputs and model folders it reads."""
    spec = bd_variant_spec(wildcards.variant)
    inputs = {
        space: bd_regression_file(space, wildcards.subject) for space in spec.needs
    }
    if spec.needs_vdvae_model:
        inputs["vdvae_model"] = model_dir("vdvae")
    if spec.needs_vd_model:
        inputs["vd_model"] = model_dir("vd")
    return inputs


def braindiffuser_roi_inputs(wildcards):
    """ROI-optimal inputs: the three regression outputs (extra/roi_*), the features files whose
    training rows give the target norms (the subject's own; every subject's for "avg"), both models.
    """
    s = wildcards.subject
    feature_subjects = list(SUBJECTS) if s == "avg" else [s]
    inputs = {space: bd_regression_file(space, s) for space in BD_SPACES}
    for space in BD_SPACES:
        inputs[f"features_{space}"] = [
            f"results/features/{space}/subj{x}.h5" for x in feature_subjects
        ]
    inputs["vdvae_model"] = model_dir("vdvae")
    inputs["vd_model"] = model_dir("vd")
    return inputs


def bd_vd_dtype(wildcards):
    """models.dtype for variants that run VD (VDVAE always runs float32: no rerun on a dtype change)."""
    return (
        config["models"]["dtype"]
        if bd_variant_spec(wildcards.variant).stage2
        else "float32"
    )


def braindiffuser_targets():
    """Every Brain-Diffuser output folder's images.h5: variants × subjects (+ avg), ROI-optimal folders."""
    bd = bd_config()
    if not bd["enabled"]:
        return []
    subjects = braindiffuser_subjects()
    targets = expand(
        f"{BD_OUT}/{{variant}}/subj{{subject}}/images.h5",
        variant=bd["variants"],
        subject=subjects,
    )
    if bd["roi_optimal"]:
        targets += expand(f"{BD_OUT}/roi/subj{{subject}}/images.h5", subject=subjects)
    return targets


# ---------------------------------------------------------------- takagi (input and target functions)
from brainrecon.reconstruct.takagi_variants import (
    VARIANTS as TN_VARIANTS,
    caption_settings as tn_caption_settings,
    variant_settings as tn_variant_settings,
    variant_spec as tn_variant_spec,
)

TN_OUT = "results/reconstruct/takagi"


def tn_config():
    return config["methods"]["takagi"]


def tn_prediction_key(space):
    """Regression output dataset the method reads: re-standardised predictions only if that space's
    regression was configured to re-standardise (Takagi: no, raw ridge predictions)."""
    return "pred_restd" if regression_settings(space)["restandardise"] else "pred"


def tn_regression_file(space, subject):
    return f"results/regression/{space}/subj{subject}.h5"


def takagi_inputs(wildcards):
    """Inputs of one variant × subject: only the regression outputs, decoded inputs and models it reads."""
    spec = tn_variant_spec(wildcards.variant)
    s = wildcards.subject
    inputs = {
        space: tn_regression_file(space, s)
        for space in spec.needs
        if space in ("sdz", "sdc")
    }
    if "captions" in spec.needs:
        inputs["captions"] = f"{TN_OUT}/decoded/subj{s}_captions.csv"
    if "depth" in spec.needs:
        inputs["depth"] = f"{TN_OUT}/decoded/subj{s}_depth.h5"
        inputs["sd2_model"] = model_dir("sd2_depth")
    inputs["sd_model"] = model_dir("sd")  # img2img, or decoding predicted z for td
    return inputs


def takagi_prediction_keys(wildcards):
    spec = tn_variant_spec(wildcards.variant)
    return {
        space: tn_prediction_key(space)
        for space in spec.needs
        if space in ("sdz", "sdc")
    }


def takagi_targets():
    """Every Takagi output folder's images.h5: configured variants × subjects."""
    tn = tn_config()
    if not tn["enabled"]:
        return []
    return expand(
        f"{TN_OUT}/{{variant}}/subj{{subject}}/images.h5",
        variant=tn["variants"],
        subject=SUBJECTS,
    )


# ---------------------------------------------------------------- evaluate (input and target functions)
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


# ---------------------------------------------------------------- report (input and target functions)
import re

from brainrecon.report.targets import (
    figure_plan as report_figure_plan,
    method_plan as report_method_plan,
    table_files as report_table_files,
    table_methods as report_table_methods,
    table_names as report_table_names,
    TABLE_TITLES as REPORT_TABLE_TITLES,
)

REPORT = config["report"]
REPORT_TABLES = report_table_names(config)
REPORT_FIGURES = report_figure_plan(config)
REPORT_METHOD_ORDER = [p.method for p in report_method_plan(config)]
REPORT_VARIANT_ORDER = {p.method: list(p.variants) for p in report_method_plan(config)}
TABLE_NAMES_RE = "|".join(map(re.escape, REPORT_TABLES)) or "no_table"


def report_targets():
    """Every table and figure for the configured methods (the HTML report shows them all)."""
    return report_table_files(config) + list(REPORT_FIGURES)


def table_inputs(wildcards):
    """The evaluation CSVs a table reads: its methods' main CSVs, or their _excl-<tag> twins."""
    return evaluation_files(
        config,
        excluded=bool(getattr(wildcards, "tag", None)),
        methods=report_table_methods(wildcards.table),
    )


def figure_spec(wildcards):
    return REPORT_FIGURES[f"results/figures/{wildcards.figure}.png"]


def table_caption(wildcards, output):
    return REPORT_TABLE_TITLES[wildcards.table]
