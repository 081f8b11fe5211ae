"""The metric suite computed a second, independent way, for the tests of the one engine.

:func:`brainrecon.evaluate.suite.compute_scores` keeps per-image scores and GT x reconstruction
correlation matrices and derives every metric from them; :func:`reference_metrics` instead calls the
metric primitives of :mod:`brainrecon.evaluate.metrics` (each checked against hand-derived cases and
numpy / scikit-image references in test_evaluate.py) on features extracted by
:func:`brainrecon.evaluate.nets.extract_features`, image set by image set. The two agreeing on the
same inputs checks the engine's bookkeeping (subsets, samples, per-net feature passes).
"""

from __future__ import annotations

import numpy as np

from brainrecon.evaluate.metrics import (
    as_uint8_images,
    correlation_distance,
    identification_over_samples,
    nway_top1,
    pixcorr,
    ssim_score,
    two_way_identification,
)
from brainrecon.evaluate.nets import extract_features
from brainrecon.evaluate.plan import NET_NAMES, NWAY_RE, metric_spec, resolve_metrics


def reference_metrics(gt, recon, nets, convention="braindiffuser", metrics=None, batch_size=32, nway_net="inception_v3",
                      nway_trials=100, seed=0) -> dict:
    """``{"convention", "n_images", "n_samples", <metric>: value}`` from the primitives (module docstring)."""
    gt = as_uint8_images(gt, "gt", ndim=4)
    with_samples = np.ndim(recon) == 5
    recon = as_uint8_images(recon, "recon", ndim=np.ndim(recon))
    if not with_samples:
        recon = recon[:, None]
    n, s = recon.shape[:2]
    metrics = resolve_metrics(None, with_samples) if metrics is None else list(metrics)
    specs = [metric_spec(m, nway_net) for m in metrics]
    values = {}
    for sp in specs:
        if sp.kind == "pixcorr":
            values[sp.column] = float(np.mean([pixcorr(gt, recon[:, k]) for k in range(s)]))
        elif sp.kind == "ssim":
            values[sp.column] = float(np.mean([ssim_score(gt, recon[:, k]) for k in range(s)]))
    flat = recon.reshape(n * s, *recon.shape[2:])
    for net_name in NET_NAMES:
        net_specs = [sp for sp in specs if sp.net == net_name]
        if not net_specs:
            continue
        layers = list(dict.fromkeys(sp.layer for sp in net_specs))
        gt_f = extract_features(net_name, nets[net_name], gt, layers, convention, batch_size)
        rec_f = extract_features(net_name, nets[net_name], flat, layers, convention, batch_size)
        for sp in net_specs:
            g, r = gt_f[sp.layer], rec_f[sp.layer].reshape(n, s, -1)
            if sp.kind == "two_way":
                v = np.mean([two_way_identification(g, r[:, k]) for k in range(s)])
            elif sp.kind == "corr_dist":
                v = correlation_distance(g, r)
            elif sp.kind == "takagi":
                v = identification_over_samples(g, r)
            else:
                n_way = int(NWAY_RE.match(sp.column).group(1))
                v = np.mean([nway_top1(g, r[:, k], n=n_way, trials=nway_trials, seed=seed) for k in range(s)])
            values[sp.column] = float(v)
    return {"convention": convention, "n_images": int(n), "n_samples": int(s), **{m: values[m] for m in metrics}}
