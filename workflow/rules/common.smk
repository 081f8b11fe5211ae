# Included first by the Snakefile: the library on the path, the config validated (defaults filled in from
# workflow/schemas/config.schema.yaml, the one home of every default). Every stage's .smk file imports its
# stage's torch-free plan (brainrecon.<stage>.plan) for its targets, inputs and params; nothing else is
# shared through globals.
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from brainrecon.config import validate_config
from brainrecon.models import plan as models_plan
from brainrecon.nsd import plan as nsd_plan

validate_config(config)

SUBJECTS = nsd_plan.subjects(config)


def model_dir(role):
    """Folder of a model role: fetched real weights or the tiny random-weight stand-in."""
    return models_plan.model_dir(config["models"], role)


def models_gpu(wildcards):
    """The `gpu` resource of a job that runs the registry's models (0 when models.device is cpu)."""
    return models_plan.gpu_slots(config["models"])
