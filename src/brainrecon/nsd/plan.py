"""The raw-data and preparation stages' plan (no torch): which raw files a config needs, where the
prepared products are. ``download.smk`` and ``prepare.smk`` read it; later stages take the prepared
paths (:data:`PREPARED`, :data:`STIMULI`, :data:`CAPTIONS`) from here.

Paths are templates with Snakemake-style ``{wildcards}``: a rule uses them as they are, other code
fills them with ``.format(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from . import layout

#: prepared betas of one voxel set and subject (brainrecon.nsd.prepare)
PREPARED = "results/prepared/{voxels}/subj{subject}.h5"
#: stimulus index (nsdId, imgBrick row, cocoId, split, repetitions) and COCO captions of one subject
STIMULI = "results/prepared/stimuli/subj{subject}.csv"
CAPTIONS = "results/prepared/stimuli/subj{subject}_captions.csv"
#: what the synthetic NSD planted, written next to its raw tree (brainrecon.synth)
PLANTED_FILE = "synthetic_planted.json"
#: prepared voxel sets: nsdgeneral; streams = every voxel with a streams label (whole volume, Takagi's ROIs);
#: brainmask = the whole brain
VOXEL_SETS = ("nsdgeneral", "streams", "brainmask")


NORMALISATIONS = ("train_zscore", "session_zscore", "none")


@dataclass(frozen=True)
class PrepareSettings:
    """How one subject's betas are prepared (the ``prepare`` config section, the voxel set, the sessions).

    voxels: ``nsdgeneral`` (nsdgeneral > 0) or ``brainmask`` (brainmask > 0); scale: raw betas are
    divided by it (300 -> percent signal change); normalise: ``train_zscore``, ``session_zscore`` or
    ``none``; sessions: int N (sessions 1..N) or a list, ``None`` = one per betas file given.
    """

    voxels: str
    scale: float
    normalise: str
    sessions: int | Sequence[int] | None

    def __post_init__(self):
        if self.voxels not in VOXEL_SETS:
            raise ValueError(f"voxels must be one of {VOXEL_SETS}, got {self.voxels!r}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")

    @classmethod
    def build(cls, voxels: str | None = None, sessions=None, **values) -> "PrepareSettings":
        """From some ``prepare`` keys, the rest the schema's defaults (voxels: the first default voxel set)."""
        from ..schema import section_settings

        prep = section_settings("prepare", values)
        return cls(voxels=voxels or prep["voxel_sets"][0], scale=float(prep["scale"]), normalise=prep["normalise"],
                   sessions=sessions)


def subjects(config: Mapping) -> list[str]:
    """Configured subjects as zero-padded strings ("01")."""
    return [f"{int(s):02d}" for s in config["nsd"]["subjects"]]


def sessions(config: Mapping) -> list[int]:
    return list(range(1, int(config["nsd"]["sessions"]) + 1))


def nsd_path(config: Mapping, key: str) -> str:
    """Local path of an NSD bucket key."""
    return f"{config['nsd']['root']}/{key}"


def coco_caption_paths(config: Mapping) -> list[str]:
    return [f"{config['nsd']['coco_root']}/{f}" for f in layout.COCO_CAPTION_FILES]


def brick(config: Mapping) -> str:
    """The stimulus brick (``imgBrick``) every image-reading stage reads."""
    return nsd_path(config, layout.stimuli_key())


def raw_files(config: Mapping) -> list[str]:
    """Every raw NSD file the configured run needs (download or synth outputs)."""
    fmt = config["nsd"]["betas_format"]
    keys = layout.shared_keys()
    for s in subjects(config):
        keys += layout.subject_keys(int(s), sessions(config), fmt)
    return [nsd_path(config, k) for k in keys]


def raw_targets(config: Mapping) -> list[str]:
    """Every raw input (NSD files incl. anatomy for plotting, COCO captions)."""
    return raw_files(config) + coco_caption_paths(config)


def synth_extra_files(config: Mapping) -> list[str]:
    """Files the synthetic NSD writes beyond what the run reads: the other betas format, the pickle, the
    fsaverage copies of the label tables."""
    other = "hdf5" if config["nsd"]["betas_format"] == "nii.gz" else "nii.gz"
    return ([nsd_path(config, layout.betas_key(int(s), ses, other))
             for s in subjects(config) for ses in sessions(config)] + [nsd_path(config, layout.stim_info_key("pkl"))]
            + [nsd_path(config, layout.fsaverage_ctab_key(n)) for n in layout.ROI_NAMES])


def subject_raw_inputs(config: Mapping, subject: str) -> dict:
    """Raw files one subject's preparation reads (betas, ROIs, ctabs, anatomy, design)."""
    s = int(subject)
    fmt = config["nsd"]["betas_format"]
    return {
        "expdesign": nsd_path(config, layout.expdesign_key()),
        "betas": [nsd_path(config, layout.betas_key(s, ses, fmt)) for ses in sessions(config)],
        "rois": [nsd_path(config, layout.roi_key(s, n)) for n in layout.ROI_NAMES],
        "ctabs": [nsd_path(config, layout.ctab_key(s, n)) for n in layout.ROI_NAMES],
        "brainmask": nsd_path(config, layout.anatomy_key(s, "brainmask")),
    }


def prepare_targets(config: Mapping) -> list[str]:
    """Every prepared file of ``prepare.voxel_sets`` × subjects, and the stimulus tables (other voxel
    sets are prepared when a later stage reads them)."""
    subs = subjects(config)
    return ([PREPARED.format(voxels=v, subject=s) for v in config["prepare"]["voxel_sets"] for s in subs]
            + [STIMULI.format(subject=s) for s in subs])


__all__ = ["PREPARED", "STIMULI", "CAPTIONS", "PLANTED_FILE", "VOXEL_SETS", "NORMALISATIONS", "PrepareSettings", "subjects", "sessions", "nsd_path",
           "coco_caption_paths", "brick", "raw_files", "raw_targets", "synth_extra_files", "subject_raw_inputs",
           "prepare_targets"]
