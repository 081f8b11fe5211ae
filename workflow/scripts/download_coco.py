"""Download the COCO 2017 annotations zip; extract the caption files to the rule's outputs."""

from pathlib import Path, PurePosixPath

from brainrecon.nsd import layout
from brainrecon.nsd.download import download_coco_captions
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    outputs = [Path(p) for p in snakemake.output]  # noqa: F821
    members = list(layout.COCO_CAPTION_FILES)
    if len(outputs) != len(members):
        raise ValueError(f"expected {len(members)} outputs ({members}), got {len(outputs)}: {outputs}")
    # outputs are <coco_root>/<member>: the root is what precedes the first member
    n = len(PurePosixPath(members[0]).parts)
    if outputs[0].parts[-n:] != PurePosixPath(members[0]).parts:
        raise ValueError(f"output {outputs[0]} does not end with {members[0]!r}")
    coco_root = Path(*outputs[0].parts[:-n]) if len(outputs[0].parts) > n else Path(".")
    written = download_coco_captions(
        snakemake.params.url,  # noqa: F821
        coco_root,
        members=members,
        retries=snakemake.params.retries,  # noqa: F821
        backoff_s=snakemake.params.backoff_s,  # noqa: F821
        timeout_s=snakemake.params.timeout_s,  # noqa: F821
    )
    if [p.resolve() for p in written] != [p.resolve() for p in outputs]:
        raise RuntimeError(f"extracted {written}, but the rule declares {outputs}")
