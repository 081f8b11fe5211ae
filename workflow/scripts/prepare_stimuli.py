"""Per subject: stimulus index (nsdId, imgBrick row, cocoId, split, reps) and its captions table."""

from brainrecon.nsd.prepare import write_captions_table, write_stimulus_index
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, params, out = snakemake.input, snakemake.params, snakemake.output  # noqa: F821
    index = write_stimulus_index(
        inp.expdesign, inp.stim_info, int(params.subject), params.sessions, out.index
    )
    print(f"{len(index)} images ({(index['split'] == 'test').sum()} test) -> {out.index}")
    caps = write_captions_table(index, list(inp.captions), out.captions)
    print(f"{len(caps)} captions -> {out.captions}")
