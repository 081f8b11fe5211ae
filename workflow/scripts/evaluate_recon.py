"""Evaluate one method/variant/subject's reconstructions (thin: see brainrecon.evaluate.stage)."""

from functools import partial

from brainrecon.evaluate.stage import evaluate_reconstruction, load_eval_nets
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, out, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    weights = p.ids["weights"]
    nets = partial(
        load_eval_nets,
        weights=weights,
        folder=inp.get("evalnets"),
        clip_folder=inp.get("clip"),
        seed=p.model_seed,
    )
    nway = p.nway or {}
    evaluate_reconstruction(
        inp.images,
        inp.brick,
        out.csv,
        ids=p.ids,
        nets=nets,
        metrics=p.metrics,
        add_takagi=p.takagi_for_samples,
        nway_n=nway.get("n", ()),
        nway_trials=nway.get("trials", 100),
        nway_net=nway.get("net", "inception_v3"),
        convention=p.convention,
        batch_size=p.batch_size,
        device=p.device,
        dtype=p.dtype,
        seed=p.seed,
        stimuli=list(inp.stimuli),
        exclude=inp.get("exclude"),
        excluded_csv=out.get("excluded"),
        per_image_csv=out.get("per_image"),
    )
