"""One metric suite for every method: :func:`evaluate_all` and the stable column names.

Columns (CSV headers; values are floats, identification as fractions in [0, 1]):

Brain-Diffuser Table 1 (:data:`BRAINDIFFUSER_COLUMNS`)
  ``PixCorr``      pixel correlation (higher is better)
  ``SSIM``         grayscale SSIM (higher)
  ``AlexNet(2)``   two-way identification, AlexNet ``features.4`` (higher)
  ``AlexNet(5)``   two-way identification, AlexNet ``features.11`` (higher)
  ``Inception``    two-way identification, Inception-v3 ``avgpool`` (higher)
  ``CLIP``         two-way identification, CLIP ViT-L/14 ``image_embeds`` (higher)
  ``EffNet-B``     correlation distance, EfficientNet-B1 ``avgpool`` (lower)
  ``SwAV``         correlation distance, SwAV ResNet-50 ``avgpool`` (lower)
Takagi & Nishimoto identification over samples (:data:`TAKAGI_COLUMNS`, "TN-" prefix)
  ``TN-CLIP-early`` / ``-mid`` / ``-late``     CLIP ``hidden_states.6`` / ``hidden_states.12`` / ``image_embeds``
  ``TN-AlexNet-early`` / ``-mid`` / ``-late``  AlexNet ``features.5`` / ``features.12`` / ``classifier.5``
  ``TN-Inception``                              Inception-v3 ``avgpool``
CnD (optional)
  ``{n}-way-top1`` e.g. ``50-way-top1``: n-way top-1 with an ImageNet classifier's logits
  (``nway_net``; default Inception-v3 ``fc``; CnD/MinD-Vis used a ViT-H/14 classifier).
Metadata (:data:`META_COLUMNS`): ``convention`` (preprocessing convention name), ``n_images``,
``n_samples``.

Several samples per image (recon ``(N, S, h, w, 3)``): the TN- columns use all samples as their
definition says; every other column is computed per sample s (sample s of every image against
the GT) and averaged over s. Defaults: the Brain-Diffuser columns, plus the TN- columns when
recon has a sample axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..io import atomic_path
from .metrics import (
    as_uint8_images,
    correlation_distance,
    identification_over_samples,
    nway_top1,
    pixcorr,
    ssim_score,
    two_way_identification,
)
from .nets import CONVENTIONS, NET_NAMES, extract_features

__all__ = [
    "MetricSpec",
    "METRICS",
    "BRAINDIFFUSER_COLUMNS",
    "TAKAGI_COLUMNS",
    "META_COLUMNS",
    "NWAY_LAYERS",
    "metric_spec",
    "default_metrics",
    "check_eval_inputs",
    "required_nets",
    "evaluate_all",
    "metrics_table",
    "write_metrics_csv",
]


@dataclass(frozen=True)
class MetricSpec:
    """One column: ``kind`` in pixcorr | ssim | two_way | corr_dist | takagi | nway."""

    column: str
    kind: str
    net: str | None
    layer: str | None
    higher_is_better: bool
    description: str


_SPECS = [
    MetricSpec("PixCorr", "pixcorr", None, None, True, "pixel Pearson r, recon resized to GT size"),
    MetricSpec("SSIM", "ssim", None, None, True, "grayscale SSIM (gaussian, sigma 1.5), recon resized to GT size"),
    MetricSpec("AlexNet(2)", "two_way", "alexnet", "features.4", True, "two-way identification"),
    MetricSpec("AlexNet(5)", "two_way", "alexnet", "features.11", True, "two-way identification"),
    MetricSpec("Inception", "two_way", "inception_v3", "avgpool", True, "two-way identification"),
    MetricSpec("CLIP", "two_way", "clip", "image_embeds", True, "two-way identification"),
    MetricSpec("EffNet-B", "corr_dist", "efficientnet_b1", "avgpool", False, "mean correlation distance"),
    MetricSpec("SwAV", "corr_dist", "swav", "avgpool", False, "mean correlation distance"),
    MetricSpec("TN-CLIP-early", "takagi", "clip", "hidden_states.6", True, "Takagi identification over samples"),
    MetricSpec("TN-CLIP-mid", "takagi", "clip", "hidden_states.12", True, "Takagi identification over samples"),
    MetricSpec("TN-CLIP-late", "takagi", "clip", "image_embeds", True, "Takagi identification over samples"),
    MetricSpec("TN-AlexNet-early", "takagi", "alexnet", "features.5", True, "Takagi identification over samples"),
    MetricSpec("TN-AlexNet-mid", "takagi", "alexnet", "features.12", True, "Takagi identification over samples"),
    MetricSpec("TN-AlexNet-late", "takagi", "alexnet", "classifier.5", True, "Takagi identification over samples"),
    MetricSpec("TN-Inception", "takagi", "inception_v3", "avgpool", True, "Takagi identification over samples"),
]
#: Fixed columns, in table order.
METRICS: dict[str, MetricSpec] = {s.column: s for s in _SPECS}
BRAINDIFFUSER_COLUMNS = ("PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "EffNet-B", "SwAV")
TAKAGI_COLUMNS = tuple(c for c in METRICS if c.startswith("TN-"))
META_COLUMNS = ("convention", "n_images", "n_samples")
#: ImageNet logits layer per classifier net, for ``{n}-way-top1``.
NWAY_LAYERS = {"inception_v3": "fc", "alexnet": "classifier.6", "efficientnet_b1": "classifier.1"}
_NWAY_RE = re.compile(r"^(\d+)-way-top1$")


def metric_spec(column: str, nway_net: str = "inception_v3") -> MetricSpec:
    """The :class:`MetricSpec` of ``column`` (fixed columns or ``{n}-way-top1``); ValueError if unknown."""
    if column in METRICS:
        return METRICS[column]
    m = _NWAY_RE.match(str(column))
    if m:
        if nway_net not in NWAY_LAYERS:
            raise ValueError(f"{column}: nway_net {nway_net!r} has no ImageNet logits; use one of {list(NWAY_LAYERS)}")
        n = int(m.group(1))
        return MetricSpec(column, "nway", nway_net, NWAY_LAYERS[nway_net], True, f"{n}-way top-1 accuracy")
    raise ValueError(f"unknown metric {column!r}; known: {', '.join(METRICS)} and '<n>-way-top1' (e.g. 50-way-top1)")


def default_metrics(with_samples: bool) -> list[str]:
    """Brain-Diffuser columns, plus the Takagi (TN-) columns when there is a sample axis."""
    return list(BRAINDIFFUSER_COLUMNS) + (list(TAKAGI_COLUMNS) if with_samples else [])


def required_nets(metrics, nway_net: str = "inception_v3") -> list[str]:
    """Evaluation nets (names of :data:`~brainrecon.evaluate.nets.NET_NAMES`) that ``metrics`` need."""
    nets = {metric_spec(m, nway_net).net for m in metrics} - {None}
    return [n for n in NET_NAMES if n in nets]


def check_eval_inputs(gt, recon, nets: dict, metrics, convention: str, nway_net: str, default_metrics):
    """Validate one evaluation's inputs (shared by :func:`evaluate_all` and
    :func:`~brainrecon.evaluate.stage.compute_scores`).

    gt: uint8 (N, H, W, 3); recon: uint8 (N, h, w, 3) or (N, S, h, w, 3), row i = image i;
    N >= 2. metrics: column names, or ``None`` for ``default_metrics(with_samples)``; no
    duplicates; every net they need must be a key of ``nets``.
    Returns (gt, recon as (N, S, h, w, 3), with_samples, metrics list, their :class:`MetricSpec`).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown preprocessing convention {convention!r}; known: {', '.join(CONVENTIONS)}")
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
    metrics = default_metrics(with_samples) if metrics is None else list(metrics)
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"duplicate metrics in {metrics}")
    specs = [metric_spec(m, nway_net) for m in metrics]
    missing = [sp for sp in specs if sp.net is not None and sp.net not in nets]
    if missing:
        raise ValueError(f"nets: metrics need nets that were not given: {sorted({sp.net for sp in missing})} "
                         f"(for {[sp.column for sp in missing]})")
    return gt, recon, with_samples, metrics, specs


def evaluate_all(
    gt,
    recon,
    nets: dict,
    convention: str = "braindiffuser",
    metrics=None,
    batch_size: int = 32,
    device=None,
    nway_net: str = "inception_v3",
    nway_trials: int = 100,
    seed: int = 0,
) -> dict:
    """Every requested metric for one (method, variant, subject): ``{column: value}``.

    gt: uint8 (N, H, W, 3) ground-truth test images (NSD: 425 px), row i = test image i.
    recon: uint8 (N, h, w, 3), or (N, S, h, w, 3) with S generated samples per image, same order.
    nets: ``{net_name: model}`` from :func:`~brainrecon.evaluate.nets.build_eval_net`; only the
    nets the metrics need must be present. convention: preprocessing convention
    (:data:`~brainrecon.evaluate.nets.CONVENTIONS`), recorded in the result's ``convention``.
    metrics: column names (module docstring); default :func:`default_metrics`.
    Returns ``{"convention", "n_images", "n_samples", <metric columns in the order asked>}``.
    Features are computed once per net (all its layers in one pass) and freed after use.
    """
    gt, recon, _, metrics, specs = check_eval_inputs(gt, recon, nets, metrics, convention, nway_net,
                                                     default_metrics)
    n, s = recon.shape[:2]
    unknown_nets = set(nets) - set(NET_NAMES)
    if unknown_nets:
        raise ValueError(f"nets: unknown net names {sorted(unknown_nets)}; known: {', '.join(NET_NAMES)}")

    values: dict[str, float] = {}
    for sp in specs:
        if sp.kind == "pixcorr":
            values[sp.column] = float(np.mean([pixcorr(gt, recon[:, k], device=device) for k in range(s)]))
        elif sp.kind == "ssim":
            values[sp.column] = float(np.mean([ssim_score(gt, recon[:, k], device=device) for k in range(s)]))

    flat_recon = recon.reshape(n * s, *recon.shape[2:])
    for net_name in NET_NAMES:
        net_specs = [sp for sp in specs if sp.net == net_name]
        if not net_specs:
            continue
        layers = list(dict.fromkeys(sp.layer for sp in net_specs))
        model = nets[net_name]
        gt_f = extract_features(net_name, model, gt, layers, convention, batch_size, device)
        rec_f = extract_features(net_name, model, flat_recon, layers, convention, batch_size, device)
        for sp in net_specs:
            g = gt_f[sp.layer]
            r = rec_f[sp.layer].reshape(n, s, -1)
            if sp.kind == "two_way":
                v = np.mean([two_way_identification(g, r[:, k], device=device) for k in range(s)])
            elif sp.kind == "corr_dist":
                v = correlation_distance(g, r, device=device)
            elif sp.kind == "takagi":
                v = identification_over_samples(g, r, device=device)
            elif sp.kind == "nway":
                nway_n = int(_NWAY_RE.match(sp.column).group(1))
                v = np.mean([nway_top1(g, r[:, k], n=nway_n, trials=nway_trials, seed=seed) for k in range(s)])
            else:  # pragma: no cover - specs are built above
                raise AssertionError(sp.kind)
            values[sp.column] = float(v)
        del gt_f, rec_f

    out: dict = {"convention": convention, "n_images": int(n), "n_samples": int(s)}
    out.update({m: values[m] for m in metrics})
    return out


def _column_order(columns) -> list[str]:
    fixed = list(META_COLUMNS) + list(METRICS)
    nway = sorted((c for c in columns if _NWAY_RE.match(str(c))), key=lambda c: int(_NWAY_RE.match(c).group(1)))
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
