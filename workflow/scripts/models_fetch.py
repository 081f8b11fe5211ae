"""Fetch the real weights of one model role into its folder (needs internet; local rule)."""

from brainrecon.models import prepare_model
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    role, out = snakemake.params.role, snakemake.output[0]  # noqa: F821
    print(f"fetching model role {role!r} -> {out}")
    prepare_model(role, out, "pretrained")
    print("done")
