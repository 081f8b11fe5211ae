"""Write the synthetic NSD (same layout as the bucket) + COCO-schema captions + planted-signal record.

The NSD root is ``params.root`` or, if the rule does not pass it, the folder of ``output.planted``;
the COCO root is ``params.coco_root`` or derived from ``output.coco`` (``<coco_root>/annotations/...``).
"""

import dataclasses
from pathlib import Path

from brainrecon.nsd import layout
from brainrecon.runtime import log_to
from brainrecon.synth import PLANTED_FILE, SynthSettings, generate


def _roots(params, output):
    keys = set(params.keys())
    root = params.root if "root" in keys else str(Path(output.planted).parent)
    if Path(output.planted) != Path(root) / PLANTED_FILE:
        raise ValueError(f"output.planted {output.planted} is not {Path(root) / PLANTED_FILE}")
    if "coco_root" in keys:
        coco_root = params.coco_root
    else:
        first = str(output.coco[0])
        rel = layout.COCO_CAPTION_FILES[0]
        if not first.endswith(rel):
            raise ValueError(f"output.coco[0] {first} does not end with {rel}")
        coco_root = first[: -len(rel)].rstrip("/") or "."
    return root, coco_root


with log_to(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    p = snakemake.params  # noqa: F821
    root, coco_root = _roots(p, snakemake.output)  # noqa: F821
    synth = {f.name: getattr(p, f.name) for f in dataclasses.fields(SynthSettings)
             if f.name not in ("subjects", "sessions")}
    settings = SynthSettings.build(subjects=[int(x) for x in p.subjects], sessions=int(p.sessions), **synth)
    summary = generate(root, coco_root, settings, progress=True)
    print({k: v for k, v in summary.items() if k != "files"})
    print(f"{len(summary['files'])} files written")
