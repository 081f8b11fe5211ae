"""CnD Phase 1 loss curves of every subject (thin: see brainrecon.report.figures)."""

from brainrecon.report.figures import fig_loss_curves
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p = snakemake.params  # noqa: F821
    info = fig_loss_curves(dict(zip(p.labels, snakemake.input)), snakemake.output[0], dpi=p.dpi)  # noqa: F821
    print(f"{info['lines']} loss curves, steps {info['steps']}")
