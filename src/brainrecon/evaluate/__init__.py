"""brainrecon.evaluate: one metric suite for every reconstruction method.

* :mod:`.metrics` - metric primitives on images / features: :func:`pixcorr`, :func:`ssim_score`,
  :func:`two_way_identification` (Brain-Diffuser/MindEye), :func:`identification_over_samples`
  (Takagi & Nishimoto), :func:`correlation_distance` (EffNet-B, SwAV), :func:`nway_top1` (CnD).
* :mod:`.nets` - evaluation networks (:func:`build_eval_net`: tiny | pretrained | path),
  preprocessing conventions (:func:`preprocess`: "braindiffuser" | "mindeye") and
  :func:`extract_features` (forward hooks, batched).
* :mod:`.suite` - :func:`evaluate_all` combining them into the stable table columns
  (:data:`BRAINDIFFUSER_COLUMNS`, :data:`TAKAGI_COLUMNS`, ``{n}-way-top1``), and CSV helpers.

See SPEC.md §6 and §4 "Identification" for the definitions reproduced here.
"""

from .metrics import (
    SSIM_KWARGS,
    correlation_distance,
    corr_matrix,
    identification_from_mean_corr,
    identification_over_samples,
    nway_top1,
    pixcorr,
    ssim_score,
    two_way_from_corr,
    two_way_identification,
)
from .nets import (
    CONVENTIONS,
    NET_NAMES,
    STANDARD_LAYERS,
    build_eval_net,
    extract_features,
    load_swav_state_dict,
    preprocess,
)
from .suite import (
    BRAINDIFFUSER_COLUMNS,
    META_COLUMNS,
    METRICS,
    TAKAGI_COLUMNS,
    default_metrics,
    evaluate_all,
    metrics_table,
    required_nets,
    write_metrics_csv,
)

__all__ = [
    "SSIM_KWARGS",
    "correlation_distance",
    "corr_matrix",
    "identification_from_mean_corr",
    "identification_over_samples",
    "nway_top1",
    "pixcorr",
    "ssim_score",
    "two_way_from_corr",
    "two_way_identification",
    "CONVENTIONS",
    "NET_NAMES",
    "STANDARD_LAYERS",
    "build_eval_net",
    "extract_features",
    "load_swav_state_dict",
    "preprocess",
    "BRAINDIFFUSER_COLUMNS",
    "META_COLUMNS",
    "METRICS",
    "TAKAGI_COLUMNS",
    "default_metrics",
    "evaluate_all",
    "metrics_table",
    "required_nets",
    "write_metrics_csv",
]
