"""The regression stage's plan (no torch): which fits a config asks for, their settings and files.

One ridge for every feature space: per subject × space, prepared betas -> test predictions
(``results/regression/{space}/subj{subject}.h5``; Brain-Diffuser spaces also the ROI-optimal patterns),
and the subject average of the predictions (``subjavg.h5``). Each space's entry of
``regression.spaces`` (defaults from the schema) says how it is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..features.plan import FEATURES
from ..nsd.plan import PREPARED, VOXEL_SETS

REGRESSION = "results/regression/{space}/subj{subject}.h5"
TRAIN_ON = ("averaged", "single_trial")
#: the stage-wide settings of regression (the rest are per space)
STAGE_KEYS = ("backend", "target_batch", "cv", "cv_score")


@dataclass(frozen=True)
class SpaceFit:
    """How one feature space is fitted (its ``regression.spaces`` entry and the stage-wide settings).

    alphas: one value = a fixed alpha (Brain-Diffuser), several = a CV grid (one alpha per target);
    train_on: ``averaged`` (repetition-averaged training images) or ``single_trial``; voxels: ``"all"``
    (of the prepared voxel set) or ``{roi file: [labels]}``; restandardise: also write Brain-Diffuser's
    re-standardised predictions; fit_intercept: centre the targets on their training mean and add it back
    (Brain-Diffuser's sklearn Ridge) or not (Takagi's himalaya RidgeCV); prepared: the prepared voxel set
    read (``nsdgeneral``, ``streams``, ``brainmask``); backend: himalaya backend; target_batch: target
    columns per batch; cv: CV folds of the grid; cv_score: how the folds are scored (``l2_neg_loss``,
    ``r2``).
    """

    alphas: tuple[float, ...]
    train_on: str
    voxels: Any
    restandardise: bool
    fit_intercept: bool
    prepared: str
    backend: str
    target_batch: int
    cv: int
    cv_score: str

    def __post_init__(self):
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be 'averaged' or 'single_trial', got {self.train_on!r}")
        if self.prepared not in VOXEL_SETS:
            raise ValueError(f"prepared must be one of {VOXEL_SETS}, got {self.prepared!r}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    @classmethod
    def from_config(cls, config: Mapping, space: str) -> "SpaceFit":
        return cls(**space_settings(config, space))

    @classmethod
    def build(cls, **values) -> "SpaceFit":
        """From some settings, the rest the schema's defaults (library use outside the workflow)."""
        from ..schema import section_settings

        stage = section_settings("regression", {k: values.pop(k) for k in STAGE_KEYS if k in values})
        entry = section_settings("regression.spaces.*", values)
        return cls(**entry, **{k: stage[k] for k in STAGE_KEYS})


def space_settings(config: Mapping, space: str) -> dict:
    """The settings of ``space`` from a validated config: its ``regression.spaces`` entry (defaults filled
    by the schema) and the stage-wide ``backend``, ``target_batch``, ``cv`` — the fit rule's params."""
    spaces = config["regression"]["spaces"]
    if space not in spaces:
        raise ValueError(f"config key regression.spaces has no entry for feature space {space!r} "
                         f"(configured: {sorted(spaces)})")
    entry = dict(spaces[space])
    if "alphas" not in entry:
        raise ValueError(f"config key regression.spaces.{space}.alphas: missing (required)")
    return {**entry, **{k: config["regression"][k] for k in STAGE_KEYS}}


def inputs(config: Mapping, space: str, subject: str) -> dict:
    """Files one fit reads: the prepared betas of the space's voxel set and the space's features."""
    voxels = space_settings(config, space)["prepared"]
    return {"prepared": PREPARED.format(voxels=voxels, subject=subject),
            "features": FEATURES.format(space=space, subject=subject)}


def regression_file(space: str, subject: str) -> str:
    """A space's predictions for a subject; ``"avg"`` -> ``subjavg.h5`` (the subject average)."""
    return REGRESSION.format(space=space, subject=subject)


__all__ = ["REGRESSION", "TRAIN_ON", "STAGE_KEYS", "SpaceFit", "space_settings", "inputs", "regression_file"]
