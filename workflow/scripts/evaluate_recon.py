"""Evaluate one method/variant/subject's reconstructions (thin: see brainrecon.evaluate.stage)."""

from functools import partial

from brainrecon.evaluate.plan import EvalSettings
from brainrecon.evaluate.stage import evaluate_reconstruction, load_eval_nets
from brainrecon.models.plan import Runtime
from brainrecon.runtime import log_to

with log_to(snakemake.log[0]):  # noqa: F821  (snakemake is injected)
    inp, out, p = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    settings = EvalSettings(**p.settings)
    nets = partial(load_eval_nets, weights=p.ids["weights"], folder=inp.get("evalnets"),
                   clip_folder=inp.get("clip"), seed=p.model_seed, members=settings.net_weights())
    evaluate_reconstruction(
        {"images": inp.images, "brick": inp.brick, "stimuli": list(inp.stimuli), "exclude": inp.get("exclude")},
        {"csv": out.csv, "excluded": out.get("excluded"), "per_image": out.get("per_image")},
        settings,
        ids=p.ids,
        nets=nets,
        runtime=Runtime(device=p.device, dtype=p.dtype, batch_size=int(p.batch_size)),
    )
