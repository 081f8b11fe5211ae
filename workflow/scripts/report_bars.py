"""Bar chart of the metrics by method / variant (thin: see brainrecon.report.figures)."""

from brainrecon.report.figures import fig_metric_bars
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p = snakemake.params  # noqa: F821
    info = fig_metric_bars(
        list(snakemake.input),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        method_order=p.method_order,
        variant_order=p.variant_order,
        dpi=p.dpi,
    )
    print(f"{info['panels']} panels, {info['bars']} bars")
