"""The report stage's plan (no torch): which tables and figures a config asks for, and their labels.

``report.smk`` reads it (parsing the workflow never imports torch); the same logic is testable without
Snakemake:

* :func:`table_names` / :func:`table_files` - ``results/tables/<name>{,_excl-<tag>}.{csv,md,html}``;
* :func:`figure_plan` - ``results/figures/*.png`` with the reconstruction files each one reads;
* :data:`METHOD_LABELS`, :data:`VARIANT_LABELS`, :data:`TABLE_TITLES` - what the tables print.

Which methods, variants and subjects exist: :func:`brainrecon.reconstruct.plan.method_plans`; which
evaluation CSVs: :func:`brainrecon.evaluate.plan.evaluation_files`.
"""

from __future__ import annotations

from typing import Mapping

from ..evaluate.plan import evaluation_files, exclusion_tag
from ..nsd.plan import subjects as nsd_subjects
from ..reconstruct.plan import method_plans


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
    ("takagi", "td"): "+T+D (ours)",
    ("takagi", "tgd"): "+T+G+D",
}


#: Variants that are not rows of their paper, and what they are (a note under every table that shows them).
VARIANT_NOTES = {
    ("takagi", "td"): "+T+D (ours) is not a row of the paper: SD2-depth from the decoded depth and the +T caption, "
                      "started from the z-decoded image X_z; the paper's +T+G+D starts from the +G (GAN) image, "
                      "which brainrecon does not implement yet - do not set it beside the paper's +T+G+D row.",
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

TABLE_DIR = "results/tables"
FIGURE_DIR = "results/figures"


def table_names(config) -> list[str]:
    """Tables for the planned methods (names of :data:`brainrecon.report.tables.TABLES`)."""
    plans = method_plans(config)
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
    ev = config["evaluate"]
    suffixes = [""] + (["_" + exclusion_tag(ev["exclude"])] if ev["exclude"] else [])
    return [f"{TABLE_DIR}/{n}{sfx}.{e}" for n in table_names(config) for sfx in suffixes for e in exts]


def report_subject(config) -> str:
    """Subject of the ablation / sample figures: ``report.subject`` or the first configured one."""
    subj = config["report"]["subject"]
    subjects = nsd_subjects(config)
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
    plans = method_plans(config)
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


def targets(config: Mapping) -> list[str]:
    """Every table and figure for the configured methods (the HTML report shows them all)."""
    return table_files(config) + list(figure_plan(config))


def table_inputs(config: Mapping, table: str, excluded: bool = False) -> list[str]:
    """The evaluation CSVs a table reads: its methods' main CSVs, or their ``_excl-<tag>`` twins."""
    return evaluation_files(config, excluded=excluded, methods=table_methods(table))


__all__ = ["METHOD_LABELS", "VARIANT_LABELS", "VARIANT_NOTES", "variant_label", "TABLE_TITLES", "MAIN_VARIANT",
           "TABLE_DIR", "FIGURE_DIR", "table_names", "table_methods", "table_files", "report_subject", "figure_plan",
           "targets", "table_inputs"]
