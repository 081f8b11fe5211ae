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

from brainrecon.regression.pipeline import restandardise, ridge_predict_test
from brainrecon.regression.ridge import KernelRidgeDecoder, RidgeFactorisation, resolve_backend
from brainrecon.regression.targets import TargetMatrix, column_batches, target_stats

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
