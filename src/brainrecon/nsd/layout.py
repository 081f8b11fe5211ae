"""The Natural Scenes Dataset's remote layout: bucket keys, label tables, known shapes.

Every path the pipeline reads from a raw NSD tree is spelled here once; the download
rules, the synthetic generator and the readers all use these functions, so the
synthetic tree and the real bucket share one layout.

Keys are relative to the bucket root (``https://natural-scenes-dataset.s3.amazonaws.com/``).
Subjects are given as ints (1..8) or zero-padded strings ("01").
"""

from __future__ import annotations

BUCKET_URL = "https://natural-scenes-dataset.s3.amazonaws.com/"
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"

#: all subjects NSD has
ALL_SUBJECTS = (1, 2, 3, 4, 5, 6, 7, 8)
#: the subjects who completed all 40 sessions and that the papers use
PAPER_SUBJECTS = (1, 2, 5, 7)

#: number of NSD scan sessions each subject completed
SESSIONS_PER_SUBJECT = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}

#: func1pt8mm volume shapes (X, Y, Z) of the real data
FUNC1PT8MM_SHAPES = {1: (81, 104, 83), 2: (82, 106, 84), 5: (79, 97, 78), 7: (78, 95, 81)}
#: nsdgeneral voxel counts of the real data
NSDGENERAL_COUNTS = {1: 15724, 2: 14278, 5: 13039, 7: 12682}

#: ROI files in ``ppdata/subjXX/func1pt8mm/roi/`` (values: -1 invalid, 0 outside, 1..N label)
ROI_NAMES = (
    "nsdgeneral",
    "prf-visualrois",
    "prf-eccrois",
    "floc-faces",
    "floc-words",
    "floc-places",
    "floc-bodies",
    "streams",
)

#: label tables (value -> name), as in the NSD ``<name>.mgz.ctab`` files
LABEL_TABLES: dict[str, dict[int, str]] = {
    "nsdgeneral": {1: "nsdgeneral"},
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "prf-eccrois": {1: "ecc0pt5", 2: "ecc1", 3: "ecc2", 4: "ecc4", 5: "ecc4+"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "streams": {
        1: "early",
        2: "midventral",
        3: "midlateral",
        4: "midparietal",
        5: "ventral",
        6: "lateral",
        7: "parietal",
    },
}

#: anatomy volumes in ``ppdata/subjXX/func1pt8mm/``
ANATOMY_NAMES = ("mean", "brainmask", "T1_to_func1pt8mm")

BETAS_VERSION = "betas_fithrf_GLMdenoise_RR"


def subj_str(subject: int | str) -> str:
    """``1`` / ``"1"`` / ``"01"`` -> ``"subj01"``."""
    s = int(subject)
    if s not in ALL_SUBJECTS:
        raise ValueError(f"NSD has no subject {subject!r} (subjects are 1..8)")
    return f"subj{s:02d}"


def expdesign_key() -> str:
    return "nsddata/experiments/nsd/nsd_expdesign.mat"


def stim_info_key(ext: str = "csv") -> str:
    if ext not in ("csv", "pkl"):
        raise ValueError(f"stim info comes as csv or pkl, not {ext!r}")
    return f"nsddata/experiments/nsd/nsd_stim_info_merged.{ext}"


def stimuli_key() -> str:
    return "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"


def betas_key(subject: int | str, session: int, fmt: str = "nii.gz") -> str:
    """Per-session betas: ``fmt`` is ``nii.gz`` (X,Y,Z,T int16) or ``hdf5`` (``/betas`` T,Z,Y,X)."""
    if fmt not in ("nii.gz", "hdf5"):
        raise ValueError(f"betas come as nii.gz or hdf5, not {fmt!r}")
    session = int(session)
    if not 1 <= session <= 40:
        raise ValueError(f"NSD sessions are 1..40, not {session}")
    return (
        f"nsddata_betas/ppdata/{subj_str(subject)}/func1pt8mm/{BETAS_VERSION}/"
        f"betas_session{session:02d}.{fmt}"
    )


def roi_key(subject: int | str, name: str) -> str:
    if name not in ROI_NAMES:
        raise ValueError(f"unknown NSD ROI {name!r}; known: {', '.join(ROI_NAMES)}")
    return f"nsddata/ppdata/{subj_str(subject)}/func1pt8mm/roi/{name}.nii.gz"


def ctab_key(subject: int | str, name: str) -> str:
    if name not in ROI_NAMES:
        raise ValueError(f"unknown NSD ROI {name!r}; known: {', '.join(ROI_NAMES)}")
    return f"nsddata/freesurfer/{subj_str(subject)}/label/{name}.mgz.ctab"


def fsaverage_ctab_key(name: str) -> str:
    """The fsaverage copy of a label table (the same table; third-party readers such as nsd_access read it)."""
    if name not in ROI_NAMES:
        raise ValueError(f"unknown NSD ROI {name!r}; known: {', '.join(ROI_NAMES)}")
    return f"nsddata/freesurfer/fsaverage/label/{name}.mgz.ctab"


def responses_key(subject: int | str) -> str:
    return f"nsddata/ppdata/{subj_str(subject)}/behav/responses.tsv"


def anatomy_key(subject: int | str, name: str) -> str:
    if name not in ANATOMY_NAMES:
        raise ValueError(f"unknown anatomy volume {name!r}; known: {', '.join(ANATOMY_NAMES)}")
    return f"nsddata/ppdata/{subj_str(subject)}/func1pt8mm/{name}.nii.gz"


#: COCO caption files, relative to the COCO root (extracted from annotations_trainval2017.zip)
COCO_CAPTION_FILES = ("annotations/captions_train2017.json", "annotations/captions_val2017.json")


def shared_keys() -> list[str]:
    """Keys every subject needs (experiment design, stimulus info, stimuli)."""
    return [expdesign_key(), stim_info_key("csv"), stimuli_key()]


def subject_keys(subject: int | str, sessions, betas_fmt: str = "nii.gz") -> list[str]:
    """Keys one subject needs: betas of the given sessions, every ROI + ctab, responses, anatomy."""
    keys = [betas_key(subject, s, betas_fmt) for s in sessions]
    keys += [roi_key(subject, n) for n in ROI_NAMES]
    keys += [ctab_key(subject, n) for n in ROI_NAMES]
    keys.append(responses_key(subject))
    keys += [anatomy_key(subject, n) for n in ANATOMY_NAMES]
    return keys
