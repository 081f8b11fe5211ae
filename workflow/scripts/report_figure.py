"""Draw one reconstruction grid (thin: see brainrecon.report.figures)."""

from brainrecon.report.figures import fig_samples, fig_subjects, fig_variants
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p, inp, out = snakemake.params, snakemake.input, snakemake.output[0]  # noqa: F821
    kw = dict(n_images=p.n_images, images=p.images or None, dpi=p.dpi)
    if p.kind == "subjects":
        info = fig_subjects(inp.brick, dict(p.rows), out, **kw)
    elif p.kind == "variants":
        info = fig_variants(inp.brick, dict(p.rows), out, **kw)
    elif p.kind == "samples":
        (path,) = p.rows.values()
        info = fig_samples(inp.brick, path, out, max_samples=p.max_samples, **kw)
    else:
        raise ValueError(f"unknown figure kind {p.kind!r}")
    print(f"{out}: {info['rows']} x {info['cols']} images, nsdIds {list(info['nsd_ids'])}")
