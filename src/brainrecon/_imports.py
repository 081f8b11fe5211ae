"""Resolve ``"module:attribute"`` references (import-cheap: no torch at import).

Model roles (:mod:`brainrecon.models.registry`) and feature spaces
(:mod:`brainrecon.features.spaces`) name their loaders and extractors as such strings, so the
light modules that define them (read by the Snakefile) never import the heavy code.
"""

from __future__ import annotations

import importlib


def resolve_ref(ref: str):
    """Import ``"package.module:name"`` (``name`` may be dotted, e.g. ``"Class.method"``) and return it."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
