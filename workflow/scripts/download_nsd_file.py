"""Download one NSD bucket key (verified, atomic) to the rule's output <nsd.root>/<key>."""

from pathlib import Path, PurePosixPath

from brainrecon.nsd.download import download_nsd_key
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    key = snakemake.params.key  # noqa: F821
    out = Path(snakemake.output[0])  # noqa: F821
    n = len(PurePosixPath(key).parts)
    if out.parts[-n:] != PurePosixPath(key).parts:
        raise ValueError(f"output {out} does not end with the NSD key {key!r}")
    root = Path(*out.parts[:-n]) if len(out.parts) > n else Path(".")
    download_nsd_key(
        snakemake.params.base_url,  # noqa: F821
        key,
        root,
        retries=snakemake.params.retries,  # noqa: F821
        backoff_s=snakemake.params.backoff_s,  # noqa: F821
        timeout_s=snakemake.params.timeout_s,  # noqa: F821
    )
