"""Synthetic mini-NSD: a seeded generator that writes the real NSD layout with a planted signal.

Public API::

    generate(root, coco_root, SynthSettings.build(subjects=(1, 2, 5, 7), sessions=2, **synth_keys),
             shapes=None, progress=True) -> dict
    DEFAULT_SHAPES                      # subject -> (X, Y, Z) func1pt8mm shape
    load_planted(root) -> dict          # parsed <root>/synthetic_planted.json
    planted_drive(root, subject) -> (ijk (V, 3), group (V,), nsd_ids (N,), drive (N, V) psc)

See :mod:`brainrecon.synth.planted` for the exact signal model and
:mod:`brainrecon.synth.design` / :mod:`brainrecon.synth.volumes` for the design and geometry.
"""

from .generate import DEFAULT_SHAPES, SynthSettings, generate
from .images import CATEGORIES
from .planted import PLANTED_FILE, load_planted, planted_drive

__all__ = ["generate", "SynthSettings", "DEFAULT_SHAPES", "load_planted", "planted_drive", "CATEGORIES", "PLANTED_FILE"]
