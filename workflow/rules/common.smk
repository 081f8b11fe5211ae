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
        raise ValueError(f"config key regression.spaces.{space}.alphas: missing (required)")
    return s


def roi_optimal_for(space):
    """ROI-optimal pattern names to predict along with a Brain-Diffuser space's test set."""
    bd = config["methods"]["braindiffuser"]
    if space in BRAINDIFFUSER_SPACES and bd["enabled"]:
        return list(bd["roi_optimal"])
    return []
