"""Shared test fixtures: repository paths and a Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_snakemake(*args, cwd=REPO, check=False, timeout=900, env=None):
    """Run the repo's Snakefile with the venv's snakemake; returns CompletedProcess (text)."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), *map(str, args)]
    e = dict(os.environ)
    e.update(env or {})
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(map(str, args))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def extract(space, out, inputs, *, batch_size=8, model_source=None, **options):
    """:func:`brainrecon.features.extract_features` on CPU with the space's schema-default settings,
    ``options`` overriding some of them."""
    from brainrecon.features import default_options, extract_features
    from brainrecon.models.plan import Runtime

    return extract_features(space, out, inputs, {**default_options(space), **options},
                            Runtime("cpu", "float32", batch_size), model_source=model_source, progress=False)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def nsd(tmp_path_factory):
    """A small synthetic NSD for subject 1 (12 images, 4 shared, 2 sessions, 64 px), read-only.

    Keys: ``root`` (folder with ``nsd/`` and ``coco/``), ``stimuli`` (stimulus index CSV),
    ``captions`` (captions table CSV), ``brick`` (the imgBrick HDF5). Shared by the feature
    tests; tests must not write into it (copy what they corrupt to their own tmp_path).
    """
    from brainrecon.nsd import layout
    from brainrecon.nsd.prepare import write_captions_table, write_stimulus_index
    from brainrecon.synth import SynthSettings, generate

    subject = 1
    d = tmp_path_factory.mktemp("synthetic_nsd")
    generate(d / "nsd", d / "coco", SynthSettings.build(subjects=(subject,), sessions=2, n_images=12, n_shared=4, n_reps=3, image_size=64, seed=0), progress=False)
    index = write_stimulus_index(d / "nsd" / layout.expdesign_key(), d / "nsd" / layout.stim_info_key("csv"),
                                 subject, 2, d / "stim.csv")
    write_captions_table(index, [d / "coco" / c for c in layout.COCO_CAPTION_FILES], d / "caps.csv")
    return {"root": d, "stimuli": d / "stim.csv", "captions": d / "caps.csv",
            "brick": d / "nsd" / layout.stimuli_key()}
