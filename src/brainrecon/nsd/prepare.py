"""Per-subject preparation: raw NSD files -> one HDF5 of masked, split, averaged betas.

:func:`prepare_subject` streams the sessions one at a time (only one session's masked
betas plus one block of raw volume data are in memory), writes single trials into
preallocated HDF5 datasets as they stream, and then, voxel block by voxel block (every
step after masking is per voxel), forms the repetition averages and applies the
normalisation. Peak memory is therefore bounded by ~one session (T × V float32) plus
a fixed block budget, independent of the number of sessions.

Output layout (all betas float32 in units of raw int16 / ``scale`` — percent signal
change for scale=300 — then normalised):

==========================  ==================  =========================================
dataset                     shape               content
==========================  ==================  =========================================
``train/betas``             (n_train, V)        repetition-averaged betas of train images
``train/nsd_ids``           (n_train,) int64    0-based 73k-ids, ascending
``train/n_reps``            (n_train,) int64    trials averaged per image
``test/betas``              (n_test, V)         same for the shared (test) images
``test/nsd_ids``, ``test/n_reps``
``trials/betas``            (n_train_trials, V) single training trials (ascending trial)
``trials/nsd_ids``          (n_train_trials,)   image of each trial
``trials/session``          (n_train_trials,)   1-based session; also ``trials/k``,
                                                ``trials/trial`` (global 0-based), ``trials/rep``
``test_trials/...``         (n_test_trials, V)  same for test trials
``voxels/ijk``              (V, 3) int32        voxel (x, y, z) in the func1pt8mm volume
``rois/<name>``             (V,) int16          ROI label of each voxel (-1, 0, 1..N);
                                                attrs ``label_values``/``label_names`` (ctab)
``norm/mean``, ``norm/std`` (V,) float64        train_zscore statistics (of unnormalised
                                                train averages), when used
``norm/session_mean|std``   (n_sessions, V)     session_zscore statistics, when used
==========================  ==================  =========================================

File attrs: ``subject``, ``voxels``, ``volume_shape``, ``affine``, ``scale``,
``normalise``, ``sessions``, ``trials_per_session``, ``n_voxels``.

Normalisation (``normalise``):
  ``train_zscore``   per-voxel mean/std of the averaged train betas, applied to every
                     dataset (Brain-Diffuser);
  ``session_zscore`` per session, per voxel z-score over that session's trials, before
                     averaging (MindEye);
  ``none``           betas / scale only.
A voxel whose std is 0 (or not finite) gets std 1, so it becomes all zeros after
centring rather than NaN. Since every normalisation is affine per voxel and applied to
trials and averages alike, averages always equal the mean of their trials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path
from . import layout
from .plan import PrepareSettings
from .readers import (
    DEFAULT_BLOCK_BYTES,
    NSDFileError,
    betas_shape,
    iter_session_betas,
    load_expdesign,
    load_roi,
    read_ctab,
    read_stim_info,
    volume_info,
)
from .trials import normalise_sessions, split_images, trial_table, trials_per_session

log = logging.getLogger(__name__)



def _as_named(paths, what: str) -> dict[str, Path]:
    """Dict {roi name: path} from a mapping or a sequence in layout.ROI_NAMES order."""
    if paths is None:
        return {}
    if isinstance(paths, Mapping):
        out = {str(k): Path(v) for k, v in paths.items()}
    else:
        paths = [Path(p) for p in paths]
        if len(paths) != len(layout.ROI_NAMES):
            raise ValueError(
                f"{what}: got {len(paths)} paths but expected one per ROI in layout.ROI_NAMES "
                f"order ({len(layout.ROI_NAMES)}: {', '.join(layout.ROI_NAMES)})"
            )
        out = dict(zip(layout.ROI_NAMES, paths))
    unknown = [n for n in out if n not in layout.ROI_NAMES]
    if unknown:
        raise ValueError(f"{what}: unknown ROI name(s) {unknown}; known: {', '.join(layout.ROI_NAMES)}")
    return out


def _safe_std(sd: np.ndarray) -> np.ndarray:
    sd = np.asarray(sd, dtype=np.float64).copy()
    sd[~np.isfinite(sd) | (sd <= 1e-12)] = 1.0
    return sd


def _averaging_matrix(row_image: np.ndarray, n_images: int):
    """Sparse (n_images, n_rows) float32 matrix whose product with trials gives the means."""
    import scipy.sparse as sp

    n_rows = row_image.size
    counts = np.bincount(row_image, minlength=n_images).astype(np.float64)
    w = (1.0 / counts[row_image]).astype(np.float32)
    return sp.csr_matrix((w, (row_image, np.arange(n_rows))), shape=(n_images, n_rows), dtype=np.float32)


def prepare_subject(files: Mapping, out_h5, subject: int | str, settings: PrepareSettings, *, progress: bool = True,
                    block_bytes: int = DEFAULT_BLOCK_BYTES, mem_block_mb: float = 256.0) -> Path:
    """Prepare one subject's betas; write ``out_h5`` atomically (see module docstring).

    files: the raw files (:func:`brainrecon.nsd.plan.subject_raw_inputs`, the rule's inputs):
        ``expdesign`` (``nsd_expdesign.mat``); ``betas``, one file per session ordered by session
        (``.nii.gz`` (X,Y,Z,T) or ``.hdf5`` ``/betas`` (T,Z,Y,X), int16 = psc × 300); ``rois``, ``ctabs``:
        ``{roi name: path}`` or lists in ``layout.ROI_NAMES`` order (every ROI gets a ``rois/<name>`` label
        vector; ctabs give the label names); ``brainmask`` (``brainmask.nii.gz``; needed for
        ``voxels="brainmask"``).
    subject : 1..8. settings: the voxel set, scale, normalisation and sessions
        (:class:`brainrecon.nsd.plan.PrepareSettings`; sessions must match the betas files in number).
    block_bytes : raw bytes of betas read per block of trials.
    mem_block_mb : budget for the voxel-block averaging/normalisation pass.

    The number of trials per session comes from the design's ``stimpattern`` and must
    equal each betas file's trial axis; otherwise NSDFileError names the file. Nothing
    is left at ``out_h5`` on any error.
    """
    expdesign_path, betas_paths = files["expdesign"], files["betas"]
    roi_paths, ctab_paths, brainmask_path = files["rois"], files["ctabs"], files.get("brainmask")
    voxels, scale, normalise, sessions = settings.voxels, settings.scale, settings.normalise, settings.sessions
    import h5py
    from tqdm.auto import tqdm

    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    subject = int(subject)
    betas_paths = [Path(p) for p in betas_paths]
    if not betas_paths:
        raise ValueError("no betas files given")
    sess = normalise_sessions(len(betas_paths) if sessions is None else sessions)
    if len(sess) != len(betas_paths):
        raise ValueError(
            f"{len(betas_paths)} betas files given for {len(sess)} sessions ({sess}); "
            "pass one file per session, ordered by session"
        )
    rois = _as_named(roi_paths, "roi_paths")
    ctabs = _as_named(ctab_paths, "ctab_paths")
    if voxels in ("nsdgeneral", "streams") and voxels not in rois:
        raise ValueError(f"voxels={voxels!r} needs the {voxels} ROI in roi_paths")
    if voxels == "brainmask" and brainmask_path is None:
        raise ValueError("voxels='brainmask' needs brainmask_path")

    # ---- design, trials, split
    expdesign_path = Path(expdesign_path)
    design = load_expdesign(expdesign_path)
    try:
        tps = trials_per_session(design, sess)
        table = trial_table(design, subject, sess)
    except ValueError as e:
        raise NSDFileError(f"{expdesign_path}: {e}") from e
    train_ids, test_ids = split_images(table)

    # ---- volume shapes; trials per session agree with the files
    vol_shape = None
    for s, p in zip(sess, betas_paths):
        X, Y, Z, T = betas_shape(p)
        if T != tps[s]:
            raise NSDFileError(
                f"{p}: has {T} trials along its trial axis but the experiment design "
                f"({expdesign_path.name}, stimpattern) has {tps[s]} trials in session {s}"
            )
        if vol_shape is None:
            vol_shape = (X, Y, Z)
        elif (X, Y, Z) != vol_shape:
            raise NSDFileError(f"{p}: volume shape {(X, Y, Z)} differs from {betas_paths[0]} {vol_shape}")

    # ---- ROI volumes, mask
    roi_vols: dict[str, np.ndarray] = {}
    affine = None
    for name, p in rois.items():
        vol = load_roi(p)
        if vol.shape != vol_shape:
            raise NSDFileError(f"{p}: ROI volume shape {vol.shape} differs from the betas' {vol_shape}")
        roi_vols[name] = vol
        if affine is None:
            affine = volume_info(p)[1]
    if voxels == "brainmask" or affine is None:
        bm = load_roi(brainmask_path) if brainmask_path is not None else None
        if bm is not None and bm.shape != vol_shape:
            raise NSDFileError(f"{brainmask_path}: brainmask shape {bm.shape} differs from the betas' {vol_shape}")
        if affine is None and brainmask_path is not None:
            affine = volume_info(brainmask_path)[1]
    # nsdgeneral / streams: every voxel with a label > 0 over the whole volume; brainmask: the brain
    mask = (roi_vols[voxels] > 0) if voxels in ("nsdgeneral", "streams") else (bm > 0)
    ijk = np.argwhere(mask).astype(np.int64)  # sorted by (x, y, z)
    V = ijk.shape[0]
    if V == 0:
        src = rois.get(voxels) if voxels in ("nsdgeneral", "streams") else brainmask_path
        raise NSDFileError(f"{src}: the {voxels} mask selects no voxel")
    label_tables = {name: read_ctab(p) for name, p in ctabs.items()}
    if affine is None:
        affine = np.full((4, 4), np.nan)

    # ---- row bookkeeping
    tr_rows = table[~table["shared"]].reset_index(drop=True)
    te_rows = table[table["shared"]].reset_index(drop=True)
    tr_img = np.searchsorted(train_ids, tr_rows["nsd_id"].to_numpy())
    te_img = np.searchsorted(test_ids, te_rows["nsd_id"].to_numpy())
    n_tr, n_te = len(tr_rows), len(te_rows)
    log.info(
        "subject %d: %d sessions, %d voxels (%s), train %d images / %d trials, test %d images / %d trials",
        subject, len(sess), V, voxels, train_ids.size, n_tr, test_ids.size, n_te,
    )

    out_h5 = Path(out_h5)
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w", rdcc_nbytes=32 * 2**20) as f:
            ccols = min(V, 256)

            def _mk(name, n):
                return f.create_dataset(
                    name, shape=(n, V), dtype=np.float32,
                    chunks=(max(1, min(n, 128)), ccols) if n else None,
                )

            ds_tr = _mk("trials/betas", n_tr)
            ds_te = _mk("test_trials/betas", n_te)
            for grp, rows in (("trials", tr_rows), ("test_trials", te_rows)):
                f[f"{grp}/nsd_ids"] = rows["nsd_id"].to_numpy(np.int64)
                f[f"{grp}/session"] = rows["session"].to_numpy(np.int64)
                f[f"{grp}/k"] = rows["k"].to_numpy(np.int64)
                f[f"{grp}/trial"] = rows["trial"].to_numpy(np.int64)
                f[f"{grp}/rep"] = rows["rep"].to_numpy(np.int64)
            if normalise == "session_zscore":
                ds_smean = f.create_dataset("norm/session_mean", shape=(len(sess), V), dtype=np.float64)
                ds_sstd = f.create_dataset("norm/session_std", shape=(len(sess), V), dtype=np.float64)

            # ---- pass 1: stream sessions, write single trials
            scale32 = np.float32(scale)
            tr_sess = tr_rows["session"].to_numpy()
            te_sess = te_rows["session"].to_numpy()
            it = tqdm(list(zip(sess, betas_paths)), desc=f"subj{subject:02d} sessions", disable=not progress)
            for si, (s, p) in enumerate(it):
                T = tps[s]
                data = np.empty((T, V), dtype=np.float32)
                for t0, block in iter_session_betas(p, ijk, block_bytes):
                    n = block.shape[0]
                    np.divide(block, scale32, out=data[t0 : t0 + n], dtype=np.float32)
                if normalise == "session_zscore":
                    mu = data.mean(axis=0, dtype=np.float64)
                    sd = _safe_std(data.std(axis=0, dtype=np.float64))
                    ds_smean[si] = mu
                    ds_sstd[si] = sd
                    data -= mu.astype(np.float32)
                    data /= sd.astype(np.float32)
                for ds, rows, rs in ((ds_tr, tr_rows, tr_sess), (ds_te, te_rows, te_sess)):
                    sel = np.flatnonzero(rs == s)
                    if sel.size:
                        # rows of one session are contiguous in ascending-trial order
                        ds[sel[0] : sel[-1] + 1] = data[rows["k"].to_numpy()[sel]]
                del data

            # ---- pass 2: per voxel block, averages + train z-score
            A_tr = _averaging_matrix(tr_img, train_ids.size)
            A_te = _averaging_matrix(te_img, test_ids.size)
            ds_atr = f.create_dataset("train/betas", shape=(train_ids.size, V), dtype=np.float32,
                                      chunks=(max(1, min(train_ids.size, 128)), ccols))
            ds_ate = f.create_dataset("test/betas", shape=(test_ids.size, V), dtype=np.float32,
                                      chunks=(max(1, min(test_ids.size, 128)), ccols) if test_ids.size else None)
            if normalise == "train_zscore":
                ds_mean = f.create_dataset("norm/mean", shape=(V,), dtype=np.float64)
                ds_std = f.create_dataset("norm/std", shape=(V,), dtype=np.float64)
            per_voxel = (n_tr + n_te + train_ids.size + test_ids.size) * 4 * 3
            vb = int(max(1, mem_block_mb * 2**20 // per_voxel))
            vb = max(ccols, vb // ccols * ccols)
            blocks = range(0, V, vb)
            for v0 in tqdm(blocks, desc=f"subj{subject:02d} averaging", disable=not progress):
                v1 = min(V, v0 + vb)
                tr = ds_tr[:, v0:v1]
                te = ds_te[:, v0:v1] if n_te else np.zeros((0, v1 - v0), np.float32)
                atr = np.asarray(A_tr @ tr, dtype=np.float32)
                ate = np.asarray(A_te @ te, dtype=np.float32)
                if normalise == "train_zscore":
                    mu = atr.mean(axis=0, dtype=np.float64)
                    sd = _safe_std(atr.std(axis=0, dtype=np.float64))
                    ds_mean[v0:v1] = mu
                    ds_std[v0:v1] = sd
                    mu32, sd32 = mu.astype(np.float32), sd.astype(np.float32)
                    for a in (atr, ate, tr, te):
                        a -= mu32
                        a /= sd32
                    ds_tr[:, v0:v1] = tr
                    if n_te:
                        ds_te[:, v0:v1] = te
                ds_atr[:, v0:v1] = atr
                if test_ids.size:
                    ds_ate[:, v0:v1] = ate
                del tr, te, atr, ate

            f["train/nsd_ids"] = train_ids
            f["train/n_reps"] = np.bincount(tr_img, minlength=train_ids.size).astype(np.int64)
            f["test/nsd_ids"] = test_ids
            f["test/n_reps"] = np.bincount(te_img, minlength=test_ids.size).astype(np.int64)
            f["voxels/ijk"] = ijk.astype(np.int32)
            for name, vol in roi_vols.items():
                d = f.create_dataset(f"rois/{name}", data=vol[mask].astype(np.int16))
                tab = label_tables.get(name) or layout.LABEL_TABLES.get(name, {})
                vals = sorted(tab)
                d.attrs["label_values"] = np.asarray(vals, dtype=np.int64)
                d.attrs["label_names"] = np.asarray([tab[v] for v in vals], dtype=h5py.string_dtype())
                d.attrs["labels_json"] = json.dumps({str(v): tab[v] for v in vals})
                d.attrs["label_source"] = "ctab" if name in label_tables else "layout.LABEL_TABLES"
            f.attrs["subject"] = subject
            f.attrs["voxels"] = voxels
            f.attrs["volume_shape"] = np.asarray(vol_shape, dtype=np.int64)
            f.attrs["affine"] = np.asarray(affine, dtype=np.float64)
            f.attrs["scale"] = scale
            f.attrs["normalise"] = normalise
            f.attrs["sessions"] = np.asarray(sess, dtype=np.int64)
            f.attrs["trials_per_session"] = np.asarray([tps[s] for s in sess], dtype=np.int64)
            f.attrs["n_voxels"] = V
            f.attrs["units"] = (
                "raw int16 / scale (percent signal change for scale=300)"
                + ("" if normalise == "none" else f", then {normalise}")
            )
    return out_h5


# --------------------------------------------------------------------------- stimuli


def _design(expdesign):
    return expdesign if isinstance(expdesign, Mapping) else load_expdesign(expdesign)


def stimulus_index(expdesign, stim_info_csv, subject: int | str, sessions) -> pd.DataFrame:
    """The subject's images in ``sessions``: one row per image, sorted by nsdId.

    Columns: ``nsdId`` (0-based), ``brick_row`` (= nsdId, row of ``imgBrick``),
    ``cocoId``, ``cocoSplit``, ``cropBox`` (if in the stim info), ``split``
    ("train"/"test"), ``n_reps`` (trials of the image in those sessions).
    """
    design = _design(expdesign)
    table = trial_table(design, subject, sessions)
    train_ids, test_ids = split_images(table)
    info = read_stim_info(stim_info_csv).set_index("nsdId")
    ids = np.concatenate([train_ids, test_ids])
    missing = np.setdiff1d(ids, info.index.to_numpy())
    if missing.size:
        raise NSDFileError(
            f"{stim_info_csv}: no row for nsdId(s) {missing[:10].tolist()} "
            f"({missing.size} of the subject's images)"
        )
    counts = table["nsd_id"].value_counts()
    df = pd.DataFrame({"nsdId": ids})
    df["brick_row"] = df["nsdId"]
    sub = info.loc[ids]
    df["cocoId"] = sub["cocoId"].to_numpy(np.int64)
    df["cocoSplit"] = sub["cocoSplit"].astype(str).to_numpy()
    if "cropBox" in sub.columns:
        df["cropBox"] = sub["cropBox"].astype(str).to_numpy()
    df["split"] = np.where(np.isin(ids, test_ids), "test", "train")
    df["n_reps"] = [int(counts[i]) for i in ids]
    return df.sort_values("nsdId").reset_index(drop=True)


def write_stimulus_index(expdesign, stim_info_csv, subject: int | str, sessions, out_csv) -> pd.DataFrame:
    """Write :func:`stimulus_index` to ``out_csv`` atomically; return it."""
    df = stimulus_index(expdesign, stim_info_csv, subject, sessions)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df


def read_coco_captions(paths) -> dict[int, list[tuple[int, str]]]:
    """COCO caption JSONs -> ``{image_id: [(annotation id, caption), ...]}`` (sorted by id)."""
    out: dict[int, list[tuple[int, str]]] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise NSDFileError(f"{p}: file does not exist")
        try:
            with open(p) as fh:
                data = json.load(fh)
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NSDFileError(
                f"{p}: not a COCO captions JSON with an 'annotations' list ({type(e).__name__}: {e})"
            ) from e
        for i, a in enumerate(anns):
            try:
                img, cap = int(a["image_id"]), str(a["caption"])
                aid = int(a.get("id", i))
            except (KeyError, TypeError, ValueError) as e:
                raise NSDFileError(f"{p}: annotation {i} lacks image_id/caption ({e})") from e
            out.setdefault(img, []).append((aid, " ".join(cap.split())))
    for v in out.values():
        v.sort()
    return out


def captions_table(stim_index, caption_json_paths) -> pd.DataFrame:
    """Captions of every image in a stimulus index (DataFrame or CSV path).

    Columns: ``nsdId``, ``cocoId``, ``caption_idx`` (0.. in COCO annotation-id order),
    ``caption``. Raises NSDFileError if an image has no caption in the given files.
    """
    idx = stim_index if isinstance(stim_index, pd.DataFrame) else pd.read_csv(stim_index)
    for c in ("nsdId", "cocoId"):
        if c not in idx.columns:
            raise ValueError(f"stimulus index has no column {c!r}")
    caps = read_coco_captions(caption_json_paths)
    rows = []
    lacking = []
    for nsd_id, coco_id in zip(idx["nsdId"].to_numpy(), idx["cocoId"].to_numpy()):
        lst = caps.get(int(coco_id))
        if not lst:
            lacking.append((int(nsd_id), int(coco_id)))
            continue
        for j, (_, cap) in enumerate(lst):
            rows.append((int(nsd_id), int(coco_id), j, cap))
    if lacking:
        files = ", ".join(str(p) for p in caption_json_paths)
        raise NSDFileError(
            f"{files}: no caption for {len(lacking)} image(s), e.g. (nsdId, cocoId) {lacking[:5]}"
        )
    return pd.DataFrame(rows, columns=["nsdId", "cocoId", "caption_idx", "caption"])


def write_captions_table(stim_index, caption_json_paths, out_csv) -> pd.DataFrame:
    """Write :func:`captions_table` to ``out_csv`` atomically; return it."""
    df = captions_table(stim_index, caption_json_paths)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return df
