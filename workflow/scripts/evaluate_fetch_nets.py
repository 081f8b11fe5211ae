"""Download the evaluation nets' pretrained weight files into one folder (needs internet; local rule)."""

from brainrecon.evaluate.stage import fetch_eval_nets
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p = snakemake.params  # noqa: F821
    fetch_eval_nets(
        snakemake.output[0],  # noqa: F821
        p.nets,
        members=dict(p.members),
        retries=p.retries,
        backoff_s=p.backoff_s,
        timeout_s=p.timeout_s,
    )
