"""Figures of the reconstructions and the metrics (matplotlib, Agg backend, PNG, atomic writes).

* :func:`image_grid` - the layout every image figure uses (exact, predictable pixel geometry);
* :func:`fig_subjects` - Brain-Diffuser Fig. 3 style: rows = ground truth, subject average, each
  subject; columns = test images;
* :func:`fig_variants` - Brain-Diffuser Fig. 6 style (ablations): rows = test images; columns =
  ground truth, then one column per variant (one subject);
* :func:`fig_samples` - Takagi & Nishimoto style: rows = test images; columns = ground truth, then
  the generated samples of one variant;
* :func:`fig_metric_bars` - one panel per metric, a bar per method/variant (mean over subjects,
  error bar = s.d. over subjects).

Images come from ``images.h5`` (:func:`brainrecon.evaluate.stage.read_reconstructions`) and the
ground truth from the NSD ``imgBrick`` (:func:`~brainrecon.evaluate.stage.read_ground_truth`);
a multi-sample reconstruction shows its first sample outside :func:`fig_samples`.
"""

from __future__ import annotations


import numpy as np

from ..evaluate.stage import read_ground_truth, read_reconstructions
from ..io import atomic_path

__all__ = [
    "fig_loss_curves",
    "image_grid",
    "select_images",
    "fig_subjects",
    "fig_variants",
    "fig_samples",
    "fig_metric_bars",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def image_grid(rows, out_png, col_labels=None, cell_in: float = 1.0, label_in: float = 1.3,
               header_in: float = 0.3, dpi: int = 100) -> dict:
    """Save a grid of images as PNG and return ``{"rows", "cols", "size_px": (width, height)}``.

    rows: list of ``(row label, images)`` with ``images`` a sequence of uint8 (H, W, 3) arrays (or
    None for an empty cell), the same number ``cols`` in every row. Geometry (no tight bbox): the
    figure is ``label_in + cols * cell_in`` by ``header_in + rows * cell_in`` inches at ``dpi``; a
    left band of ``label_in`` holds the row labels, a top band of ``header_in`` the column labels,
    and image (r, c) fills the square of side ``cell_in`` whose top-left corner is at
    ``(label_in + c * cell_in, header_in + r * cell_in)`` inches.
    """
    if not rows:
        raise ValueError("image_grid: no rows")
    n_cols = len(rows[0][1])
    if n_cols == 0:
        raise ValueError("image_grid: rows have no images")
    for label, imgs in rows:
        if len(imgs) != n_cols:
            raise ValueError(f"image_grid: row {label!r} has {len(imgs)} images, the first row {n_cols}")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"image_grid: {len(col_labels)} column labels for {n_cols} columns")
    plt = _plt()
    n_rows = len(rows)
    w_in = label_in + n_cols * cell_in
    h_in = header_in + n_rows * cell_in
    fig = plt.figure(figsize=(w_in, h_in), dpi=dpi)
    try:
        for r, (label, imgs) in enumerate(rows):
            for c, img in enumerate(imgs):
                left = (label_in + c * cell_in) / w_in
                bottom = 1.0 - (header_in + (r + 1) * cell_in) / h_in
                ax = fig.add_axes((left, bottom, cell_in / w_in, cell_in / h_in))
                ax.set_axis_off()
                if img is not None:
                    ax.imshow(np.asarray(img), interpolation="antialiased", aspect="auto")
            fig.text((label_in - 0.05) / w_in, 1.0 - (header_in + (r + 0.5) * cell_in) / h_in, str(label),
                     ha="right", va="center", fontsize=8, wrap=True)
        for c, lab in enumerate(col_labels or []):
            fig.text((label_in + (c + 0.5) * cell_in) / w_in, 1.0 - 0.5 * header_in / h_in, str(lab),
                     ha="center", va="center", fontsize=7)
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return {"rows": n_rows, "cols": n_cols, "size_px": (round(w_in * dpi), round(h_in * dpi))}


def select_images(recon_paths, n_images: int = 8, images=None) -> np.ndarray:
    """nsdIds to show: ``images`` if given (each must be in every file), else ``n_images`` ids
    evenly spaced over the ascending ids common to all files."""
    import h5py

    common = None
    for p in recon_paths:
        with h5py.File(str(p), "r") as f:
            if "nsd_ids" not in f:
                raise KeyError(f"{p}: no dataset 'nsd_ids'")
            ids = set(np.asarray(f["nsd_ids"][()]).astype(int).tolist())
        common = ids if common is None else common & ids
    if not common:
        raise ValueError(f"no nsd_ids common to {list(map(str, recon_paths))}")
    if images:
        missing = [int(i) for i in images if int(i) not in common]
        if missing:
            raise ValueError(f"report images {missing} are not reconstructed in every file of {list(map(str, recon_paths))}")
        return np.asarray([int(i) for i in images], dtype=np.int64)
    ids = np.array(sorted(common), dtype=np.int64)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if len(ids) <= n_images:
        return ids
    return ids[np.unique(np.linspace(0, len(ids) - 1, n_images).round().astype(int))]


def _first_sample(images: np.ndarray) -> np.ndarray:
    return images[:, 0] if images.ndim == 5 else images


def fig_subjects(brick, recon_paths: dict, out_png, n_images: int = 8, images=None, **layout) -> dict:
    """Brain-Diffuser Fig. 3: rows = ground truth then ``recon_paths`` in order ({row label: images.h5},
    e.g. "Subject average", "Subject 01", ...); columns = the selected test images."""
    ids = select_images(list(recon_paths.values()), n_images, images)
    rows = [("Ground truth", list(read_ground_truth(brick, ids)))]
    for label, path in recon_paths.items():
        rows.append((label, list(_first_sample(read_reconstructions(path, ids).images))))
    return {**image_grid(rows, out_png, col_labels=[f"nsdId {i}" for i in ids], **layout), "nsd_ids": ids}


def fig_variants(brick, recon_paths: dict, out_png, n_images: int = 8, images=None, **layout) -> dict:
    """Brain-Diffuser Fig. 6: rows = the selected test images; columns = ground truth, then one per
    entry of ``recon_paths`` ({column label: images.h5}, e.g. the ablations of one subject)."""
    ids = select_images(list(recon_paths.values()), n_images, images)
    gt = read_ground_truth(brick, ids)
    recs = [_first_sample(read_reconstructions(p, ids).images) for p in recon_paths.values()]
    rows = [(f"nsdId {i}", [gt[k]] + [r[k] for r in recs]) for k, i in enumerate(ids)]
    return {**image_grid(rows, out_png, col_labels=["Ground truth", *recon_paths], **layout), "nsd_ids": ids}


def fig_samples(brick, recon_path, out_png, n_images: int = 6, images=None, max_samples: int = 5,
                **layout) -> dict:
    """Takagi & Nishimoto style: rows = the selected test images; columns = ground truth and up to
    ``max_samples`` generated samples of one reconstruction file (a single-sample file shows one)."""
    ids = select_images([recon_path], n_images, images)
    gt = read_ground_truth(brick, ids)
    rec = read_reconstructions(recon_path, ids).images
    if rec.ndim == 4:
        rec = rec[:, None]
    s = min(rec.shape[1], int(max_samples))
    rows = [(f"nsdId {i}", [gt[k]] + list(rec[k, :s])) for k, i in enumerate(ids)]
    labels = ["Ground truth"] + [f"sample {j + 1}" for j in range(s)]
    return {**image_grid(rows, out_png, col_labels=labels, **layout), "nsd_ids": ids}


def fig_metric_bars(eval_csvs, out_png, metrics=None, method_order=None, variant_order=None,
                    panel_in=(2.6, 2.4), dpi: int = 100) -> dict:
    """Bar chart: one panel per metric, one bar per method/variant = mean over the numeric subjects,
    error bar = s.d. over subjects (none with one subject); subject-average rows are not used.
    Returns ``{"panels", "bars", "labels", "size_px"}``."""
    from ..evaluate.plan import BRAINDIFFUSER_COLUMNS, metric_spec
    from .tables import METHOD_LABELS, read_eval_csvs, summary_rows

    df = read_eval_csvs(eval_csvs)
    df = df[df["subject"] != "avg"]
    if df.empty:
        raise ValueError("fig_metric_bars: no per-subject evaluation rows")
    if metrics is None:
        metrics = [c for c in BRAINDIFFUSER_COLUMNS if c in df.columns and df[c].notna().any()]
    metrics = [m for m in metrics if m in df.columns]
    if not metrics:
        raise ValueError("fig_metric_bars: none of the metrics is in the evaluation CSVs")
    summ = summary_rows(df, metrics, method_order, variant_order)
    labels = [f"{METHOD_LABELS.get(m, m)}: {lab}" for m, lab in zip(summ["method"], summ["label"])]
    plt = _plt()
    n_cols = min(4, len(metrics))
    n_rows = -(-len(metrics) // n_cols)
    legend_in = 0.3 + 0.2 * -(-len(summ) // 3)
    fig_h = panel_in[1] * n_rows + legend_in
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_in[0] * n_cols, fig_h), dpi=dpi, squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(len(summ)) % 10)
    n_bars = 0
    try:
        x = np.arange(len(summ))
        for k, m in enumerate(metrics):
            ax = axes[k // n_cols][k % n_cols]
            sd = summ[f"{m} sd"].to_numpy(dtype=float)
            bars = ax.bar(x, summ[m].to_numpy(dtype=float), color=colors,
                          yerr=np.where(np.isfinite(sd), sd, 0.0), capsize=2)
            n_bars += len(bars)
            arrow = "↑" if metric_spec(m).higher_is_better else "↓"
            ax.set_title(f"{m} {arrow}", fontsize=9)
            ax.set_xticks([])
            ax.tick_params(labelsize=7)
        for k in range(len(metrics), n_rows * n_cols):
            axes[k // n_cols][k % n_cols].set_axis_off()
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7, frameon=False)
        fig.subplots_adjust(bottom=(legend_in + 0.15) / fig_h, top=1 - 0.3 / fig_h, hspace=0.4, wspace=0.35)
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        size = fig.get_size_inches() * dpi
    finally:
        plt.close(fig)
    return {"panels": len(metrics), "bars": n_bars, "labels": labels, "size_px": (round(size[0]), round(size[1]))}


def fig_loss_curves(loss_csvs: dict, out_png, dpi: int = 100, smooth: int = 1) -> dict:
    """Training-loss curves (CnD Phase 1): ``{label: loss.csv}`` (columns step, loss, self, cross; one row per
    step, ``stage`` separating pre-training), one panel per loss term, one line per label; ``smooth``: running
    mean over that many steps. Returns ``{"lines", "steps", "size_px"}``."""
    import pandas as pd

    frames = {}
    for label, path in loss_csvs.items():
        df = pd.read_csv(path)
        missing = [c for c in ("loss", "self", "cross") if c not in df.columns]
        if missing or df.empty:
            raise ValueError(f"{path}: a loss log needs rows and columns loss, self, cross (missing {missing})")
        frames[str(label)] = df
    plt = _plt()
    terms = [("loss", "total"), ("self", "self-contrastive"), ("cross", "cross-contrastive")]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.6), dpi=dpi, squeeze=False)
    try:
        for ax, (col, title) in zip(axes[0], terms):
            for label, df in frames.items():
                y = df[col].to_numpy(float)
                if smooth > 1 and len(y) >= smooth:
                    y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
                ax.plot(np.arange(len(y)), y, lw=1, label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7, frameon=False)
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        size = fig.get_size_inches() * dpi
    finally:
        plt.close(fig)
    return {"lines": len(frames), "steps": {k: len(v) for k, v in frames.items()},
            "size_px": (round(size[0]), round(size[1]))}
