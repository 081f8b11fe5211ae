"""Numbers reported in the papers (reference rows of the tables; never computed here).

Sources (SPEC.md §3 and §4; the papers' text in the project's papers folder):

* Brain-Diffuser (Ozcelik & VanRullen 2023), Table 1: 982 test images, the mean of subjects
  1, 2, 5, 7, and subject 1 alone; the Only-VDVAE ablation for subject 1. The Table 1 row of
  Takagi et al. (CVPR 2023) as Brain-Diffuser reported it is kept for the method comparison.
* Takagi & Nishimoto (2023, "decoded inputs" follow-up), Table 1: identification over 5 samples,
  per subject and mean ± s.d. over subjects 1, 2, 5, 7, for the CVPR baseline [30] and the
  +T, +T+G, +T+G+D variants; columns CLIP early/middle/late, CNN (AlexNet) early/middle/late,
  Inception-v3.

Values are fractions (identification 0.942 = 94.2 %), keyed by our column names
(:mod:`brainrecon.evaluate.suite`). ``subjects`` is "1, 2, 5, 7" for means or one subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PaperRow", "BRAINDIFFUSER_PAPER", "TAKAGI_PAPER", "COMPARISON_PAPER", "PAPER_CONVENTIONS", "paper_rows"]

#: the evaluation convention (brainrecon.evaluate.plan.CONVENTIONS) that produced each table kind's paper numbers:
#: (of the Brain-Diffuser columns, of the TN- columns)
PAPER_CONVENTIONS = {
    "braindiffuser": ("braindiffuser_published", None),
    "comparison": ("braindiffuser_published", None),  # Brain-Diffuser's Table 1, Takagi's row as it reported it
    "takagi": (None, "takagi"),
}


@dataclass(frozen=True)
class PaperRow:
    """One reference row: ``label``, ``subjects`` ("1, 2, 5, 7" = mean over them, or "1"),
    ``values`` {column: value}, ``sd`` {column: s.d. over subjects} where the paper gives it,
    ``source`` (paper and table), ``variant`` (our variant name it corresponds to, if any)."""

    label: str
    subjects: str
    values: dict
    source: str
    variant: str | None = None
    sd: dict = field(default_factory=dict)


_BD = "Ozcelik & VanRullen 2023, Table 1"
_BD_COLS = ("PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "EffNet-B", "SwAV")


def _bd(values):
    return dict(zip(_BD_COLS, values))


BRAINDIFFUSER_PAPER = [
    PaperRow("Brain-Diffuser", "1, 2, 5, 7", _bd((0.254, 0.356, 0.942, 0.962, 0.872, 0.915, 0.775, 0.423)), _BD,
             "full"),
    PaperRow("Brain-Diffuser", "1", _bd((0.305, 0.367, 0.967, 0.974, 0.878, 0.925, 0.768, 0.415)), _BD, "full"),
    PaperRow("Only-VDVAE", "1", _bd((0.358, 0.437, 0.977, 0.976, 0.770, 0.711, 0.906, 0.581)), _BD, "only_vdvae"),
]

_TN = "Takagi & Nishimoto 2023 (decoded inputs), Table 1"
_TN_COLS = ("TN-CLIP-early", "TN-CLIP-mid", "TN-CLIP-late", "TN-AlexNet-early", "TN-AlexNet-mid",
            "TN-AlexNet-late", "TN-Inception")
_TN_LABELS = {"[30]": "baseline (CVPR 2023)", "+T": "+T", "+T+G": "+T+G", "+T+G+D": "+T+G+D"}
_TN_SUBJECTS = {
    "1": {
        "[30]": (0.795, 0.732, 0.774, 0.851, 0.831, 0.830, 0.759),
        "+T": (0.922, 0.836, 0.859, 0.901, 0.934, 0.926, 0.877),
        "+T+G": (0.910, 0.848, 0.870, 0.922, 0.949, 0.938, 0.879),
        "+T+G+D": (0.901, 0.829, 0.877, 0.905, 0.944, 0.917, 0.856),
    },
    "2": {
        "[30]": (0.772, 0.709, 0.768, 0.830, 0.819, 0.815, 0.725),
        "+T": (0.904, 0.818, 0.842, 0.873, 0.922, 0.923, 0.854),
        "+T+G": (0.889, 0.834, 0.853, 0.912, 0.944, 0.933, 0.867),
        "+T+G+D": (0.885, 0.821, 0.869, 0.892, 0.934, 0.905, 0.848),
    },
    "5": {
        "[30]": (0.742, 0.707, 0.778, 0.800, 0.817, 0.825, 0.761),
        "+T": (0.874, 0.808, 0.846, 0.834, 0.914, 0.922, 0.866),
        "+T+G": (0.802, 0.779, 0.852, 0.809, 0.905, 0.920, 0.867),
        "+T+G+D": (0.788, 0.753, 0.861, 0.791, 0.897, 0.885, 0.842),
    },
    "7": {
        "[30]": (0.726, 0.693, 0.753, 0.775, 0.793, 0.801, 0.726),
        "+T": (0.839, 0.775, 0.819, 0.799, 0.885, 0.890, 0.835),
        "+T+G": (0.861, 0.814, 0.836, 0.875, 0.919, 0.912, 0.843),
        "+T+G+D": (0.845, 0.781, 0.858, 0.846, 0.907, 0.885, 0.825),
    },
}
_TN_MEAN = {  # (mean, s.d.) over the four subjects, as printed
    "[30]": ((0.759, 0.710, 0.768, 0.814, 0.815, 0.818, 0.743), (0.027, 0.014, 0.010, 0.029, 0.014, 0.011, 0.017)),
    "+T": ((0.885, 0.809, 0.841, 0.852, 0.914, 0.915, 0.858), (0.032, 0.022, 0.014, 0.039, 0.018, 0.014, 0.016)),
    "+T+G": ((0.866, 0.819, 0.853, 0.880, 0.929, 0.926, 0.864), (0.041, 0.026, 0.012, 0.044, 0.018, 0.010, 0.013)),
    "+T+G+D": ((0.855, 0.796, 0.866, 0.858, 0.921, 0.898, 0.843), (0.043, 0.031, 0.007, 0.045, 0.019, 0.014, 0.011)),
}

_TN_VARIANTS = {"[30]": "zc", "+T": "t"}  # our variants that implement the row's method (+G is not implemented)

TAKAGI_PAPER = [
    PaperRow(_TN_LABELS[k], "1, 2, 5, 7", dict(zip(_TN_COLS, m)), _TN, _TN_VARIANTS.get(k), sd=dict(zip(_TN_COLS, sd)))
    for k, (m, sd) in _TN_MEAN.items()
] + [
    PaperRow(_TN_LABELS[k], subj, dict(zip(_TN_COLS, v)), _TN, _TN_VARIANTS.get(k))
    for subj, rows in _TN_SUBJECTS.items()
    for k, v in rows.items()
]

COMPARISON_PAPER = [
    BRAINDIFFUSER_PAPER[0],
    PaperRow("Takagi et al. (CVPR 2023), as reported by Brain-Diffuser", "1, 2, 5, 7",
             {"AlexNet(2)": 0.830, "AlexNet(5)": 0.830, "Inception": 0.760, "CLIP": 0.770}, _BD),
]

_TABLES = {"braindiffuser": BRAINDIFFUSER_PAPER, "takagi": TAKAGI_PAPER, "comparison": COMPARISON_PAPER}


def paper_rows(kind: str, per_subject: bool) -> list[PaperRow]:
    """Reference rows for a table kind (``braindiffuser`` | ``takagi`` | ``comparison``): the
    mean-over-subjects rows (``per_subject=False``) or the single-subject rows (``True``)."""
    if kind not in _TABLES:
        raise ValueError(f"no paper numbers for table kind {kind!r}; known: {sorted(_TABLES)}")
    rows = _TABLES[kind]
    return [r for r in rows if ("," in r.subjects) != per_subject]
