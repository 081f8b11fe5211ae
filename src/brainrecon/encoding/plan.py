"""The encoding stage's plan (no torch): which maps a config asks for, their settings, files and figures.

Takagi & Nishimoto (CVPR 2023), "Encoding": per voxel set × feature space × subject, a voxelwise
encoding map (:mod:`brainrecon.encoding.stage`). The spaces are ``encoding.spaces`` (e.g. z = ``sdz``,
c = ``sdc``), then ``zc_s<s>`` for ``encoding.zc_strengths`` and ``unet_<block>_t<step>`` for
``encoding.unet.blocks`` × ``steps`` — parametric feature spaces of :mod:`brainrecon.features.plan`,
written by the features rule like every other space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ..features.plan import (
    check_block,
    format_strength,
    get_space,
    is_parametric,
    parse_parametric,
    unet_space_name,
    zc_space_name,
)

ENCODING_OUT = "results/encoding"
#: the files of one map (statistics, r map, significance map, ROI table, slice mosaic) are MAP + suffix
MAP = ENCODING_OUT + "/{voxels}/{space}/subj{subject}"
MAP_SUFFIXES = (".h5", "_r.nii.gz", "_sig.nii.gz", "_rois.csv", "_mosaic.png")
ROI_SUMMARY = ENCODING_OUT + "/{voxels}/roi_summary.csv"
FIGURE = ENCODING_OUT + "/{voxels}/figures/r_by_roi_{figure}.png"
#: the r-by-ROI figures (:func:`brainrecon.encoding.stage.figure_table`)
FIGURE_NAMES = ("spaces", "noise_levels", "unet_steps", "unet_layers")
TRAIN_ON = ("single_trial", "averaged")


@dataclass(frozen=True)
class FitSettings:
    """Every setting that changes a map's statistics (the ``encoding`` config section).

    n_components: PCA components fitted on the training images (None: no PCA); alphas, cv: ridge
    penalties (several: one per voxel by CV grouped by image); cv_score: how the folds score an alpha
    (``l2_neg_loss``, himalaya's default, or ``r2``); backend: himalaya backend of the ridge
    and PCA; train_on: ``single_trial`` or ``averaged``; standardize_X: z-score the PCA scores;
    q: BH-FDR level; target_batch: voxels per ridge batch; roi_files: ROI files summarised.
    """

    n_components: int | None
    alphas: tuple[float, ...]
    cv: int
    cv_score: str
    backend: str
    train_on: str
    standardize_X: bool
    q: float
    target_batch: int
    roi_files: tuple[str, ...]

    def __post_init__(self):
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, got {self.train_on!r}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "roi_files", tuple(self.roi_files))

    @classmethod
    def from_config(cls, config: Mapping) -> "FitSettings":
        return cls(**fit_settings(config))


def backend(config: Mapping) -> str:
    """Ridge/PCA backend of the encoding fits: ``encoding.backend``, or ``regression.backend`` when null."""
    return config["encoding"].get("backend") or config["regression"]["backend"]


def fit_settings(config: Mapping) -> dict:
    """:class:`FitSettings` of a validated config as a plain dict (the fit rule's params: changing one
    reruns the fits)."""
    e = config["encoding"]
    return {
        "n_components": e["n_components"], "alphas": list(e["alphas"]), "cv": e["cv"], "cv_score": e["cv_score"],
        "backend": backend(config), "train_on": e["train_on"], "standardize_X": e["standardize_X"],
        "q": e["q"], "target_batch": e["target_batch"], "roi_files": list(e["roi_files"]),
    }


def describe_space(name: str) -> dict:
    """Labels of any space of the encoding analysis, for tables and figures.

    Returns ``{"kind", "label", "strength", "block", "step"}``: sdz -> kind ``z``, sdc -> ``c``,
    ``zc_s0.4`` -> kind ``zc``, label ``zc s=0.4``; ``unet_mid_t10`` -> kind ``unet``, label
    ``mid t=10``; other spaces -> kind ``other``, label = name. Missing parts are None.
    """
    out = {"kind": "other", "label": name, "strength": None, "block": None, "step": None}
    if name == "sdz":
        out.update(kind="z", label="z")
    elif name == "sdc":
        out.update(kind="c", label="c")
    elif is_parametric(name):
        p = parse_parametric(name)
        if p["kind"] == "zc":
            out.update(kind="zc", label=f"zc s={format_strength(p['strength'])}", strength=p["strength"])
        else:
            out.update(kind="unet", label=f"{p['block']} t={p['step']}", block=p["block"], step=p["step"])
    return out


def figure_names(names: Sequence[str]) -> list[str]:
    """The r-by-ROI figures (:data:`FIGURE_NAMES`) that spaces ``names`` support: ``spaces`` (any
    non-U-Net space), ``noise_levels`` (a zc space), ``unet_steps`` and ``unet_layers`` (a U-Net space)."""
    kinds = [describe_space(n)["kind"] for n in names]
    out = []
    if any(k != "unet" for k in kinds):
        out.append("spaces")
    if "zc" in kinds:
        out.append("noise_levels")
    if "unet" in kinds:
        out += ["unet_steps", "unet_layers"]
    return out


def space_names(enc: Mapping) -> list[str]:
    """Every feature space of a validated ``encoding`` config section, in order: ``spaces`` (e.g. sdz,
    sdc), then ``zc_s<s>`` for ``zc_strengths``, then ``unet_<block>_t<step>`` for ``unet.blocks`` ×
    ``unet.steps`` (blocks outer).

    Raises ``ValueError`` naming the config key for an unknown entry of ``spaces``, a strength that needs
    more than 3 decimals, a step beyond the U-Net run (``int(unet.strength · img2img.num_inference_steps)``
    steps), a name listed twice, or a ``figure_roi_file`` missing from ``roi_files``.
    """
    names = []
    for i, name in enumerate(enc["spaces"]):
        try:
            get_space(name)
        except (KeyError, ValueError) as e:
            raise ValueError(f"config key encoding.spaces[{i}]: {e.args[0]}") from None
        names.append(name)
    for i, s in enumerate(enc["zc_strengths"]):
        try:
            names.append(zc_space_name(s))
        except ValueError as e:
            raise ValueError(f"config key encoding.zc_strengths[{i}]: {e}") from None
    unet = enc["unet"]
    blocks, steps = list(unet["blocks"]), list(unet["steps"])
    if blocks and steps:
        n_run = int(float(unet["strength"]) * int(enc["img2img"]["num_inference_steps"]))
        late = [s for s in steps if int(s) > n_run]
        if late:
            raise ValueError(
                f"config key encoding.unet.steps: step(s) {late} exceed the {n_run} denoising steps of the U-Net "
                f"run (int(encoding.unet.strength x encoding.img2img.num_inference_steps))"
            )
        for b in blocks:
            try:
                check_block(b)
            except ValueError as e:
                raise ValueError(f"config key encoding.unet.blocks: {e}") from None
        names += [unet_space_name(b, s) for b in blocks for s in steps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"config key encoding: feature space(s) {dup} listed twice")
    fig, rois = enc["figure_roi_file"], enc["roi_files"]
    if fig not in rois:
        raise ValueError(f"config key encoding.figure_roi_file: {fig!r} is not one of encoding.roi_files {list(rois)}")
    return names


def targets(config: Mapping, subjects: Sequence[str]) -> list[str]:
    """Every encoding output of a config: per voxel set, the files of every space × subject
    (:data:`MAP_SUFFIXES`), the ROI summary and the r-by-ROI figures."""
    e = config["encoding"]
    if not e["enabled"]:
        return []
    names = space_names(e)
    if not names:
        return []
    files = []
    for v in e["voxels"]:
        files += [MAP.format(voxels=v, space=n, subject=s) + x for n in names for s in subjects for x in MAP_SUFFIXES]
        files.append(ROI_SUMMARY.format(voxels=v))
        files += [FIGURE.format(voxels=v, figure=f) for f in figure_names(names)]
    return files


__all__ = ["ENCODING_OUT", "MAP", "MAP_SUFFIXES", "ROI_SUMMARY", "FIGURE", "FIGURE_NAMES", "TRAIN_ON",
           "FitSettings", "backend", "fit_settings", "describe_space", "figure_names", "space_names", "targets"]
