"""The encoding stage: prepared betas × one feature space → voxelwise encoding maps, ROI tables, figures.

Takagi & Nishimoto (CVPR 2023), "Encoding". Per (subject, feature space, voxel set),
:func:`fit_encoding`:

1. reads the prepared betas (``results/prepared/{voxels}/subjXX.h5``) and the features
   (``results/features/{space}/subjXX.h5``), matching rows by nsdId;
2. reduces the features to ``n_components`` principal components fitted on the **training images**
   (each image once; :func:`brainrecon.encoding.pca_scores` — the scores without the k × d
   components, so flattened U-Net blocks fit in memory; capped by the rank, ``min(n - 1, d)``; no
   PCA when ``d <= n_components``) and projects training and test images;
3. fits the project's ridge through :func:`brainrecon.encoding.encoding_analysis` (one alpha per
   voxel chosen by cross-validation over ``alphas``) on single training trials (``train_on:
   single_trial``, the paper: each trial's row is its image's projected features) or on the
   repetition-averaged training betas (``averaged``). CV folds group trials **by image**, so the
   repetitions of one image never sit on both sides of a fold;
4. predicts the repetition-averaged test betas (``test/betas``), and evaluates each voxel by the
   Pearson r over the m test images, a one-sided p against the null of correlations of independent
   Gaussian vectors of length m, and BH-FDR at ``q``;
5. writes an HDF5 of the statistics, NIfTI maps in the subject's func1pt8mm grid (``voxels/ijk``,
   attrs ``volume_shape`` and ``affine`` of the prepared file) and a per-ROI CSV.

Summaries across spaces and subjects: :func:`summarise_rois` (one CSV) and :func:`encoding_figures`
(r by ROI across spaces, noise levels, denoising steps, U-Net layers); :func:`write_mosaics` draws the
significant r of each map over the subject's mean EPI.

Output HDF5 (``results/encoding/{voxels}/{space}/subjXX.h5``): ``r``, ``p``, ``p_adj`` float64 (V,);
``significant`` bool (V,); ``best_alphas`` float64 (V,); ``voxels/ijk`` (V, 3); ``test_nsd_ids`` (m,);
attrs: space, subject, voxel_set, volume_shape, affine, n_components_requested/used, pca_note,
n_train_rows, n_train_images, n_test, q, train_on, backend, alphas, cv, standardize_X, feature_dim,
prepared, features.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from brainrecon.encoding.analysis import encoding_analysis
from brainrecon.encoding.figures import plot_r_by_roi, slice_mosaic
from brainrecon.encoding.maps import save_map_nifti, to_volume
from brainrecon.encoding.pca import pca_scores
from brainrecon.encoding.plan import FIGURE_NAMES, FitSettings, describe_space
from brainrecon.encoding.rois import roi_summary
from brainrecon.features.plan import format_strength
from brainrecon.io import atomic_path
from brainrecon.nsd.rois import label_table

log = logging.getLogger(__name__)

#: columns the stage adds in front of :data:`brainrecon.encoding.ROI_SUMMARY_COLUMNS`
ID_COLUMNS = ["voxels", "subject", "space", "kind", "space_label", "strength", "block", "step"]
FIGURES = FIGURE_NAMES


# ----------------------------------------------------------------------------- helpers
def _rows_for(ids: np.ndarray, have: np.ndarray, where: str) -> np.ndarray:
    """Row of each of ``ids`` in ``have`` (KeyError naming ``where`` for missing ids)."""
    ids, have = np.asarray(ids, np.int64), np.asarray(have, np.int64)
    if have.size == 0:
        raise KeyError(f"{where}: no rows")
    order = np.argsort(have, kind="stable")
    pos = np.clip(np.searchsorted(have, ids, sorter=order), 0, have.size - 1)
    rows = order[pos]
    missing = ids[have[rows] != ids]
    if missing.size:
        raise KeyError(f"{where}: no features for nsdId(s) {np.unique(missing)[:10].tolist()}")
    return rows


def image_folds(image_of_row: np.ndarray, cv: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold (train, validation) row indices with every image's rows in one fold.

    image_of_row: (n_rows,) image index of each training row (0..n_images-1). Images are split into
    ``cv`` contiguous groups of their index (as ``KFold`` without shuffling would split images).
    """
    img = np.asarray(image_of_row, np.int64)
    n_img = int(img.max()) + 1 if img.size else 0
    if int(cv) < 2:
        raise ValueError(f"cv must be >= 2 folds, got {cv}")
    if int(cv) > n_img:
        raise ValueError(f"cv={cv} folds is more than the {n_img} training images")
    folds = []
    rows = np.arange(img.size)
    for group in np.array_split(np.arange(n_img), int(cv)):
        val = np.isin(img, group)
        folds.append((rows[~val], rows[val]))
    return folds


def _volume_geometry(prep: h5py.File) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    where = prep.filename
    for key in ("volume_shape", "affine"):
        if key not in prep.attrs:
            raise KeyError(f"{where}: prepared file has no attr {key!r} (needed to write NIfTI maps)")
    shape = tuple(int(s) for s in np.asarray(prep.attrs["volume_shape"]).ravel())
    affine = np.asarray(prep.attrs["affine"], dtype=np.float64)
    if len(shape) != 3:
        raise ValueError(f"{where}: attr volume_shape must hold 3 sizes, got {shape}")
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{where}: attr affine must be a finite 4x4 matrix, got {affine.tolist()}")
    return np.asarray(prep["voxels/ijk"][()], np.int64), shape, affine


def _check_keys(f: h5py.File, keys: Sequence[str]) -> None:
    for key in keys:
        if key not in f:
            raise KeyError(f"{f.filename}: missing {key!r}")


# ----------------------------------------------------------------------------- one map
def fit_encoding(prepared_h5, features_h5, outputs: Mapping, settings: FitSettings, *, space: str | None = None,
                 subject: str | int | None = None, progress: bool = True) -> dict:
    """Fit, evaluate and map one encoding model (see the module docstring).

    prepared_h5: ``results/prepared/{voxels}/subjXX.h5``; features_h5: ``results/features/{space}/subjXX.h5``
        (``{split}/features`` (n, D), ``{split}/nsd_ids``; every prepared train/test image must have a row).
    outputs: ``h5`` statistics (module docstring); ``r`` Pearson r per voxel (NIfTI float32, 0 outside the
        voxel set); ``sig`` 1.0 where the voxel is significant (BH-FDR ``settings.q``), 0.0 elsewhere;
        ``rois``: :data:`ID_COLUMNS` + :func:`brainrecon.encoding.roi_summary` per label of ``roi_files``.
    settings: :class:`brainrecon.encoding.plan.FitSettings` — PCA components fitted on the training
        images (paper 6400; None: no PCA), ridge alphas (several: chosen per voxel by ``cv``-fold CV grouped
        by image), backend (``torch_cuda``: ridge and PCA on the GPU), ``train_on`` (``single_trial``:
        ``trials/betas``; ``averaged``: ``train/betas``), ``standardize_X`` (z-score the PCA scores before
        the ridge; see ``encoding_analysis``), ``q``, ``target_batch``, ``roi_files``.
    space, subject: labels (default: the features file's ``space`` attr / the prepared file's ``subject``).
    Returns a summary dict (space, subject, voxel_set, n_voxels, n_significant, median_r, max_r,
    n_components_used, n_train_rows, n_test).
    """
    n_components, alphas, cv, backend = settings.n_components, settings.alphas, settings.cv, settings.backend
    train_on, standardize_X, q = settings.train_on, settings.standardize_X, settings.q
    roi_files = settings.roi_files
    out_h5, r_nii, sig_nii, roi_csv = outputs["h5"], outputs["r"], outputs["sig"], outputs["rois"]
    prepared_h5, features_h5 = Path(prepared_h5), Path(features_h5)
    for p, what in ((prepared_h5, "prepared betas"), (features_h5, "features")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} file {p} does not exist")
    device = "cuda" if backend == "torch_cuda" else "cpu"
    grp = "trials" if train_on == "single_trial" else "train"

    with h5py.File(prepared_h5, "r") as prep, h5py.File(features_h5, "r") as feat:
        _check_keys(prep, [f"{grp}/betas", f"{grp}/nsd_ids", "train/nsd_ids", "test/betas", "test/nsd_ids",
                           "voxels/ijk"])
        _check_keys(feat, ["train/features", "train/nsd_ids", "test/features", "test/nsd_ids"])
        missing_rois = [n for n in roi_files if f"rois/{n}" not in prep]
        if missing_rois:
            raise KeyError(f"{prepared_h5}: no ROI(s) {missing_rois} (have: {sorted(prep.get('rois', {}))})")
        ijk, shape, affine = _volume_geometry(prep)
        space = space or str(feat.attrs.get("space", features_h5.parent.name))
        subject = f"{int(subject):02d}" if subject is not None else f"{int(prep.attrs.get('subject', 0)):02d}"
        voxel_set = str(prep.attrs.get("voxels", prepared_h5.parent.name))

        train_imgs = np.asarray(prep["train/nsd_ids"][()], np.int64)
        test_ids = np.asarray(prep["test/nsd_ids"][()], np.int64)
        row_ids = np.asarray(prep[f"{grp}/nsd_ids"][()], np.int64)
        Ytr = prep[f"{grp}/betas"]  # streamed by the ridge in column batches
        Yte = np.asarray(prep["test/betas"][()], dtype=np.float32)
        V = int(Ytr.shape[1])
        if ijk.shape != (V, 3):
            raise ValueError(f"{prepared_h5}: voxels/ijk has shape {ijk.shape} for {V} voxels")
        if Yte.shape != (test_ids.size, V) or Ytr.shape[0] != row_ids.size:
            raise ValueError(f"{prepared_h5}: betas/nsd_ids shapes disagree ({grp} {Ytr.shape} vs {row_ids.size} "
                             f"ids, test {Yte.shape} vs {test_ids.size} ids)")

        ftr, fte = feat["train/features"], feat["test/features"]
        D = int(ftr.shape[1])
        if int(fte.shape[1]) != D:
            raise ValueError(f"{features_h5}: train has {D} feature columns but test has {fte.shape[1]}")
        r_img = _rows_for(train_imgs, feat["train/nsd_ids"][()], f"{features_h5} (train)")
        r_te = _rows_for(test_ids, feat["test/nsd_ids"][()], f"{features_h5} (test)")
        img_of_row = _rows_for(row_ids, train_imgs, f"{prepared_h5} ({grp} rows vs train images)")

        # ---- PCA on the training images (each once), projections of train and test images
        if n_components is not None and D > int(n_components):
            # scores only: no k x D components, features read in column blocks (once when D > n)
            contiguous = np.array_equal(r_img, np.arange(ftr.shape[0]))
            sc = pca_scores(ftr, fte, int(n_components), train_rows=None if contiguous else r_img, test_rows=r_te,
                            device=device, dtype=np.float32)
            Str, Ste, k, note = sc.train, sc.test, sc.n_components, sc.note
        else:
            Str = np.asarray(ftr[()], dtype=np.float32)[r_img]
            Ste = np.asarray(fte[()], dtype=np.float32)[r_te]
            k, note = D, f"no PCA: {D} features <= n_components={n_components}"
        Xtr = Str[img_of_row]
        alist = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        folds = image_folds(img_of_row, int(cv)) if alist.size > 1 else None
        log.info("encoding %s subj%s (%s): %d training rows (%s) of %d images, %d test images, %d voxels, %s",
                 space, subject, voxel_set, Xtr.shape[0], train_on, train_imgs.size, test_ids.size, V, note)
        res = encoding_analysis(Xtr, Ytr, Ste, Yte, dataclasses.replace(settings, n_components=None), folds=folds,
                                progress=progress)
        rois = {n: np.asarray(prep[f"rois/{n}"][()]) for n in roi_files}
        tables = {n: label_table(prep, n) for n in roi_files}

    attrs = dict(space=space, subject=subject, voxel_set=voxel_set, volume_shape=np.asarray(shape, np.int64),
                 affine=affine, n_components_requested=-1 if n_components is None else int(n_components),
                 n_components_used=int(k), pca_note=note, n_train_rows=int(Xtr.shape[0]),
                 n_train_images=int(train_imgs.size), n_test=int(res["n_test"]), q=float(q), train_on=train_on,
                 backend=str(backend), alphas=alist, cv=int(cv), standardize_X=bool(standardize_X),
                 feature_dim=D, prepared=str(prepared_h5), features=str(features_h5))
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            for key in ("r", "p", "p_adj", "best_alphas"):
                f.create_dataset(key, data=np.asarray(res[key], dtype=np.float64))
            f.create_dataset("significant", data=np.asarray(res["significant"], dtype=bool))
            f.create_dataset("voxels/ijk", data=ijk.astype(np.int32))
            f.create_dataset("test_nsd_ids", data=test_ids)
            for key, value in attrs.items():
                f.attrs[key] = value
    save_map_nifti(res["r"], ijk, shape, affine, r_nii)
    save_map_nifti(np.asarray(res["significant"], dtype=np.float32), ijk, shape, affine, sig_nii)

    table = roi_summary(res["r"], res["significant"], rois, tables)
    info = describe_space(space)
    ids = {"voxels": voxel_set, "subject": subject, "space": space, "kind": info["kind"], "space_label": info["label"],
           "strength": info["strength"], "block": info["block"], "step": info["step"]}
    for i, (col, val) in enumerate(ids.items()):
        table.insert(i, col, val)
    with atomic_path(roi_csv) as tmp:
        table.to_csv(tmp, index=False)
    r = np.asarray(res["r"])
    summary = dict(space=space, subject=subject, voxel_set=voxel_set, n_voxels=V,
                   n_significant=int(np.sum(res["significant"])), median_r=float(np.median(r)),
                   max_r=float(r.max()), n_components_used=int(k), n_train_rows=int(Xtr.shape[0]),
                   n_test=int(res["n_test"]))
    log.info("encoding %s subj%s: %s", space, subject, summary)
    return summary


def read_stats(path) -> dict:
    """The statistics of :func:`fit_encoding` (arrays + attrs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoding statistics {path} do not exist")
    with h5py.File(path, "r") as f:
        _check_keys(f, ["r", "p", "p_adj", "significant", "best_alphas", "voxels/ijk"])
        out = {k: f[k][()] for k in ("r", "p", "p_adj", "significant", "best_alphas")}
        out["ijk"] = f["voxels/ijk"][()]
        out["attrs"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return out


# ----------------------------------------------------------------------------- figures and tables
def write_mosaics(stats_h5s: Sequence, mean_epi, pngs: Sequence, *, n_slices: int = 16) -> list[Path]:
    """One slice mosaic per statistics file: significant r over the subject's mean EPI.

    All maps share one colour range (0 to the largest 99th percentile of their significant r), so the
    spaces of a subject can be compared by eye. ``mean_epi``: ``func1pt8mm/mean.nii.gz``; its shape
    must be the maps' volume shape.
    """
    import nibabel as nib

    if len(stats_h5s) != len(pngs):
        raise ValueError(f"{len(stats_h5s)} statistics files but {len(pngs)} figure paths")
    mean_epi = Path(mean_epi)
    if not mean_epi.is_file():
        raise FileNotFoundError(f"mean EPI {mean_epi} does not exist")
    epi = np.asarray(nib.load(str(mean_epi)).get_fdata(), dtype=np.float64)
    maps = []
    for path in stats_h5s:
        st = read_stats(path)
        shape = tuple(int(s) for s in st["attrs"]["volume_shape"])
        if epi.shape != shape:
            raise ValueError(f"mean EPI {mean_epi} has shape {epi.shape} but the map {path} is {shape}")
        maps.append((to_volume(st["r"], st["ijk"], shape), to_volume(st["significant"], st["ijk"], shape, fill=False),
                     st))
    shown = [m[0][m[1] & (m[0] > 0)] for m in maps]
    hi = max([float(np.percentile(s, 99)) for s in shown if s.size] or [1.0])
    out = []
    for (vol, sig, st), png in zip(maps, pngs):
        a = st["attrs"]
        label = describe_space(str(a.get("space", "")))["label"]
        title = (f"subj{a.get('subject', '?')} {label} ({a.get('voxel_set', '')}): test r, "
                 f"{int(sig.sum())}/{st['r'].size} voxels q<{a.get('q', '')}")
        out.append(slice_mosaic(vol, epi, png, significance=sig, n_slices=n_slices, vmin=0.0, vmax=max(hi, 1e-3), cmap="autumn",
                                title=title, label="test r"))
    return out


def summarise_rois(roi_csvs: Sequence, out_csv, space_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate per-map ROI tables into one CSV, ordered by voxel set, space (``space_order``,
    default first appearance), subject, ROI file and label."""
    if not roi_csvs:
        raise ValueError("no ROI tables to summarise")
    frames = []
    for p in roi_csvs:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"ROI table {p} does not exist")
        df = pd.read_csv(p, dtype={"subject": str})
        missing = [c for c in ID_COLUMNS + ["roi_file", "label", "roi", "mean_r", "frac_significant"]
                   if c not in df.columns]
        if missing:
            raise ValueError(f"{p}: ROI table has no column(s) {missing}")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    order = list(space_order) if space_order else list(pd.unique(df["space"]))
    unknown = sorted(set(df["space"]) - set(order))
    order += unknown
    df["_s"] = df["space"].map({s: i for i, s in enumerate(order)})
    df["_r"] = np.arange(len(df))
    df = df.sort_values(["voxels", "_s", "subject", "_r"], kind="stable").drop(columns=["_s", "_r"])
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df.reset_index(drop=True)


def figure_table(summary: pd.DataFrame, figure: str, roi_file: str = "streams", value: str = "mean_r"):
    """Rows of one figure as ``plot_r_by_roi`` wants them (feature, condition, roi, value), and the
    x-axis label. Figures (:data:`FIGURES`): ``spaces`` (one bar per space: z, c, zc at each strength,
    other spaces; U-Net spaces excluded), ``noise_levels`` (zc across strengths), ``unet_steps`` (one
    panel per block, x = step), ``unet_layers`` (one panel per step, x = block)."""
    if figure not in FIGURES:
        raise ValueError(f"unknown encoding figure {figure!r}; known: {FIGURES}")
    df = summary[summary["roi_file"] == roi_file]
    if df.empty:
        raise ValueError(f"the ROI summary has no rows of ROI file {roi_file!r} "
                         f"(has: {sorted(set(summary['roi_file']))})")
    df = df.copy()
    if figure == "spaces":
        d = df[df["kind"] != "unet"].copy()
        d["feature"] = d["space_label"]
        d["condition"] = ""
        xlabel = "ROI"
    elif figure == "noise_levels":
        d = df[df["kind"] == "zc"].copy().sort_values("strength", kind="stable")
        d["feature"] = "zc"
        d["condition"] = [f"s={format_strength(s)}" for s in d["strength"]]
        xlabel = "noise level (img2img strength)"
    else:
        d = df[df["kind"] == "unet"].copy()
        d["step"] = d["step"].astype(int)
        if figure == "unet_steps":
            d = d.sort_values("step", kind="stable")
            d["feature"] = [f"unet {b}" for b in d["block"]]
            d["condition"] = [f"t={s}" for s in d["step"]]
            xlabel = "denoising step"
        else:
            d["feature"] = [f"t={s}" for s in d["step"]]
            d["condition"] = d["block"]
            d = d.sort_values("step", kind="stable")
            xlabel = "U-Net block"
    if d.empty:
        raise ValueError(f"encoding figure {figure!r}: the ROI summary has no spaces for it")
    return d[["feature", "condition", "roi", value, "subject"]], xlabel


def encoding_figures(summary_csv, outputs: Mapping[str, str], *, roi_file: str = "streams",
                     value: str = "mean_r") -> list[Path]:
    """Write the r-by-ROI figures ``outputs`` = {figure name (:data:`FIGURES`): png path} from the
    summary CSV of :func:`summarise_rois` (mean over subjects, SEM error bars)."""
    summary = pd.read_csv(summary_csv, dtype={"subject": str})
    voxel_sets = sorted(set(summary["voxels"]))
    out = []
    for figure, path in outputs.items():
        d, xlabel = figure_table(summary, figure, roi_file, value)
        n_sub = d["subject"].nunique()
        title = (f"Encoding accuracy by {roi_file} ROI ({', '.join(voxel_sets)} voxels; mean of {n_sub} "
                 f"subject{'s' if n_sub != 1 else ''})")
        out.append(plot_r_by_roi(d, path, value=value, title=title, xlabel=xlabel,
                                 ylabel="mean r (test)" if value == "mean_r" else value))
    return out
