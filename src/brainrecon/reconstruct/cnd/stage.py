"""The CnD Phase-1 job of one subject: prepared betas -> trained encoder, loss log, embeddings.

Training patterns are the subject's single **training** trials (``trials/betas`` of the prepared file, z-scored
per voxel with the training statistics by the prepare stage); a trial of a test image is an error, never a
training pattern. Embeddings (:meth:`~.encoder.FmriMAE.pooled`, the mean of the unmasked encoder tokens without
cls) are computed for every training trial and for the repetition-averaged training and test images.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from ...io import atomic_dir, atomic_path
from .plan import Phase1Settings
from .train import LOSS_COLUMNS, train_encoder

log = logging.getLogger(__name__)


def read_patterns(prepared_h5) -> dict:
    """``{"trials", "train", "test"}`` -> (betas (n, V) float32, nsd_ids (n,)); checks that no training trial
    shows a test image."""
    import h5py

    out = {}
    with h5py.File(prepared_h5, "r") as f:
        for grp in ("trials", "train", "test"):
            for key in (f"{grp}/betas", f"{grp}/nsd_ids"):
                if key not in f:
                    raise KeyError(f"{prepared_h5}: missing {key!r} (a prepared file of brainrecon.nsd.prepare)")
            out[grp] = (np.asarray(f[f"{grp}/betas"][()], np.float32), np.asarray(f[f"{grp}/nsd_ids"][()], np.int64))
    leak = np.intersect1d(out["trials"][1], out["test"][1])
    if leak.size:
        raise ValueError(f"{prepared_h5}: training trials show test images {leak[:10].tolist()}: refusing to train")
    return out


def read_pretrain(path) -> np.ndarray:
    """User-supplied pre-training patterns: ``.npy`` (n, V) or HDF5 with a ``betas`` (n, V) dataset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"methods.cnd.phase1.pretrain: {path} does not exist")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    import h5py

    with h5py.File(path, "r") as f:
        if "betas" not in f:
            raise KeyError(f"{path}: no 'betas' dataset (methods.cnd.phase1.pretrain needs (n, V) patterns)")
        return np.asarray(f["betas"][()], np.float32)


def embed_rows(model, X: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    out = np.empty((X.shape[0], model.config.embed_dim), np.float32)
    for i in range(0, X.shape[0], batch):
        out[i:i + batch] = model.pooled(torch.from_numpy(np.ascontiguousarray(X[i:i + batch]))).numpy()
    return out


def train_subject(inputs: Mapping, outputs: Mapping, settings: Phase1Settings, *, checkpoint_dir, subject: str,
                  device: str = "cpu", progress: bool = True) -> dict:
    """Train one subject's encoder and write ``outputs`` (``encoder`` folder, ``loss`` CSV, ``embeddings`` HDF5),
    each atomically; a killed run resumes from ``checkpoint_dir`` (removed once the outputs exist)."""
    import h5py
    import pandas as pd

    pats = read_patterns(inputs["prepared"])
    X, ids = pats["trials"]
    pre = read_pretrain(inputs["pretrain"]) if inputs.get("pretrain") else None
    log.info("CnD phase 1, subject %s: %d training trials x %d voxels (%s)%s", subject, X.shape[0], X.shape[1],
             inputs["prepared"], f", pre-training on {pre.shape[0]} patterns" if pre is not None else "")
    model, history = train_encoder(X, settings, checkpoint_dir, pretrain=pre, device=device, progress=progress)

    with atomic_dir(outputs["encoder"]) as tmp:
        model.save_pretrained(tmp)
        (Path(tmp) / "training.json").write_text(json.dumps(
            {"subject": str(subject), "settings": settings.as_dict(), "fingerprint": settings.fingerprint(),
             "n_train_trials": int(X.shape[0]), "prepared": str(inputs["prepared"])}, indent=2) + "\n")
    with atomic_path(outputs["loss"]) as tmp:
        pd.DataFrame(history, columns=list(LOSS_COLUMNS)).to_csv(tmp, index=False)
    with atomic_path(outputs["embeddings"]) as tmp, h5py.File(tmp, "w") as f:
        for grp, (B, nid) in (("trials", (X, ids)), ("train", pats["train"]), ("test", pats["test"])):
            f[f"{grp}/embeddings"] = embed_rows(model, B)
            f[f"{grp}/nsd_ids"] = nid
        f.attrs.update(subject=str(subject), pooling="mean of the unmasked encoder tokens without cls",
                       settings=json.dumps(settings.as_dict()), fingerprint=settings.fingerprint(),
                       embed_dim=int(model.config.embed_dim))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    last = history[-1]["loss"] if history else float("nan")
    log.info("CnD phase 1, subject %s: %d steps, final loss %.4f", subject, len(history), last)
    return {"steps": len(history), "final_loss": last}


__all__ = ["read_patterns", "read_pretrain", "embed_rows", "train_subject"]
