"""Workflow rules of the house that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re

from conftest import REPO


def _rule_blocks():
    """(file, rule name, block text) for every rule in workflow/rules/*.smk and the Snakefile."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    for f in files:
        text = f.read_text()
        starts = [(m.start(), m.group(2)) for m in re.finditer(r"^(\s*)rule (\w+):", text, re.M)]
        for i, (pos, name) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            yield f, name, text[pos:end]


def test_no_script_reads_snakemake_config():
    """Config read inside scripts is invisible to Snakemake's params rerun trigger."""
    offenders = [
        p.name for p in (REPO / "workflow" / "scripts").glob("*.py") if "snakemake.config" in p.read_text()
    ]
    assert offenders == [], f"scripts must get config values through params:, not snakemake.config: {offenders}"


def test_rules_with_jobs_have_logs_and_gpu_rules_are_tagged():
    blocks = list(_rule_blocks())
    assert blocks, "no rules found"
    for f, name, block in blocks:
        runs_something = any(k in block for k in ("script:", "shell:", "run:"))
        if not runs_something:
            continue  # target rules
        assert "log:" in block, f"rule {name} ({f.name}) has no log:"
        assert "conda:" in block, f"rule {name} ({f.name}) names no conda env"
        if "gpu=" in block.replace(" ", ""):
            assert re.search(r"gpu\s*=\s*(1|lambda)", block), f"GPU rule {name} must request gpu=1"
            assert "benchmark:" in block, f"GPU rule {name} has no benchmark:"


def test_scripts_are_thin_and_log():
    for p in (REPO / "workflow" / "scripts").glob("*.py"):
        text = p.read_text()
        assert "log_to(" in text, f"{p.name} does not send its output to the rule's log"
        n_lines = sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
        assert n_lines <= 80, f"{p.name} has {n_lines} code lines: move logic into src/brainrecon"
