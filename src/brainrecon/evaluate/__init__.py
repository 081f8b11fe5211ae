"""brainrecon.evaluate: one metric suite for every reconstruction method.

* :mod:`.plan` (no torch) - the metric columns, their nets and layers, the preprocessing conventions,
  the evaluation settings and files;
* :mod:`.metrics` - metric primitives on images / features: :func:`pixcorr`, :func:`ssim_score`,
  :func:`two_way_identification` (Brain-Diffuser/MindEye), :func:`identification_over_samples`
  (Takagi & Nishimoto), :func:`correlation_distance` (EffNet-B, SwAV), :func:`nway_top1` (CnD);
* :mod:`.nets` - evaluation networks (:func:`build_eval_net`: tiny | pretrained | path),
  preprocessing (:func:`preprocess`) and :func:`extract_features` (forward hooks, batched);
* :mod:`.suite` - the one metric engine: :func:`compute_scores` -> :class:`ScoreBank` (summaries on any
  subset of the images, per-image values), and the CSV tables;
* :mod:`.stage` - the stage: reconstructions and ground truth in, metric CSVs out.

See SPEC.md §6 and §4 "Identification" for the definitions reproduced here. Importing the package is
cheap; the names below load on first use.
"""

import importlib

_LAZY = {
    **dict.fromkeys(("SSIM_KWARGS", "correlation_distance", "corr_matrix", "identification_from_mean_corr",
                     "identification_over_samples", "nway_top1", "pixcorr", "ssim_score", "two_way_from_corr",
                     "two_way_identification"), "metrics"),
    **dict.fromkeys(("STANDARD_LAYERS", "build_eval_net", "extract_features", "load_swav_state_dict",
                     "preprocess"), "nets"),
    **dict.fromkeys(("ScoreBank", "compute_scores", "metrics_table", "write_metrics_csv"), "suite"),
    **dict.fromkeys(("BRAINDIFFUSER_COLUMNS", "CONVENTIONS", "META_COLUMNS", "METRICS", "NET_NAMES",
                     "TAKAGI_COLUMNS", "EvalSettings", "default_metrics", "metric_spec", "required_nets",
                     "resolve_metrics"), "plan"),
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
