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


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
