"""Prepare one subject: masked, scaled, normalised betas split into train/test (one HDF5)."""

from brainrecon.nsd import layout
from brainrecon.nsd.prepare import prepare_subject
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, params = snakemake.input, snakemake.params  # noqa: F821
    prepare_subject(
        expdesign_path=inp.expdesign,
        betas_paths=list(inp.betas),
        roi_paths=dict(zip(layout.ROI_NAMES, inp.rois, strict=True)),
        ctab_paths=dict(zip(layout.ROI_NAMES, inp.ctabs, strict=True)),
        brainmask_path=inp.brainmask,
        out_h5=snakemake.output[0],  # noqa: F821
        subject=int(params.subject),
        voxels=params.voxels,
        scale=float(params.scale),
        normalise=params.normalise,
        sessions=params.sessions,
        progress=True,
    )
