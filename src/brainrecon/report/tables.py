"""Paper-style tables from the evaluation CSVs (one row per method / variant / subject).

Input: the one-row CSVs of the evaluate stage (``results/evaluate/{method}/{variant}/subj{XX}.csv``
or their ``_excl-<tag>`` twins): id columns ``method``, ``variant``, ``subject`` ("01" ... or
"avg" = reconstructions decoded from the subject-average prediction), ``weights``, ``subset``,
``exclusion``, metadata ``convention``, ``n_images``, ``n_samples``, metric columns.

Table kinds (:data:`TABLES`):

* ``braindiffuser_table1`` - Brain-Diffuser Table 1: rows = variants (full and ablations), columns
  PixCorr ... SwAV (+ n-way columns when computed); mean ± s.d. over the numeric subjects, plus a
  row per variant for the subject-average decode; ``braindiffuser_subjects``: one row per subject.
* ``takagi_table1`` / ``takagi_subjects`` - Takagi & Nishimoto Table 1: the TN- columns per variant.
* ``methods_table1`` - every method and variant with the Brain-Diffuser columns (one suite for all).

Each table is written as CSV (machine-readable: ``<metric>`` = mean, ``<metric> sd``; a ``source``
column separates ``ours`` from ``paper`` rows), Markdown and HTML (both: notes on the preprocessing
convention, evaluation weights, images used / exclusion list, direction of each metric, then our
rows, then - clearly apart - the papers' reported numbers from :mod:`.paper`).
S.d. over subjects uses the n-1 denominator (pandas ``std``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.plan import BRAINDIFFUSER_COLUMNS, CONVENTIONS, METRICS, TAKAGI_COLUMNS, metric_spec
from ..io import write_text_atomic, atomic_path
from .paper import PAPER_CONVENTIONS, PaperRow, paper_rows
from .plan import METHOD_LABELS, TABLE_TITLES, VARIANT_LABELS, VARIANT_NOTES

__all__ = [
    "TABLES",
    "TableSpec",
    "Table",
    "METHOD_LABELS",
    "VARIANT_LABELS",
    "CONVENTION_NOTES",
    "ID_COLUMNS",
    "read_eval_csvs",
    "table_metrics",
    "subject_rows",
    "summary_rows",
    "build_table",
    "format_value",
    "render_markdown",
    "render_html",
    "write_table",
]

SUBJECT_AVG = "avg"
ID_COLUMNS = ("method", "variant", "subject")

#: what each evaluation convention is (brainrecon.evaluate.plan.CONVENTIONS), as the tables state it
CONVENTION_NOTES = {name: c.description for name, c in CONVENTIONS.items()}


@dataclass(frozen=True)
class TableSpec:
    """A table kind: ``paper`` = key of :func:`.paper.paper_rows`; ``methods`` = methods it shows
    (None: all); ``columns`` = metric columns (those present in the data are shown, in this
    order); ``nway`` = also show ``{n}-way-top1`` columns present; ``level`` = summary | subjects."""

    title: str
    paper: str
    methods: tuple | None
    columns: tuple
    level: str
    nway: bool = True


_T = TABLE_TITLES
TABLES: dict[str, TableSpec] = {
    "braindiffuser_table1": TableSpec(_T["braindiffuser_table1"], "braindiffuser", ("braindiffuser",),
                                      BRAINDIFFUSER_COLUMNS, "summary"),
    "braindiffuser_subjects": TableSpec(_T["braindiffuser_subjects"], "braindiffuser", ("braindiffuser",),
                                        BRAINDIFFUSER_COLUMNS, "subjects"),
    "takagi_table1": TableSpec(_T["takagi_table1"], "takagi", ("takagi",), TAKAGI_COLUMNS, "summary", nway=False),
    "takagi_subjects": TableSpec(_T["takagi_subjects"], "takagi", ("takagi",), TAKAGI_COLUMNS, "subjects",
                                 nway=False),
    "methods_table1": TableSpec(_T["methods_table1"], "comparison", None, BRAINDIFFUSER_COLUMNS, "summary"),
}


# --------------------------------------------------------------------------- reading
def read_eval_csvs(paths) -> pd.DataFrame:
    """Concatenate evaluation CSVs; ``subject`` kept as text ("01", "avg"). Checks the id and
    metadata columns exist, and that all rows share one ``convention`` and one ``subset``
    (a table never mixes preprocessing conventions or image sets)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("no evaluation CSVs given")
    frames = []
    for p in paths:
        df = pd.read_csv(p, dtype={"subject": str, "variant": str, "method": str, "exclusion": str},
                         keep_default_na=False, na_values=[""])
        need = [*ID_COLUMNS, "convention", "n_images", "n_samples"]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise KeyError(f"{p}: evaluation CSV lacks columns {missing} (has {list(df.columns)})")
        if len(df) == 0:
            raise ValueError(f"{p}: evaluation CSV has no rows")
        df["subject"] = [s if s == SUBJECT_AVG else f"{int(s):02d}" for s in df["subject"]]
        df["_file"] = str(p)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for col in ("convention", "tn_convention", "subset"):
        if col in out.columns:
            vals = sorted(set(out[col].fillna("")))
            if col == "tn_convention":  # only rows with TN- columns carry one
                vals = [v for v in vals if v]
            if len(vals) > 1:
                raise ValueError(f"evaluation CSVs mix {col} values {vals}; one table needs one {col}")
    dup = out.duplicated(list(ID_COLUMNS))
    if dup.any():
        r = out[dup].iloc[0]
        raise ValueError(f"two evaluation CSVs for {r['method']}/{r['variant']}/subj{r['subject']}")
    return out


def table_metrics(spec: TableSpec, df: pd.DataFrame) -> list[str]:
    """Metric columns of ``spec`` present in ``df`` (table order), plus n-way columns if ``spec.nway``."""
    cols = [c for c in spec.columns if c in df.columns and df[c].notna().any()]
    if spec.nway:
        nway = [c for c in df.columns if str(c).endswith("-way-top1") and c not in METRICS]
        cols += sorted(nway, key=lambda c: int(c.split("-", 1)[0]))
    if not cols:
        raise ValueError(f"none of the columns {list(spec.columns)} is in the evaluation CSVs")
    return cols


def _order(df: pd.DataFrame, method_order=None, variant_order=None) -> pd.DataFrame:
    methods = list(method_order or []) + [m for m in dict.fromkeys(df["method"]) if m not in (method_order or [])]
    df = df.copy()
    df["_m"] = df["method"].map({m: i for i, m in enumerate(methods)})

    def v_rank(row):
        order = (variant_order or {}).get(row["method"], [])
        return order.index(row["variant"]) if row["variant"] in order else len(order)

    df["_v"] = df.apply(v_rank, axis=1) if len(df) else []
    df["_s"] = [(1, 0) if s == SUBJECT_AVG else (0, int(s)) for s in df["subject"]]
    return df.sort_values(["_m", "_v", "variant", "_s"], kind="stable").drop(columns=["_m", "_v", "_s"])


def _label(method, variant):
    return VARIANT_LABELS.get((method, variant), variant)


def subject_rows(df: pd.DataFrame, metrics, method_order=None, variant_order=None) -> pd.DataFrame:
    """One row per (method, variant, subject): ids, label, n_images, n_samples, metric values."""
    df = _order(df, method_order, variant_order)
    out = pd.DataFrame({
        "source": "ours",
        "method": df["method"].values,
        "variant": df["variant"].values,
        "label": [_label(m, v) for m, v in zip(df["method"], df["variant"])],
        "subject": df["subject"].values,
        "n_images": df["n_images"].astype(int).values,
        "n_samples": df["n_samples"].astype(int).values,
    })
    for m in metrics:
        out[m] = df[m].astype(float).values if m in df.columns else np.nan
    return out.reset_index(drop=True)


def _range(values) -> str:
    vals = sorted(set(int(v) for v in values))
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def summary_rows(df: pd.DataFrame, metrics, method_order=None, variant_order=None) -> pd.DataFrame:
    """Per (method, variant): mean and s.d. (n-1) over the numeric subjects (``subjects`` lists them,
    ``n_subjects`` counts them), then a separate row for the subject-average decode ("avg") where
    present (no s.d.). ``n_images`` is the value, or "lo-hi" if subjects differ."""
    df = _order(df, method_order, variant_order)
    rows = []
    for (method, variant), g in df.groupby(["method", "variant"], sort=False):
        for part, sub in (("subjects", g[g["subject"] != SUBJECT_AVG]), ("avg", g[g["subject"] == SUBJECT_AVG])):
            if sub.empty:
                continue
            row = {
                "source": "ours",
                "method": method,
                "variant": variant,
                "label": _label(method, variant),
                "subjects": ", ".join(sub["subject"]) if part == "subjects" else "subject average",
                "n_subjects": len(sub) if part == "subjects" else 0,
                "n_images": _range(sub["n_images"]),
                "n_samples": _range(sub["n_samples"]),
            }
            for m in metrics:
                vals = sub[m].astype(float) if m in sub.columns else pd.Series([np.nan] * len(sub))
                row[m] = float(vals.mean())
                row[f"{m} sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else np.nan
            rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["n_subjects"] = out["n_subjects"].astype(int)
    return out


# --------------------------------------------------------------------------- building
@dataclass
class Table:
    """A built table: ``ours`` / ``paper`` DataFrames, the metric columns, notes (Markdown lines)."""

    name: str
    spec: TableSpec
    metrics: list
    ours: pd.DataFrame
    paper: pd.DataFrame
    notes: list = field(default_factory=list)
    suffix: str = ""


def _paper_frame(rows: list[PaperRow], metrics, level) -> pd.DataFrame:
    out = []
    for r in rows:
        d = {"source": f"paper: {r.source}", "method": "", "variant": r.variant or "", "label": r.label}
        if level == "subjects":
            d["subject"] = f"{int(r.subjects):02d}"
        else:
            d["subjects"] = r.subjects
        for m in metrics:
            d[m] = r.values.get(m, np.nan)
            if level != "subjects":
                d[f"{m} sd"] = r.sd.get(m, np.nan)
        out.append(d)
    return pd.DataFrame(out)


def build_table(name: str, eval_csvs, method_order=None, variant_order=None) -> Table:
    """Build table ``name`` (a key of :data:`TABLES`) from evaluation CSVs (rows of other methods
    than the table's are ignored). variant_order: ``{method: [variant, ...]}`` (config order)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    spec = TABLES[name]
    df = read_eval_csvs(eval_csvs)
    if spec.methods is not None:
        df = df[df["method"].isin(spec.methods)]
        if df.empty:
            raise ValueError(f"table {name}: no evaluation rows of method(s) {list(spec.methods)}")
    metrics = table_metrics(spec, df)
    if spec.level == "subjects":
        ours = subject_rows(df, metrics, method_order, variant_order)
    else:
        ours = summary_rows(df, metrics, method_order, variant_order)
    paper = _paper_frame(paper_rows(spec.paper, per_subject=spec.level == "subjects"), metrics, spec.level)
    if not paper.empty:  # drop reference rows with none of the shown columns
        paper = paper[paper[metrics].notna().any(axis=1)].reset_index(drop=True)

    convention = df["convention"].iloc[0]
    tn_cols = [m for m in metrics if metric_spec(m).kind == "takagi"]
    tn_convention = None
    if tn_cols:
        if "tn_convention" not in df.columns or df["tn_convention"].isna().all():
            raise KeyError(f"table {name}: the evaluation CSVs hold TN- columns but no tn_convention "
                           f"({sorted(set(df['_file']))[:3]})")
        tn_convention = df["tn_convention"].iloc[0]
    subset = df["subset"].iloc[0] if "subset" in df.columns else "all"
    other_cols = [m for m in metrics if m not in tn_cols]
    notes = []
    paper_conv = PAPER_CONVENTIONS.get(spec.paper, (None, None))
    for cols, conv, theirs in ((other_cols, convention, paper_conv[0]), (tn_cols, tn_convention, paper_conv[1])):
        if cols:
            notes.append(f"Convention of {', '.join(cols)}: `{conv}` - "
                         f"{CONVENTION_NOTES.get(conv, 'see brainrecon.evaluate.plan.CONVENTIONS')}.")
            if theirs and not paper.empty:
                same = "the same" if theirs == conv else f"NOT ours (`{theirs}`): compare with care"
                notes.append(f"The papers' numbers of these columns came from convention `{theirs}` - {same}.")
    if "weights" in df.columns:
        weights = sorted(set(df["weights"].astype(str)))
        line = f"Evaluation network weights: {', '.join(weights)}."
        if "tiny" in weights:
            line += " Tiny = seeded random-weight stand-ins (demo): these numbers are NOT comparable to the papers."
        notes.append(line)
    if subset and subset != "all":
        excl = sorted(set(df["exclusion"].dropna().astype(str))) if "exclusion" in df.columns else []
        n_ex = sorted(set(df["n_excluded"].astype(int))) if "n_excluded" in df.columns else []
        notes.append(
            f"Images: the test images WITHOUT those in the exclusion list {', '.join(excl) or subset} "
            f"({', '.join(map(str, n_ex)) or '?'} excluded per row; table suffix `_{subset}`); "
            "identification is recomputed among the remaining images."
        )
    else:
        notes.append("Images: all evaluated test images of each subject (column n_images).")
    if len(set(df["n_images"].astype(int))) > 1:
        notes.append("WARNING: rows were evaluated on different numbers of images (see n_images).")
    arrows = ", ".join(f"{m} {_arrow(m)}" for m in metrics)
    notes.append(f"Direction: {arrows} (higher ↑ / lower ↓ is better).")
    pct = [m for m in metrics if _is_percent(m)]
    if pct:
        notes.append(f"{', '.join(pct)}: two-way / n-way identification accuracy in % (two-way chance 50 %).")
    tn = [m for m in metrics if metric_spec(m).kind == "takagi"]
    if tn:
        notes.append("TN- columns: Takagi & Nishimoto identification over all generated samples, as a fraction "
                     "(chance 0.5).")
    if spec.level == "summary":
        note = "Values: mean ± s.d. over subjects (s.d. with n-1)."
        if (df["subject"] == SUBJECT_AVG).any():
            note += (" 'subject average' rows: reconstructions decoded from the prediction averaged over subjects "
                     "(one value, no s.d.).")
        notes.append(note)
    shown = set(zip(df["method"], df["variant"]))
    notes += [VARIANT_NOTES[key] for key in VARIANT_NOTES if key in shown]
    suffix = "" if not subset or subset == "all" else f"_{subset}"
    ours.insert(len(ours.columns) - len(metrics) * (2 if spec.level == "summary" else 1), "convention", convention)
    if tn_convention is not None:
        ours.insert(list(ours.columns).index("convention") + 1, "tn_convention", tn_convention)
    for col in ("weights", "subset", "exclusion"):
        if col in df.columns:
            vals = sorted(set(df[col].fillna("").astype(str)))
            ours.insert(list(ours.columns).index("convention") + 1, col, ", ".join(vals))
    return Table(name, spec, metrics, ours, paper, notes, suffix)


# --------------------------------------------------------------------------- formatting
def _arrow(m) -> str:
    return "↑" if metric_spec(m).higher_is_better else "↓"


def _is_percent(m) -> bool:
    return metric_spec(m).kind in ("two_way", "nway")


def format_value(metric: str, value, sd=None) -> str:
    """Paper style: two-way / n-way identification in % with one decimal ("94.2"), everything
    else with three decimals (".254" style kept as "0.254"); "mean ± sd" when sd is finite;
    "—" for a missing value."""
    if value is None or not np.isfinite(value):
        return "—"
    scale, fmt = (100.0, "{:.1f}") if _is_percent(metric) else (1.0, "{:.3f}")
    out = fmt.format(value * scale)
    if sd is not None and np.isfinite(sd):
        out += " ± " + fmt.format(sd * scale)
    return out


def _display(table: Table, frame: pd.DataFrame, paper: bool) -> pd.DataFrame:
    level = table.spec.level
    cols = {}
    if paper:
        cols["Source"] = frame["source"].str.replace("paper: ", "", regex=False)
        cols["Row"] = frame["label"]
    else:
        cols["Method"] = [METHOD_LABELS.get(m, m) for m in frame["method"]]
        cols["Variant"] = frame["label"]
    cols["Subject" if level == "subjects" else "Subjects"] = frame["subject" if level == "subjects" else "subjects"]
    if not paper:
        cols["n images"] = frame["n_images"].astype(str)
        if (frame["n_samples"].astype(str) != "1").any():
            cols["samples"] = frame["n_samples"].astype(str)
    for m in table.metrics:
        head = f"{m} {_arrow(m)}" + (" (%)" if _is_percent(m) else "")
        sd = frame[f"{m} sd"] if f"{m} sd" in frame.columns else [None] * len(frame)
        cols[head] = [format_value(m, v, s) for v, s in zip(frame[m], sd)]
    return pd.DataFrame(cols)


def _md_table(df: pd.DataFrame) -> str:
    def cell(x):
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in r.values) + " |")
    return "\n".join(lines)


def render_markdown(table: Table) -> str:
    """Markdown: title, notes, our rows, then the papers' numbers under their own heading."""
    parts = [f"# {table.spec.title}{' (' + table.suffix.lstrip('_') + ')' if table.suffix else ''}", ""]
    parts += [f"- {n}" for n in table.notes]
    parts += ["", "## This pipeline", "", _md_table(_display(table, table.ours, paper=False)), ""]
    if not table.paper.empty:
        parts += ["## Reported in the papers (reference only, not computed here; all 982 test images)", "",
                  _md_table(_display(table, table.paper, paper=True)), ""]
    return "\n".join(parts)


_CSS = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right} td:nth-child(-n+3),th{text-align:left}"
        "h2{font-size:1.1em} .paper td{color:#555;background:#f6f6f6}")


def render_html(table: Table) -> str:
    """Standalone HTML page with the same content as :func:`render_markdown`."""
    title = html.escape(table.spec.title + (f" ({table.suffix.lstrip('_')})" if table.suffix else ""))
    notes = "".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in table.notes)
    body = [f"<h1>{title}</h1>", f"<ul>{notes}</ul>", "<h2>This pipeline</h2>",
            _display(table, table.ours, paper=False).to_html(index=False, escape=True)]
    if not table.paper.empty:
        body += ["<h2>Reported in the papers (reference only, not computed here; all 982 test images)</h2>",
                 '<div class="paper">' + _display(table, table.paper, paper=True).to_html(index=False, escape=True)
                 + "</div>"]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def write_table(name: str, eval_csvs, out_csv, out_md=None, out_html=None, method_order=None,
                variant_order=None) -> Table:
    """Build table ``name`` and write its CSV (ours then paper rows, ``source`` column), Markdown
    and HTML (each atomic; nothing is written if building fails)."""
    table = build_table(name, eval_csvs, method_order, variant_order)
    csv = pd.concat([table.ours, table.paper], ignore_index=True) if not table.paper.empty else table.ours
    if "n_subjects" in csv.columns:
        csv["n_subjects"] = csv["n_subjects"].astype("Int64")
    md = render_markdown(table)
    page = render_html(table)
    with atomic_path(out_csv) as tmp:
        csv.to_csv(tmp, index=False)
    if out_md is not None:
        write_text_atomic(out_md, md)
    if out_html is not None:
        write_text_atomic(out_html, page)
    return table
