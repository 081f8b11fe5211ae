"""Build the tiny random-weight stand-in of one model role (real on-disk layout, seeded)."""

from brainrecon.models import prepare_model
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    p, out = snakemake.params, snakemake.output[0]  # noqa: F821
    print(f"building tiny model role {p.role!r} (seed {p.seed}) -> {out}")
    prepare_model(p.role, out, "tiny", seed=int(p.seed))
    print("done")
