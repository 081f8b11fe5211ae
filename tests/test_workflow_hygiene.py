"""Workflow rules of the house that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re

import yaml
from conftest import REPO, run_snakemake


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
            assert re.search(r"gpu\s*=\s*(1|lambda|models_gpu)", block), f"GPU rule {name} must request gpu=1"
            assert "benchmark:" in block, f"GPU rule {name} has no benchmark:"


def test_scripts_are_thin_and_log():
    for p in (REPO / "workflow" / "scripts").glob("*.py"):
        text = p.read_text()
        assert "log_to(" in text, f"{p.name} does not send its output to the rule's log"
        n_lines = sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
        assert n_lines <= 80, f"{p.name} has {n_lines} code lines: move logic into src/brainrecon"


def test_model_rules_request_a_gpu_unless_models_run_on_cpu(tmp_path):
    """Every rule that runs the registry's models asks for a GPU when models.device is a GPU
    (or auto), and for none when it is "cpu" (a CPU run must not hold GPU slots)."""
    model_rules = {"features", "reconstruct_braindiffuser", "reconstruct_braindiffuser_roi", "takagi_captions",
                   "takagi_depth", "reconstruct_takagi", "evaluate_recon"}
    seen = {}
    for device in ("cpu", "cuda"):
        over = tmp_path / f"{device}.yaml"
        over.write_text(yaml.safe_dump({"models": {"device": device}, "nsd": {"subjects": [1]}}))
        proc = run_snakemake("-n", "--configfile", REPO / "config" / "demo.yaml", over, "--directory", tmp_path,
                             timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        for block in proc.stdout.split("\n\n"):
            m = re.search(r"^rule (\w+):", block, re.M)
            res = re.search(r"resources: .*\bgpu=(\d+)", block)
            if m and res and m.group(1) in model_rules:
                seen.setdefault((device, m.group(1)), set()).add(int(res.group(1)))
    for rule in model_rules:
        assert seen.get(("cpu", rule)) == {0}, (rule, seen.get(("cpu", rule)))
        assert seen.get(("cuda", rule)) == {1}, (rule, seen.get(("cuda", rule)))
