"""CnD Phase 1 training: seeded, checkpointed, resumable (§8.2; the reference's ``phase1_pretrain_contrast.py``).

1. the model is built from the settings with torch's RNG seeded by ``seed``;
2. AdamW (β = (beta1, beta2), weight decay on every parameter but biases and 1-D ones), the learning rate
   per step: linear warm-up from 0 over ``warmup_epochs``, then half-cycle cosine to ``min_lr`` at ``epochs``;
3. per epoch the patterns are shuffled by a generator seeded with ``derive_seed(seed, epoch)``; the last
   incomplete batch is dropped (every batch has ``batch_size`` in-batch negatives); every random draw of a step
   (sparsification, both masks) comes from a generator seeded with ``derive_seed(seed, epoch, step)`` — so a
   resumed run draws exactly what an uninterrupted one does;
4. per step: :func:`~.losses.double_contrastive_loss`, backward, gradient-norm clip, AdamW step; bf16 autocast on
   CUDA, float32 on CPU;
5. every ``checkpoint_every`` steps (and at the end of each stage) the model, optimizer, step and loss log are
   written to ``checkpoint.pt`` atomically; a checkpoint made under other settings (their
   :meth:`~.plan.Phase1Settings.fingerprint`) is not resumed from. On CPU an interrupted and resumed run ends
   with the same weights as an uninterrupted one.

With a ``pretrain`` set, a first stage trains ``pretrain_epochs`` on it with its own schedule (the paper
pre-trains on HCP), then the NSD stage starts from its weights with a fresh optimizer and schedule.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from ...io import atomic_path
from ..run import derive_seed
from .encoder import FmriMAE, MAEConfig
from .losses import double_contrastive_loss
from .plan import Phase1Settings

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
LOSS_COLUMNS = ("stage", "epoch", "step", "lr", "loss", "self", "cross", "mask")


def build_model(settings: Phase1Settings, num_voxels: int) -> FmriMAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings.seed))
        return FmriMAE(MAEConfig(num_voxels=int(num_voxels), **settings.model_sizes()))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for biases and 1-D parameters (LayerNorm), decay for the rest."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, steps_per_epoch: int, settings: Phase1Settings, epochs: int) -> float:
    """Linear warm-up over ``warmup_epochs`` then half-cycle cosine to ``min_lr`` (per step, fractional epoch)."""
    e = step / max(steps_per_epoch, 1)
    warm = min(settings.warmup_epochs, epochs)
    if e < warm:
        return settings.lr * e / warm
    frac = (e - warm) / max(epochs - warm, 1e-12)
    return settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(folder: Path, fingerprint: str) -> dict | None:
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is ignored, not fatal
        log.warning("checkpoint %s unreadable (%s): training from the start", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("checkpoint %s was made under other settings: training from the start", path)
        return None
    return state


def train_encoder(data: np.ndarray, settings: Phase1Settings, checkpoint_folder, *, pretrain: np.ndarray | None = None,
          device: str = "cpu", progress: bool = True) -> tuple[FmriMAE, list[dict]]:
    """Train the Phase-1 encoder on ``data`` (n, V) float32 patterns (after an optional ``pretrain`` stage);
    resume from ``checkpoint_folder/checkpoint.pt`` when it was written under the same settings. Returns the
    model (eval mode, CPU) and the loss log (one dict per step, :data:`LOSS_COLUMNS`)."""
    from tqdm.auto import tqdm

    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] < settings.batch_size:
        raise ValueError(f"CnD phase 1 needs (n >= batch_size={settings.batch_size}, V) training patterns, "
                         f"got shape {data.shape}")
    stages = [("nsd", data, settings.epochs)]
    if pretrain is not None:
        pretrain = np.array(pretrain, dtype=np.float32)  # a writable copy (np.load may memory-map)
        if pretrain.ndim != 2 or pretrain.shape[1] != data.shape[1] or pretrain.shape[0] < settings.batch_size:
            raise ValueError(f"pretrain patterns must be (n >= {settings.batch_size}, V={data.shape[1]}), got "
                             f"{pretrain.shape}")
        stages.insert(0, ("pretrain", pretrain, settings.pretrain_epochs))
    folder = Path(checkpoint_folder)
    folder.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    model = build_model(settings, data.shape[1]).to(dev)
    fingerprint = settings.fingerprint()
    state = _load_checkpoint(folder, fingerprint)
    history: list[dict] = []
    start_stage, start_step, opt_state = 0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        history = list(state["history"])
        start_stage, start_step, opt_state = state["stage"], state["step"], state["optimizer"]
        log.info("resuming from %s: stage %s, step %d", folder / CHECKPOINT, stages[start_stage][0], start_step)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu",
                enabled=False))

    for si in range(start_stage, len(stages)):
        name, X, epochs = stages[si]
        n = X.shape[0]
        per_epoch = n // settings.batch_size
        total = per_epoch * epochs
        opt = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr,
                                betas=(settings.beta1, settings.beta2))
        step = 0
        if si == start_stage and opt_state is not None:
            opt.load_state_dict(opt_state)
            step = start_step
        Xt = torch.from_numpy(X)
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(total=total, initial=step, desc=f"cnd phase 1 ({name})", disable=not progress)
        while step < total:
            epoch, k = divmod(step, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(settings.seed, si, epoch)))
            batch = Xt[order[k * settings.batch_size:(k + 1) * settings.batch_size]].to(dev)
            lr = lr_at(step, per_epoch, settings, epochs)
            for g in opt.param_groups:
                g["lr"] = lr
            gen = torch.Generator().manual_seed(derive_seed(settings.seed, si, epoch, k))
            with autocast:
                terms = double_contrastive_loss(model, batch, settings, gen)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"CnD phase 1: loss is {float(loss)} at {name} step {step} (epoch {epoch})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            opt.step()
            history.append({"stage": name, "epoch": epoch, "step": step, "lr": lr, "loss": float(loss.detach()),
                            "self": float(terms["self"]), "cross": float(terms["cross"]),
                            "mask": float(terms["mask"])})
            step += 1
            bar.update(1)
            if step % per_epoch == 0:
                recent = [h["loss"] for h in history[-per_epoch:]]
                log.info("%s epoch %d/%d: loss %.4f, lr %.3g (%.1f s)", name, epoch + 1, epochs, np.mean(recent),
                         lr, time.perf_counter() - t0)
            if step % settings.checkpoint_every == 0 or step == total:
                done = step == total
                _save(folder / CHECKPOINT, {
                    "fingerprint": fingerprint, "model": model.state_dict(), "history": history,
                    "stage": si + 1 if done else si, "step": 0 if done else step,
                    "optimizer": None if done else opt.state_dict(),
                })
        bar.close()
    model.eval().to("cpu")
    return model, history


__all__ = ["CHECKPOINT", "LOSS_COLUMNS", "build_model", "param_groups", "lr_at", "train_encoder"]
