"""The reconstruction stage's plan (no torch): the configured methods and their output folders.

Each method is a package of its own with its own plan (:mod:`.braindiffuser.plan`, :mod:`.takagi.plan`);
this module lists them for the stages downstream (evaluation, report): which variants and subjects
exist, and whether a method writes several samples per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..nsd.plan import subjects as nsd_subjects
from .braindiffuser import plan as braindiffuser
from .takagi import plan as takagi

#: every method's images.h5
RECON = "results/reconstruct/{method}/{variant}/subj{subject}/images.h5"
#: the methods' plans, in table order
METHODS = {"braindiffuser": braindiffuser, "takagi": takagi}
#: methods whose images.h5 hold several generated samples per image (n, samples, S, S, 3)
MULTI_SAMPLE = frozenset({"takagi"})


@dataclass(frozen=True)
class MethodPlan:
    """One configured method: ``variants`` (config order), ``subjects`` ("01", ..., "avg"),
    ``multi_sample`` (images.h5 holds several samples per image)."""

    method: str
    variants: tuple
    subjects: tuple
    multi_sample: bool

    def recon_file(self, variant, subject) -> str:
        return RECON.format(method=self.method, variant=variant, subject=subject)


def method_plans(config: Mapping) -> list[MethodPlan]:
    """The enabled methods of a validated config (a method without variants is left out)."""
    plans = []
    for name in METHODS:
        cfg = config["methods"][name]
        if not cfg["enabled"] or not cfg["variants"]:
            continue
        avg = ("avg",) if cfg.get("subject_average", False) else ()
        plans.append(MethodPlan(name, tuple(cfg["variants"]), tuple(nsd_subjects(config)) + avg, name in MULTI_SAMPLE))
    return plans


def targets(config: Mapping) -> list[str]:
    """Every reconstruction output of the configured methods."""
    return [t for plan in METHODS.values() for t in plan.targets(config)]


__all__ = ["RECON", "METHODS", "MULTI_SAMPLE", "MethodPlan", "method_plans", "targets"]
