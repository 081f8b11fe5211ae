"""The one metric engine of the evaluation suite: every method's reconstructions, the same metrics.

:func:`compute_scores` extracts every net's features **once** (batched, all layers of a net in one
pass, :func:`~.nets.extract_features`) and keeps per-image pixel scores and the GT × reconstruction
correlation matrices in a :class:`ScoreBank`; :meth:`ScoreBank.summary` then gives the metric values
(:mod:`.plan` names them; SPEC §6 and §4 "Identification" define them) on any subset of the images
(all test images, or all but an exclusion list) — identification is recomputed *within* the subset,
not averaged from the full set — and :meth:`ScoreBank.per_image` the per-image values.
:func:`metrics_table` / :func:`write_metrics_csv` turn result rows into the stage's CSV columns.

Several samples per image (recon ``(N, S, h, w, 3)``): the TN- columns use all samples as their
definition says; every other column is computed per sample s (sample s of every image against
the GT) and averaged over s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_path
from ..models.plan import Runtime
from .metrics import (
    as_uint8_images,
    corr_matrix,
    identification_from_mean_corr,
    nway_top1,
    pixel_corr,
    resize_for_pixels,
    ssim_pair,
    two_way_from_corr,
)
from .nets import extract_features
from .plan import (
    CONVENTIONS,
    META_COLUMNS,
    METRICS,
    NET_NAMES,
    NWAY_RE,
    PIXEL_CONVENTIONS,
    EvalSettings,
    metric_spec,
    resolve_metrics,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_eval_inputs(gt, recon, nets: dict, metrics, convention: str, nway_net: str, takagi_convention: str = "takagi"):
    """Validate one evaluation's inputs.

    gt: uint8 (N, H, W, 3); recon: uint8 (N, h, w, 3) or (N, S, h, w, 3), row i = image i;
    N >= 2. metrics: column names, or ``None`` for :func:`~.plan.resolve_metrics` ``(None,
    with_samples)``; no duplicates; every net they need must be a key of ``nets``.
    Returns (gt, recon as (N, S, h, w, 3), with_samples, metrics list, their :class:`MetricSpec`).
    """
    if convention not in PIXEL_CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} of the Brain-Diffuser columns; known: "
                         f"{', '.join(PIXEL_CONVENTIONS)}")
    if takagi_convention is not None and takagi_convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {takagi_convention!r} of the TN- columns; known: {', '.join(CONVENTIONS)}")
    gt = as_uint8_images(gt, "gt", ndim=4)
    rec_ndim = np.ndim(recon)
    if rec_ndim not in (4, 5):
        raise ValueError(f"recon: expected (N, h, w, 3) or (N, S, h, w, 3), got shape {np.shape(recon)}")
    with_samples = rec_ndim == 5
    recon = as_uint8_images(recon, "recon", ndim=rec_ndim)
    if not with_samples:
        recon = recon[:, None]
    n = recon.shape[0]
    if n != gt.shape[0]:
        raise ValueError(f"gt has N = {gt.shape[0]} images but recon has N = {n}; they must pair one to one")
    if n < 2:
        raise ValueError("evaluation needs at least 2 test images (identification compares images)")
    metrics = resolve_metrics(None, with_samples) if metrics is None else list(metrics)
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"duplicate metrics in {metrics}")
    specs = [metric_spec(m, nway_net) for m in metrics]
    if takagi_convention is None and any(sp.kind == "takagi" for sp in specs):
        raise ValueError("TN- columns need a takagi_convention (the settings have none)")
    missing = [sp for sp in specs if sp.net is not None and sp.net not in nets]
    if missing:
        raise ValueError(f"nets: metrics need nets that were not given: {sorted({sp.net for sp in missing})} "
                         f"(for {[sp.column for sp in missing]})")
    return gt, recon, with_samples, metrics, specs



def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, dtype):
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if device.type != "cuda" or dtype in (None, torch.float32):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@dataclass
class ScoreBank:
    """Everything the metrics need, computed once for N images x S samples.

    pixel: ``{"PixCorr"|"SSIM": float64 (N, S)}`` per image and sample.
    corr: ``{(net, layer, convention): float64 (N, N, S)}`` with ``corr[i, j, s] = corr(GT_i, recon_{j,s})``.
    logits: ``{(net, layer, convention): (gt (N, C), recon (N, S, C))}`` for n-way columns.
    convention: of the Brain-Diffuser / n-way columns; tn_convention: of the TN- columns.
    """

    metrics: list[str]
    n_images: int
    n_samples: int
    convention: str
    tn_convention: str | None = "takagi"
    nway_net: str = "inception_v3"
    nway_trials: int = 100
    seed: int = 0
    pixel: dict = field(default_factory=dict)
    corr: dict = field(default_factory=dict)
    logits: dict = field(default_factory=dict)

    def _idx(self, idx):
        if idx is None:
            return np.arange(self.n_images)
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (self.n_images,):
                raise ValueError(f"boolean subset must have shape ({self.n_images},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if len(idx) < 2:
            raise ValueError(f"a subset of {len(idx)} image(s) cannot be evaluated (identification compares >= 2)")
        if len(np.unique(idx)) != len(idx) or idx.min() < 0 or idx.max() >= self.n_images:
            raise ValueError("subset indices must be distinct and lie in 0..N-1")
        return idx

    def key(self, spec) -> tuple:
        """Where a column's features live: (net, layer, the column's convention)."""
        return spec.net, spec.layer, self.tn_convention if spec.kind == "takagi" else self.convention

    def summary(self, idx=None) -> dict:
        """``{"convention", "n_images", "n_samples", <metric>: value}`` on the images ``idx``
        (indices or boolean mask; default all) - the same numbers a whole-set call gives
        for ``gt[idx], recon[idx]``."""
        idx = self._idx(idx)
        out = {"convention": self.convention, "n_images": int(len(idx)), "n_samples": int(self.n_samples)}
        if any(metric_spec(m, self.nway_net).kind == "takagi" for m in self.metrics):
            out["tn_convention"] = self.tn_convention
        for m in self.metrics:
            sp = metric_spec(m, self.nway_net)
            if sp.kind in ("pixcorr", "ssim"):
                v = self.pixel[m][idx].mean()
            elif sp.kind == "nway":
                n_way = int(m.split("-", 1)[0])
                g, r = self.logits[self.key(sp)]
                v = np.mean([nway_top1(g[idx], r[idx, k], n=n_way, trials=self.nway_trials, seed=self.seed)
                             for k in range(self.n_samples)])
            else:
                c = self.corr[self.key(sp)][np.ix_(idx, idx)]  # (n, n, S)
                if sp.kind == "two_way":
                    v = np.mean([two_way_from_corr(c[:, :, k]) for k in range(self.n_samples)])
                elif sp.kind == "corr_dist":
                    v = np.mean(1.0 - np.einsum("iis->is", c))
                elif sp.kind == "takagi":
                    v = identification_from_mean_corr(c.mean(2))
                else:  # pragma: no cover
                    raise AssertionError(sp.kind)
            out[m] = float(v)
        return out

    def per_image(self) -> dict[str, np.ndarray]:
        """Per-image values on the full set, ``{metric: float64 (N,)}`` (mean over samples): PixCorr,
        SSIM, correlation distances; two-way: for reconstruction j, the fraction of GT i != j with
        r[i, j] < r[j, j]; Takagi: for GT i, the fraction of j != i with m[i, i] > m[i, j].
        Their means are the summary values. n-way columns are not per-image and are left out."""
        out = {}
        n = self.n_images
        for m in self.metrics:
            sp = metric_spec(m, self.nway_net)
            if sp.kind in ("pixcorr", "ssim"):
                out[m] = self.pixel[m].mean(1)
            elif sp.kind == "nway":
                continue
            else:
                c = self.corr[self.key(sp)]
                diag = np.einsum("iis->is", c)  # (N, S)
                if sp.kind == "two_way":
                    out[m] = (c < diag[None, :, :]).sum(0).mean(1) / (n - 1)
                elif sp.kind == "corr_dist":
                    out[m] = (1.0 - diag).mean(1)
                elif sp.kind == "takagi":
                    mm = c.mean(2)
                    out[m] = (np.diagonal(mm)[:, None] > mm).sum(1) / (n - 1)
        return out


def _pixel_scores(gt, recon, want, batch_size, device, convention: str, names=None) -> dict:
    """Per-image, per-sample PixCorr / SSIM of a convention (the definitions of :func:`~.metrics.pixcorr` /
    :func:`~.metrics.ssim_score` with its ``pixel_resize`` and ``ssim``): ``{column: (N, S)}``."""
    from skimage.color import rgb2gray

    conv = CONVENTIONS[convention]
    n, s = recon.shape[:2]
    size = gt.shape[1:3]
    if "SSIM" in want and min(size) < 11:
        raise ValueError(f"SSIM: gt images are {size} px; the 11x11 gaussian window (sigma 1.5) needs >= 11 px")
    out = {m: np.empty((n, s), dtype=np.float64) for m in want}
    for start in tqdm(range(0, n, batch_size), desc="pixel metrics", leave=False):
        g = gt[start : start + batch_size].astype(np.float64) / 255.0
        g_gray = [rgb2gray(x) for x in g] if "SSIM" in want else None
        for k in range(s):
            r = resize_for_pixels(recon[start : start + batch_size, k], size, conv.pixel_resize, device)
            for b in range(len(g)):
                i = start + b
                if "PixCorr" in want:
                    label = f"nsdId {names[i]}" if names is not None else f"image {i}"
                    out["PixCorr"][i, k] = pixel_corr(g[b], r[b], f"{label} (sample {k})")
                if "SSIM" in want:
                    out["SSIM"][i, k] = ssim_pair(g_gray[b], rgb2gray(r[b]), conv.ssim)
    return out


def compute_scores(gt, recon, nets: dict, settings: EvalSettings, *, metrics=None, runtime: Runtime | None = None,
                   nsd_ids=None) -> ScoreBank:
    """Per-image scores of one reconstruction set (see :class:`ScoreBank`).

    gt: uint8 (N, H, W, 3); recon: uint8 (N, h, w, 3) or (N, S, h, w, 3), row i = image i.
    nets: ``{net: model}`` (:func:`~.stage.load_eval_nets`) covering the metrics' nets.
    settings: the conventions (``convention`` for the Brain-Diffuser / n-way columns, ``takagi_convention`` for
    the TN- columns) and the n-way classifier, trials and seed (:class:`~.plan.EvalSettings`). metrics: column names (default: :func:`~.plan.resolve_metrics`).
    runtime: features are extracted once per net with all its layers (:func:`~.nets.extract_features`,
    ``batch_size`` images at a time, on ``device``, under autocast to ``dtype`` on CUDA; CPU always
    float32; default CPU, float32, 32); correlations are float64. nsd_ids only name images in errors.
    """
    runtime = runtime or Runtime("cpu", "float32", 32)
    convention, nway_net, nway_trials, seed = settings.convention, settings.nway_net, settings.nway_trials, settings.seed
    batch_size, device, dtype = runtime.batch_size, runtime.device, runtime.dtype
    gt, recon, _, metrics, specs = check_eval_inputs(gt, recon, nets, metrics, convention, nway_net,
                                                     settings.takagi_convention)
    n, s = recon.shape[:2]
    dev = _resolve_device(device)
    bank = ScoreBank(metrics, n, s, convention, settings.takagi_convention, nway_net, nway_trials, seed)

    pix = [sp.column for sp in specs if sp.kind in ("pixcorr", "ssim")]
    if pix:
        bank.pixel = _pixel_scores(gt, recon, pix, batch_size, dev, convention, names=nsd_ids)

    flat = recon.reshape(n * s, *recon.shape[2:])
    for net_name in NET_NAMES:
        # one feature pass per (net, convention): all the layers its columns read
        by_conv: dict[str, list] = {}
        for sp in specs:
            if sp.net == net_name:
                by_conv.setdefault(bank.key(sp)[2], []).append(sp)
        if not by_conv:
            continue
        model = nets[net_name]
        for conv, net_specs in by_conv.items():
            layers = list(dict.fromkeys(sp.layer for sp in net_specs))
            with _autocast(dev, dtype):
                gt_f = extract_features(net_name, model, gt, layers, conv, batch_size, dev)
                rec_f = extract_features(net_name, model, flat, layers, conv, batch_size, dev)
            for layer in layers:
                kinds = {sp.kind for sp in net_specs if sp.layer == layer}
                if kinds - {"nway"}:
                    c = corr_matrix(gt_f[layer], rec_f[layer], dev, a_name=f"gt {net_name}.{layer}",
                                    b_name=f"recon {net_name}.{layer}")
                    bank.corr[(net_name, layer, conv)] = c.numpy().reshape(n, n, s)
                if "nway" in kinds:
                    bank.logits[(net_name, layer, conv)] = (gt_f[layer], rec_f[layer].reshape(n, s, -1))
            del gt_f, rec_f
        model.to("cpu")
    return bank


def _column_order(columns) -> list[str]:
    fixed = list(META_COLUMNS) + list(METRICS)
    nway = sorted((c for c in columns if NWAY_RE.match(str(c))), key=lambda c: int(NWAY_RE.match(c).group(1)))
    ids = [c for c in columns if c not in fixed and c not in nway]
    return ids + [c for c in fixed if c in columns] + nway


def metrics_table(rows):
    """``pandas.DataFrame`` of result dicts (extra id keys such as method/variant/subject first,
    then :data:`META_COLUMNS`, then metric columns in table order)."""
    import pandas as pd

    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("metrics_table: no rows")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return pd.DataFrame(rows)[_column_order(columns)]


def write_metrics_csv(path, rows) -> None:
    """Write result dict(s) to ``path`` as CSV (atomic; columns as :func:`metrics_table`)."""
    if isinstance(rows, dict):
        rows = [rows]
    table = metrics_table(rows)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


__all__ = ["check_eval_inputs", "ScoreBank", "compute_scores", "metrics_table", "write_metrics_csv"]
