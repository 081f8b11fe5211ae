"""Write one paper-style table as CSV, Markdown and HTML (thin: see brainrecon.report.tables)."""

from brainrecon.report.tables import write_table
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p, out = snakemake.params, snakemake.output  # noqa: F821
    table = write_table(
        p.table,
        list(snakemake.input),  # noqa: F821
        out.csv,
        out.md,
        out.html,
        method_order=p.method_order,
        variant_order=p.variant_order,
    )
    print(f"{p.table}: {len(table.ours)} rows of ours, {len(table.paper)} paper reference rows")
