"""ROIs of a prepared subject file: label tables, named ROI definitions, voxel masks and patterns.

A prepared file (``results/prepared/{voxels}/subjXX.h5``, :mod:`brainrecon.nsd.prepare`) holds one
label vector per NSD ROI file, ``rois/<roi file>`` (V,) int16 over its voxels (-1 invalid, 0 outside,
1..N a label), with the subject's own ctab labels in the ``labels_json`` attribute. Every stage that
selects voxels by ROI reads them through this module:

* :func:`label_table` — ``{value: name}`` of one ROI file (the file's ctab labels, else the NSD
  tables of :data:`brainrecon.nsd.layout.LABEL_TABLES`; positive values only);
* :func:`roi_mask` / :func:`union_mask` — voxels carrying some labels of one / several ROI files
  (the regression's ``voxels: {streams: [early]}``);
* :data:`ROI_DEFINITIONS` and :func:`roi_patterns` — the named ROIs of Brain-Diffuser's ROI-optimal
  images (V1 = V1v ∪ V1d, …, face, word, place, body, eccentricity bands) and their synthetic patterns.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from .layout import LABEL_TABLES

#: Named ROIs: name -> (ROI file, label names united) (SPEC §3). V1-V4 come from prf-visualrois (the
#: Brain-Diffuser reference takes them from floc-faces by mistake, ``roi_extract.py:43``).
ROI_DEFINITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "V1": ("prf-visualrois", ("V1v", "V1d")),
    "V2": ("prf-visualrois", ("V2v", "V2d")),
    "V3": ("prf-visualrois", ("V3v", "V3d")),
    "V4": ("prf-visualrois", ("hV4",)),
    "face": ("floc-faces", ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces")),
    "word": ("floc-words", ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words")),
    "place": ("floc-places", ("OPA", "PPA", "RSC")),
    "body": ("floc-bodies", ("EBA", "FBA-1", "FBA-2", "mTL-bodies")),
    "ecc0pt5": ("prf-eccrois", ("ecc0pt5",)),
    "ecc1": ("prf-eccrois", ("ecc1",)),
    "ecc2": ("prf-eccrois", ("ecc2",)),
    "ecc4": ("prf-eccrois", ("ecc4",)),
    "ecc4+": ("prf-eccrois", ("ecc4+",)),
}


def _labels_ds(prepared, roi_file: str):
    key = f"rois/{roi_file}"
    if key not in prepared:
        have = sorted(prepared["rois"]) if "rois" in prepared else []
        raise KeyError(f"{prepared.filename}: no {key!r} (ROI label vectors present: {have})")
    return prepared[key]


def label_table(prepared, roi_file: str) -> dict[int, str]:
    """``{value: name}`` (values > 0) of ``rois/<roi_file>`` of an open prepared file: its ctab labels
    (``labels_json``) or, without them, :data:`LABEL_TABLES`. ``KeyError`` names the file if the ROI
    file is absent, ``ValueError`` if it has no label table at all."""
    ds = _labels_ds(prepared, roi_file)
    raw = ds.attrs.get("labels_json")
    table = ({int(v): str(n) for v, n in json.loads(raw).items()} if raw is not None
             else dict(LABEL_TABLES.get(roi_file, {})))
    table = {v: n for v, n in table.items() if v > 0}  # 0 = outside ("Unknown"), -1 = invalid
    if not table:
        raise ValueError(f"{prepared.filename}: ROI {roi_file!r} has no label table")
    return table


def roi_mask(prepared, roi_file: str, names: Sequence[str]) -> np.ndarray:
    """Boolean (V,) mask of the voxels whose ``rois/<roi_file>`` label is one of ``names``."""
    by_name = {n: v for v, n in label_table(prepared, roi_file).items()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"{prepared.filename}: ROI {roi_file!r} has no label {missing[0]!r}"
                         f"{'' if len(missing) == 1 else f' (nor {missing[1:]})'}; labels: {sorted(by_name)}")
    return np.isin(_labels_ds(prepared, roi_file)[()], [by_name[n] for n in names])


def union_mask(prepared, spec: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Boolean (V,) mask of the union of ``{roi file: [label names]}``; an empty result is an error."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"an ROI selection must be {{roi file: [labels]}}, got {spec!r}")
    mask = np.zeros(prepared["voxels/ijk"].shape[0], dtype=bool)
    for roi_file, names in spec.items():
        mask |= roi_mask(prepared, roi_file, list(names))
    if not mask.any():
        raise ValueError(f"{prepared.filename}: voxel selection {dict(spec)!r} is empty")
    return mask


def roi_patterns(prepared_h5, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Synthetic patterns of named ROIs: ``{name: (1, V) float32}``, 1 on the ROI's voxels, 0 elsewhere.

    prepared_h5: ``results/prepared/<voxels>/subjXX.h5`` (V = its voxels, in the z-scored space);
    names: keys of :data:`ROI_DEFINITIONS`. -1 (invalid) and 0 are never in a ROI. An empty ROI is an
    error naming the file and the labels.
    """
    import h5py

    names = list(names)
    unknown = [n for n in names if n not in ROI_DEFINITIONS]
    if unknown:
        raise ValueError(f"unknown ROI-optimal pattern(s) {unknown}; known: {list(ROI_DEFINITIONS)}")
    out = {}
    with h5py.File(prepared_h5, "r") as f:
        for name in names:
            roi_file, labels = ROI_DEFINITIONS[name]
            mask = roi_mask(f, roi_file, labels)
            if not mask.any():
                raise ValueError(
                    f"{prepared_h5}: ROI {name!r} ({roi_file} labels {list(labels)}) has no voxel in this voxel set"
                )
            out[name] = mask.astype(np.float32)[None, :]
    return out


def roi_extra_patterns(prepared_h5, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The patterns the regression predicts for ROI-optimal images: ``roi_<name>`` (:func:`roi_patterns`)
    and ``zero`` (all voxels 0: its prediction is the intercept, so pred(roi) - pred(zero) = p·Wᵀ)."""
    pats = roi_patterns(prepared_h5, names)
    if not pats:
        return {}
    v = next(iter(pats.values())).shape[1]
    return {**{f"roi_{k}": a for k, a in pats.items()}, "zero": np.zeros((1, v), np.float32)}


__all__ = ["ROI_DEFINITIONS", "label_table", "roi_mask", "union_mask", "roi_patterns", "roi_extra_patterns"]
