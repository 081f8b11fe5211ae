"""ROI-level summaries of voxelwise encoding accuracy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from brainrecon.nsd.layout import LABEL_TABLES

__all__ = ["roi_summary", "ROI_SUMMARY_COLUMNS"]

ROI_SUMMARY_COLUMNS = [
    "roi_file",
    "label",
    "roi",
    "n_voxels",
    "mean_r",
    "median_r",
    "n_significant",
    "frac_significant",
]


def roi_summary(
    r,
    significant,
    rois: Mapping[str, np.ndarray],
    label_tables: Mapping[str, Mapping[int, str]] | None = None,
) -> pd.DataFrame:
    """Mean test correlation and fraction of significant voxels per ROI label.

    Parameters
    ----------
    r : float (V,)                 per-voxel test correlation
    significant : bool (V,)        per-voxel significance (e.g. BH-FDR q < 0.05)
    rois : {roi file name: int (V,)}
        Label of every analysed voxel in each NSD ROI file ("streams", "prf-visualrois",
        "floc-faces", ...): 1..N = label, 0 = outside, -1 = invalid (both ignored).
    label_tables : {roi file name: {value: name}}; default
        :data:`brainrecon.nsd.layout.LABEL_TABLES`. Every ROI file needs a table.

    Returns
    -------
    DataFrame with one row per (roi file, label of its table), in table order, columns
    ``roi_file, label (int value), roi (name), n_voxels, mean_r, median_r,
    n_significant, frac_significant``. A label with no voxels has n_voxels 0 and NaN
    statistics. A positive value missing from the table raises ValueError.
    """
    tables = LABEL_TABLES if label_tables is None else label_tables
    r = np.asarray(r, dtype=np.float64)
    sig = np.asarray(significant)
    if r.ndim != 1:
        raise ValueError(f"r must be (V,), got shape {r.shape}")
    if sig.shape != r.shape:
        raise ValueError(f"significant {sig.shape} must have the shape of r {r.shape}")
    if sig.dtype != bool:
        if not np.isin(sig, (0, 1)).all():
            raise ValueError("significant must be boolean (or 0/1)")
        sig = sig.astype(bool)
    rows = []
    for name, labels in rois.items():
        if name not in tables:
            raise ValueError(f"no label table for ROI file {name!r}; known: {', '.join(tables)}")
        labels = np.asarray(labels)
        if labels.shape != r.shape:
            raise ValueError(f"ROI {name!r} labels have shape {labels.shape}, expected {r.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.array_equal(labels, np.round(labels)):
                raise ValueError(f"ROI {name!r} labels must be integers")
            labels = labels.astype(np.int64)
        table = {int(k): str(v) for k, v in tables[name].items()}
        unknown = sorted(set(np.unique(labels[labels > 0]).tolist()) - set(table))
        if unknown:
            raise ValueError(
                f"ROI {name!r} has label values {unknown} that its table " f"({sorted(table)}) does not name"
            )
        for value, roi in table.items():
            mask = labels == value
            nv = int(mask.sum())
            ns = int(sig[mask].sum())
            rows.append(
                {
                    "roi_file": name,
                    "label": value,
                    "roi": roi,
                    "n_voxels": nv,
                    "mean_r": float(r[mask].mean()) if nv else np.nan,
                    "median_r": float(np.median(r[mask])) if nv else np.nan,
                    "n_significant": ns,
                    "frac_significant": ns / nv if nv else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=ROI_SUMMARY_COLUMNS)
