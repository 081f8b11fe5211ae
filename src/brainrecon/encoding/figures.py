"""Figures of encoding results (matplotlib, Agg canvas; no pyplot global state).

* :func:`slice_mosaic` — a statistic map over the subject's mean EPI, axial slices.
* :func:`plot_r_by_roi` — mean r per ROI across conditions (noise levels, denoising
  steps, U-Net layers) as lines, or as grouped bars when there is one condition.

Both write PNG/PDF/SVG atomically (format from the file extension).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from brainrecon.io import atomic_path

__all__ = ["slice_mosaic", "plot_r_by_roi"]


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf", "svg", "jpg", "jpeg"):
        raise ValueError(f"figure path must end in .png/.pdf/.svg/.jpg: {path}")
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
    return path


def slice_mosaic(
    map_volume,
    mean_epi,
    path,
    threshold: float | None = None,
    significance=None,
    *,
    n_slices: int = 16,
    ncols: int = 8,
    cmap: str = "hot",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    label: str = "r",
) -> Path:
    """Axial slices of a statistic map overlaid on the mean EPI.

    Parameters
    ----------
    map_volume : float (X, Y, Z)   statistic (e.g. test r) in the func1pt8mm grid
    mean_epi : (X, Y, Z)           background (the subject's ``mean.nii.gz``), grey scale
    path : output image (.png, .pdf, .svg)
    threshold : show only voxels with value > threshold (default: value != 0)
    significance : bool (X, Y, Z) or None; if given only significant voxels are shown
    n_slices : number of axial (k) slices, evenly spread over the slices containing brain
        (mean EPI > 0; the whole volume if that is empty)
    vmin, vmax : colour range; default threshold (or 0) to the 99th percentile of shown values

    Slices are drawn in voxel order: i to the right, j upwards, k increasing left to
    right / top to bottom, as in the volume's array (orientation follows its affine).
    """
    vol = np.asarray(map_volume, dtype=np.float64)
    epi = np.asarray(mean_epi, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"map volume must be 3-D (X, Y, Z), got shape {vol.shape}")
    if epi.shape != vol.shape:
        raise ValueError(f"mean EPI shape {epi.shape} differs from the map's {vol.shape}")
    show = np.isfinite(vol) & ((vol > threshold) if threshold is not None else (vol != 0))
    if significance is not None:
        sig = np.asarray(significance)
        if sig.shape != vol.shape:
            raise ValueError(f"significance shape {sig.shape} differs from the map's {vol.shape}")
        show &= sig.astype(bool)
    brain_k = np.flatnonzero((np.nan_to_num(epi) > 0).any(axis=(0, 1)))
    if brain_k.size == 0:
        brain_k = np.arange(vol.shape[2])
    n_slices = max(1, min(int(n_slices), brain_k.size))
    ks = np.unique(brain_k[np.linspace(0, brain_k.size - 1, n_slices).round().astype(int)])
    shown = vol[show]
    lo = vmin if vmin is not None else (threshold if threshold is not None else 0.0)
    hi = vmax if vmax is not None else (float(np.percentile(shown, 99)) if shown.size else lo + 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    ep = np.nan_to_num(epi)
    ep_hi = float(np.percentile(ep[ep > 0], 99)) if (ep > 0).any() else 1.0

    ncols = max(1, min(int(ncols), len(ks)))
    nrows = int(np.ceil(len(ks) / ncols))
    fig = Figure(figsize=(1.6 * ncols + 0.8, 1.8 * nrows + (0.4 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for ax, k in zip(axes.flat, ks):
        ax.imshow(ep[:, :, k].T, origin="lower", cmap="gray", vmin=0, vmax=ep_hi, interpolation="nearest")
        overlay = np.ma.masked_where(~show[:, :, k], vol[:, :, k])
        im = ax.imshow(overlay.T, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"k={k}", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
        cb.set_label(label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_r_by_roi(
    df: pd.DataFrame,
    path,
    *,
    value: str = "mean_r",
    title: str | None = None,
    ylabel: str = "mean r (test)",
    xlabel: str = "condition",
) -> Path:
    """Encoding accuracy by ROI across conditions.

    Parameters
    ----------
    df : DataFrame with columns ``feature`` (e.g. "z", "c", "zc", "unet-bottleneck"),
        ``condition`` (noise level / denoising step / layer; use one value, e.g. "",
        for a plain comparison), ``roi`` and ``value`` (default ``mean_r``). Several
        rows for the same (feature, condition, roi) — e.g. one per subject — are
        averaged and drawn with the standard error of the mean.
    path : output image (.png, .pdf, .svg)

    If any feature has more than one condition: one panel per feature, conditions on
    the x axis in order of first appearance, one line per ROI. Otherwise one panel of
    grouped bars: ROIs on the x axis, one bar per feature.
    """
    need = {"feature", "condition", "roi", value}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"plot_r_by_roi needs columns {sorted(need)}; missing {sorted(missing)}")
    if df.empty:
        raise ValueError("plot_r_by_roi got an empty table")
    d = df[["feature", "condition", "roi", value]].copy()
    features = list(pd.unique(d["feature"]))
    conditions = list(pd.unique(d["condition"]))
    rois = list(pd.unique(d["roi"]))
    g = d.groupby(["feature", "condition", "roi"], sort=False)[value]
    agg = pd.DataFrame({"mean": g.mean(), "sem": g.sem(), "count": g.count()}).reset_index()
    agg["sem"] = agg["sem"].where(agg["count"] > 1)
    multi = agg.groupby("feature")["condition"].nunique().max() > 1

    if multi:
        ncols = min(4, len(features))
        nrows = int(np.ceil(len(features) / ncols))
        fig = Figure(figsize=(3.6 * ncols + 1.5, 3.0 * nrows))
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        x_of = {c: i for i, c in enumerate(conditions)}
        for ax, feat in zip(axes.flat, features):
            sub = agg[agg["feature"] == feat]
            for roi in rois:
                s = sub[sub["roi"] == roi]
                if s.empty:
                    continue
                x = s["condition"].map(x_of).to_numpy()
                o = np.argsort(x)
                ax.errorbar(
                    x[o],
                    s["mean"].to_numpy()[o],
                    yerr=s["sem"].to_numpy(dtype=float)[o],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=str(roi),
                )
            ax.set_title(str(feat))
            ax.set_xticks(range(len(conditions)))
            ax.set_xticklabels([str(c) for c in conditions], rotation=45, ha="right", fontsize=7)
            ax.axhline(0, color="0.7", lw=0.5)
        for ax in list(axes.flat)[len(features) :]:
            ax.set_axis_off()
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.supxlabel(xlabel, fontsize=9)
        fig.subplots_adjust(right=0.86, top=0.85 if title else 0.92, hspace=0.5)
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.87, 0.5), fontsize=7, title="ROI")
    else:
        fig = Figure(figsize=(max(4.0, 0.5 * len(rois) * max(1, len(features)) + 2), 3.2))
        ax = fig.subplots()
        width = 0.8 / len(features)
        base = np.arange(len(rois))
        for i, feat in enumerate(features):
            s = agg[agg["feature"] == feat].set_index("roi").reindex(rois)
            ax.bar(
                base + (i - (len(features) - 1) / 2) * width,
                s["mean"].to_numpy(dtype=float),
                width,
                yerr=s["sem"].to_numpy(dtype=float),
                capsize=2,
                label=str(feat),
            )
        ax.set_xticks(base)
        ax.set_xticklabels([str(r) for r in rois], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="0.7", lw=0.5)
        ax.legend(fontsize=7, title="feature")
    if title:
        fig.suptitle(title, y=0.99)
    return _save(fig, path)
