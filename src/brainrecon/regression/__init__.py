"""brainrecon.regression: one ridge for every feature space.

* :class:`KernelRidgeDecoder` — multi-target ridge (fixed alpha or K-fold CV grid, per
  target / per group / global) sharing one factorisation of the standardised design
  across every target, alpha and fold; himalaya backends (numpy, torch, torch_cuda).
* :func:`restandardise` — Brain-Diffuser re-standardisation of predicted features.
* :func:`ridge_predict_test` — train -> test (and extra pattern sets) predictions written
  to HDF5 in target batches, atomically.
* :class:`TargetMatrix`, :func:`target_stats` — column-batched access to (n, *shape)
  targets (numpy or h5py).
"""

import importlib

#: public name -> submodule (imported on first use: the Snakefile reads the torch-free plan only)
_LAZY = {
    "restandardise": "pipeline",
    "ridge_predict_test": "pipeline",
    "KernelRidgeDecoder": "ridge",
    "RidgeFactorisation": "ridge",
    "resolve_backend": "ridge",
    "TargetMatrix": "targets",
    "column_batches": "targets",
    "target_stats": "targets",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KernelRidgeDecoder",
    "RidgeFactorisation",
    "TargetMatrix",
    "column_batches",
    "resolve_backend",
    "restandardise",
    "ridge_predict_test",
    "target_stats",
]
