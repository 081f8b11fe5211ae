"""What the evaluate / report rules produce for a config (pure Python: no torch, cheap to import).

The Snakefile's ``evaluate.smk`` / ``report.smk`` call these to list their targets and inputs,
so the same logic is testable without Snakemake:

* :func:`method_plan` - the configured reconstruction methods: variants, subjects (+ "avg"),
  whether their ``images.h5`` carry several samples per image;
* :func:`evaluation_files` - ``results/evaluate/{method}/{variant}/subj{XX}.csv`` (+ ``_excl-<tag>``
  twins, + per-image CSVs);
* :func:`table_names` / :func:`table_files` - ``results/tables/<name>{,_excl-<tag>}.{csv,md,html}``;
* :func:`figure_plan` - ``results/figures/*.png`` with the reconstruction files each one reads;
* :func:`eval_nets_needed` - evaluation nets the configured metrics need (for the fetch rule).

:data:`METRIC_NETS` mirrors the nets of :data:`brainrecon.evaluate.suite.METRICS` (a test keeps them
equal) so that parsing the workflow does not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KNOWN_METHODS",
    "MULTI_SAMPLE_METHODS",
    "METRIC_NETS",
    "METHOD_LABELS",
    "VARIANT_LABELS",
    "variant_label",
    "TABLE_TITLES",
    "NWAY_NETS",
    "NET_ORDER",
    "MethodPlan",
    "exclusion_tag",
    "method_plan",
    "eval_nets_needed",
    "evaluation_files",
    "table_names",
    "table_files",
    "figure_plan",
    "report_subject",
]

#: Reconstruction methods the evaluation knows, in table order.
KNOWN_METHODS = ("braindiffuser", "takagi", "cnd")
#: Methods whose images.h5 hold several generated samples per image (n, samples, S, S, 3).
MULTI_SAMPLE_METHODS = frozenset({"takagi"})
#: Evaluation net of every fixed metric column (None: pixel metric).
METRIC_NETS = {
    "PixCorr": None, "SSIM": None, "AlexNet(2)": "alexnet", "AlexNet(5)": "alexnet", "Inception": "inception_v3",
    "CLIP": "clip", "EffNet-B": "efficientnet_b1", "SwAV": "swav", "TN-CLIP-early": "clip", "TN-CLIP-mid": "clip",
    "TN-CLIP-late": "clip", "TN-AlexNet-early": "alexnet", "TN-AlexNet-mid": "alexnet",
    "TN-AlexNet-late": "alexnet", "TN-Inception": "inception_v3",
}
TAKAGI_METRICS = tuple(m for m in METRIC_NETS if m.startswith("TN-"))
METHOD_LABELS = {"braindiffuser": "Brain-Diffuser", "takagi": "Takagi & Nishimoto", "cnd": "CnD"}
VARIANT_LABELS = {
    ("braindiffuser", "full"): "full",
    ("braindiffuser", "only_vdvae"): "Only-VDVAE",
    ("braindiffuser", "no_vdvae"): "w/o VDVAE",
    ("braindiffuser", "no_text"): "w/o CLIP-Text",
    ("braindiffuser", "no_vision"): "w/o CLIP-Vision",
    ("takagi", "z"): "z only",
    ("takagi", "c"): "c only",
    ("takagi", "zc"): "z+c (CVPR)",
    ("takagi", "t"): "+T",
    ("takagi", "tg"): "+T+G",
    ("takagi", "td"): "+T+D",
    ("takagi", "tgd"): "+T+G+D",
}


#: Titles of the table kinds (brainrecon.report.tables.TABLES).
TABLE_TITLES = {
    "braindiffuser_table1": "Brain-Diffuser Table 1: reconstruction quality, mean over subjects",
    "braindiffuser_subjects": "Brain-Diffuser metrics per subject",
    "takagi_table1": "Takagi & Nishimoto Table 1: identification over samples, mean over subjects",
    "takagi_subjects": "Takagi & Nishimoto identification per subject",
    "methods_table1": "All methods, one metric suite (Brain-Diffuser Table 1 columns), mean over subjects",
}


def variant_label(method, variant) -> str:
    """Display name of a variant (e.g. Brain-Diffuser ``only_vdvae`` -> "Only-VDVAE")."""
    return VARIANT_LABELS.get((method, variant), variant)


#: Variant shown in a method's subjects figure (Fig. 3 style) when configured; else its first variant.
MAIN_VARIANT = {"braindiffuser": "full", "takagi": "zc"}
NWAY_NETS = ("inception_v3", "alexnet", "efficientnet_b1")
NET_ORDER = ("alexnet", "inception_v3", "efficientnet_b1", "swav", "clip")

EVAL_DIR = "results/evaluate"
RECON_DIR = "results/reconstruct"
TABLE_DIR = "results/tables"
FIGURE_DIR = "results/figures"


def exclusion_tag(path) -> str:
    """File-name suffix of results without an exclusion list: ``excl-<file stem>`` (safe chars).
    (Same as :func:`brainrecon.evaluate.stage.exclusion_tag`.)"""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(path).name.split(".")[0]).strip("_") or "list"
    return f"excl-{stem}"


@dataclass(frozen=True)
class MethodPlan:
    """One configured method: ``variants`` (config order), ``subjects`` ("01", ..., "avg"),
    ``multi_sample`` (images.h5 holds several samples per image)."""

    method: str
    variants: tuple
    subjects: tuple
    multi_sample: bool

    def recon_file(self, variant, subject) -> str:
        return f"{RECON_DIR}/{self.method}/{variant}/subj{subject}/images.h5"


def _subjects(config) -> list[str]:
    return [f"{int(s):02d}" for s in config["nsd"]["subjects"]]


def method_plan(config) -> list[MethodPlan]:
    """Enabled methods of ``config["methods"]`` (absent sections, e.g. no ``takagi`` yet, are
    skipped; ``enabled`` defaults to true, ``subject_average`` to false, ``variants`` to none)."""
    methods = config.get("methods") or {}
    unknown = sorted(set(methods) - set(KNOWN_METHODS))
    if unknown:
        raise ValueError(f"config key methods: evaluation does not know method(s) {unknown}; "
                         f"known: {list(KNOWN_METHODS)}")
    plans = []
    for name in KNOWN_METHODS:
        cfg = methods.get(name)
        if not cfg or not cfg.get("enabled", True):
            continue
        variants = tuple(cfg.get("variants") or ())
        if not variants:
            continue
        subjects = tuple(_subjects(config)) + (("avg",) if cfg.get("subject_average", False) else ())
        plans.append(MethodPlan(name, variants, subjects, name in MULTI_SAMPLE_METHODS))
    return plans


def eval_nets_needed(metrics, nway=None, takagi_for_samples: bool = True, plans=None) -> list[str]:
    """Evaluation nets (in :data:`NET_ORDER`) the configured metrics need: ``metrics``, the TN-
    columns if a planned method is multi-sample (all plans when ``plans`` is None), and the n-way net."""
    cols = list(metrics)
    multi = True if plans is None else any(p.multi_sample for p in plans)
    if takagi_for_samples and multi:
        cols += list(TAKAGI_METRICS)
    unknown = [c for c in cols if c not in METRIC_NETS]
    if unknown:
        raise ValueError(f"config key evaluate.metrics: unknown metrics {unknown}; known: {list(METRIC_NETS)}")
    nets = {METRIC_NETS[c] for c in cols} - {None}
    if nway:
        net = nway.get("net", "inception_v3")
        if net not in NWAY_NETS:
            raise ValueError(f"config key evaluate.nway.net: {net!r} has no ImageNet logits; use one of {NWAY_NETS}")
        nets.add(net)
    return [n for n in NET_ORDER if n in nets]


def evaluation_files(config, excluded: bool = False, per_image: bool = False, methods=None) -> list[str]:
    """Evaluation CSVs of every planned method/variant/subject: the main ones, or (``excluded``)
    their ``_excl-<tag>`` twins, or (``per_image``) the per-image CSVs. ``methods`` filters."""
    ev = config.get("evaluate") or {}
    suffix = ""
    if excluded:
        if not ev.get("exclude"):
            return []
        suffix = "_" + exclusion_tag(ev["exclude"])
    elif per_image:
        if not ev.get("per_image", True):
            return []
        suffix = "_images"
    out = []
    for p in method_plan(config):
        if methods is not None and p.method not in methods:
            continue
        for v in p.variants:
            for s in p.subjects:
                out.append(f"{EVAL_DIR}/{p.method}/{v}/subj{s}{suffix}.csv")
    return out


def table_names(config) -> list[str]:
    """Tables for the planned methods (names of :data:`brainrecon.report.tables.TABLES`)."""
    plans = method_plan(config)
    names = []
    methods = [p.method for p in plans]
    if "braindiffuser" in methods:
        names += ["braindiffuser_table1", "braindiffuser_subjects"]
    if "takagi" in methods:
        names += ["takagi_table1", "takagi_subjects"]
    if plans:
        names.append("methods_table1")
    return names


def table_methods(name) -> tuple | None:
    """Methods a table shows (None: all)."""
    if name.startswith("braindiffuser_"):
        return ("braindiffuser",)
    if name.startswith("takagi_"):
        return ("takagi",)
    return None


def table_files(config, exts=("csv", "md", "html")) -> list[str]:
    """Every table file; with an exclusion list, each table also with the ``_excl-<tag>`` suffix."""
    ev = config.get("evaluate") or {}
    suffixes = [""] + (["_" + exclusion_tag(ev["exclude"])] if ev.get("exclude") else [])
    return [f"{TABLE_DIR}/{n}{sfx}.{e}" for n in table_names(config) for sfx in suffixes for e in exts]


def report_subject(config) -> str:
    """Subject of the ablation / sample figures: ``report.subject`` or the first configured one."""
    subj = (config.get("report") or {}).get("subject")
    subjects = _subjects(config)
    if subj is None:
        return subjects[0]
    s = f"{int(subj):02d}"
    if s not in subjects:
        raise ValueError(f"config key report.subject: {subj} is not among nsd.subjects {config['nsd']['subjects']}")
    return s


def figure_plan(config) -> dict[str, dict]:
    """``{png path: {"kind", "method", ... , "inputs": [images.h5, ...]}}`` for the planned methods.

    kinds: ``subjects`` (Fig. 3: rows GT, subject average, subjects; the method's
    :data:`MAIN_VARIANT` or its first), ``variants`` (Fig. 6: the variants of one subject, methods with >= 2 variants),
    ``samples`` (one per variant of a multi-sample method, one subject), ``bars`` (all eval CSVs).
    """
    plans = method_plan(config)
    subj = report_subject(config) if plans else None
    figs: dict[str, dict] = {}
    for p in plans:
        main = MAIN_VARIANT.get(p.method) if MAIN_VARIANT.get(p.method) in p.variants else p.variants[0]
        order = [s for s in p.subjects if s == "avg"] + [s for s in p.subjects if s != "avg"]
        figs[f"{FIGURE_DIR}/{p.method}_{main}_subjects.png"] = {
            "kind": "subjects", "method": p.method, "variant": main,
            "rows": {("Subject average" if s == "avg" else f"Subject {s}"): p.recon_file(main, s) for s in order},
        }
        if len(p.variants) > 1:
            figs[f"{FIGURE_DIR}/{p.method}_variants_subj{subj}.png"] = {
                "kind": "variants", "method": p.method, "subject": subj,
                "rows": {variant_label(p.method, v): p.recon_file(v, subj) for v in p.variants},
            }
        if p.multi_sample:
            for v in p.variants:
                figs[f"{FIGURE_DIR}/{p.method}_{v}_samples_subj{subj}.png"] = {
                    "kind": "samples", "method": p.method, "variant": v, "subject": subj,
                    "rows": {variant_label(p.method, v): p.recon_file(v, subj)},
                }
    if plans:
        figs[f"{FIGURE_DIR}/metrics_bars.png"] = {"kind": "bars", "rows": {}}
    for spec in figs.values():
        spec["inputs"] = list(spec["rows"].values())
    return figs
