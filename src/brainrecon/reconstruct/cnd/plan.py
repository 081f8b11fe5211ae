"""CnD's plan (no torch): settings, what each job reads and writes.

Phase 1 (``workflow/rules/cnd.smk``, rule ``cnd_phase1``): per subject, the double-contrastive masked fMRI
encoder trained on the subject's single training trials of a prepared voxel set, written to
``results/reconstruct/cnd/phase1/subjXX/``: ``encoder/`` (``config.json`` + ``model.safetensors``),
``loss.csv`` (one row per step), ``embeddings.h5`` (pooled encoder outputs of every training trial and of the
training and test images' repetition averages). The training checkpoint lives beside it in
``subjXX.checkpoint/`` (not an output: it survives a killed job, which resumes from it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

from ...nsd.plan import PREPARED, VOXEL_SETS
from ...nsd.plan import subjects as nsd_subjects
from ...schema import SectionSettings

METHOD = "cnd"
SECTION = "methods.cnd"
OUT = "results/reconstruct/cnd"
PHASE1 = OUT + "/phase1/subj{subject}"
NEGATIVES = ("keys", "queries")
#: phase-1 settings that do not change the trained weights (left out of the rule's rerun trigger)
NOT_RESULTS = ("checkpoint_every",)


@dataclass(frozen=True)
class Phase1Settings(SectionSettings):
    """``methods.cnd.phase1`` (config.schema.yaml has the defaults: the paper's, and the reference code's where
    the paper is silent; config/README.md says which).

    Model: patch_size, embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads,
    mlp_ratio (:class:`~.encoder.MAEConfig`). Loss: mask_ratio, sparsify (fraction of voxels zeroed per
    pattern), temperature, alpha_self, alpha_cross, mask_loss_weight, duplicate_self, negatives
    (:mod:`.losses`). Training: lr (peak), min_lr, weight_decay, beta1, beta2, warmup_epochs (linear), epochs
    (then cosine to min_lr, per step), batch_size, clip_grad (global norm; 0 = off), checkpoint_every
    (steps), seed. Data: voxels (the prepared voxel set), pretrain (optional path of extra patterns to train on
    first, for pretrain_epochs).
    """

    SECTION = SECTION + ".phase1"

    voxels: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float
    mask_ratio: float
    sparsify: float
    temperature: float
    alpha_self: float
    alpha_cross: float
    mask_loss_weight: float
    duplicate_self: bool
    negatives: str
    lr: float
    min_lr: float
    weight_decay: float
    beta1: float
    beta2: float
    warmup_epochs: int
    epochs: int
    batch_size: int
    clip_grad: float
    checkpoint_every: int
    seed: int
    pretrain: str | None
    pretrain_epochs: int

    def __post_init__(self):
        if self.voxels not in VOXEL_SETS:
            raise ValueError(f"methods.cnd.phase1.voxels must be one of {VOXEL_SETS}, got {self.voxels!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"methods.cnd.phase1.negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if not 0 < self.mask_ratio < 1 or not 0 <= self.sparsify < 1:
            raise ValueError(f"mask_ratio must be in (0, 1) and sparsify in [0, 1), got {self.mask_ratio}, "
                             f"{self.sparsify}")
        if self.batch_size < 2:
            raise ValueError("methods.cnd.phase1.batch_size must be >= 2 (in-batch negatives)")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.pretrain is not None and self.pretrain_epochs < 1:
            raise ValueError("methods.cnd.phase1.pretrain is set: pretrain_epochs must be >= 1")

    def model_sizes(self) -> dict:
        keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                "decoder_num_heads", "mlp_ratio")
        return {k: getattr(self, k) for k in keys}

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (a checkpoint resumes only under the same one)."""
        d = {k: v for k, v in self.as_dict().items() if k not in NOT_RESULTS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def phase1_settings(config: Mapping) -> dict:
    """The phase-1 rule's settings params (a validated config's ``methods.cnd.phase1``)."""
    return dict(config["methods"]["cnd"]["phase1"])


def phase1_outputs(subject: str = "{subject}") -> dict:
    base = PHASE1.format(subject=subject)
    return {"encoder": base + "/encoder", "loss": base + "/loss.csv", "embeddings": base + "/embeddings.h5"}


def checkpoint_dir(subject: str) -> str:
    """Where a subject's training checkpoint lives (beside the outputs, not one of them)."""
    return PHASE1.format(subject=subject) + ".checkpoint"


def phase1_inputs(config: Mapping, subject: str) -> dict:
    ph = config["methods"]["cnd"]["phase1"]
    out = {"prepared": PREPARED.format(voxels=ph["voxels"], subject=subject)}
    if ph["pretrain"]:
        out["pretrain"] = ph["pretrain"]
    return out


LOSS_FIGURE = "results/figures/cnd_phase1_loss.png"


def targets(config: Mapping) -> list[str]:
    """Phase-1 outputs of every subject (and the loss-curve figure)."""
    cnd = config["methods"]["cnd"]
    if not cnd["enabled"]:
        return []
    out = [p for s in nsd_subjects(config) for p in phase1_outputs(s).values()]
    return out + [LOSS_FIGURE]


__all__ = ["METHOD", "SECTION", "OUT", "PHASE1", "NEGATIVES", "NOT_RESULTS", "Phase1Settings", "phase1_settings",
           "phase1_outputs", "checkpoint_dir", "phase1_inputs", "LOSS_FIGURE", "targets"]
