"""Prepare one subject: masked, scaled, normalised betas split into train/test (one HDF5)."""

from brainrecon.nsd import layout
from brainrecon.nsd.plan import PrepareSettings
from brainrecon.nsd.prepare import prepare_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, p = snakemake.input, snakemake.params  # noqa: F821
    files = {
        "expdesign": inp.expdesign,
        "betas": list(inp.betas),
        "rois": dict(zip(layout.ROI_NAMES, inp.rois, strict=True)),
        "ctabs": dict(zip(layout.ROI_NAMES, inp.ctabs, strict=True)),
        "brainmask": inp.brainmask,
    }
    settings = PrepareSettings(voxels=p.voxels, scale=float(p.scale), normalise=p.normalise, sessions=p.sessions)
    prepare_subject(files, snakemake.output[0], int(p.subject), settings, progress=True)  # noqa: F821
