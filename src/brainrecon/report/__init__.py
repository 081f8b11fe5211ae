"""brainrecon.report: paper-style tables and figures from the evaluation results.

* :mod:`.tables` - :func:`~.tables.write_table` (CSV + Markdown + HTML) for the table kinds of
  :data:`~.tables.TABLES` (Brain-Diffuser Table 1, Takagi & Nishimoto Table 1, all methods),
  per subject and mean ± s.d. over subjects, with the papers' numbers as separate reference rows;
* :mod:`.figures` - reconstruction grids (Brain-Diffuser Fig. 3 / Fig. 6, Takagi samples) and
  a bar chart of the metrics;
* :mod:`.paper` - the numbers the papers report;
* :mod:`.plan` - which tables and figures a config asks for (no torch: the Snakefile imports it
  while parsing).

Names are imported lazily, so ``import brainrecon.report.plan`` stays cheap.
"""

import importlib

_EXPORTS = {
    "fig_metric_bars": "figures",
    "fig_samples": "figures",
    "fig_subjects": "figures",
    "fig_variants": "figures",
    "image_grid": "figures",
    "select_images": "figures",
    "BRAINDIFFUSER_PAPER": "paper",
    "COMPARISON_PAPER": "paper",
    "TAKAGI_PAPER": "paper",
    "PaperRow": "paper",
    "paper_rows": "paper",
    "TABLES": "tables",
    "Table": "tables",
    "TableSpec": "tables",
    "build_table": "tables",
    "read_eval_csvs": "tables",
    "summary_rows": "tables",
    "subject_rows": "tables",
    "write_table": "tables",
    "figure_plan": "plan",
    "table_files": "plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
