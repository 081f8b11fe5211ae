"""The floor plan is enforced: the import contract (pyproject ``[tool.importlinter]``, run by ``make lint``)
holds on the tree and fails on a planted violation; the plans the Snakefile reads load no torch; modules
and signatures stay small (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
LINT = Path(sys.executable).with_name("lint-imports")

PLANS = ["brainrecon.schema", "brainrecon.nsd.plan", "brainrecon.models.plan", "brainrecon.features.plan",
         "brainrecon.regression.plan", "brainrecon.reconstruct.plan", "brainrecon.reconstruct.braindiffuser.plan",
         "brainrecon.reconstruct.takagi.plan", "brainrecon.reconstruct.cnd.plan", "brainrecon.evaluate.plan",
         "brainrecon.encoding.plan",
         "brainrecon.report.plan"]


def _lint(src_root: Path):
    if not LINT.exists():  # pragma: no cover - the lock installs import-linter into the venv
        pytest.fail(f"{LINT} missing: import-linter is pinned in requirements.lock")
    return subprocess.run([str(LINT), str(REPO / "pyproject.toml"), "--no-cache"], cwd=src_root,
                          capture_output=True, text=True, timeout=300)


def _planted(tmp_path, rel: str, line: str) -> Path:
    """A copy of src/ with ``line`` appended to module ``rel`` (inside a function, as lazy imports are)."""
    root = tmp_path / "src"
    shutil.copytree(SRC / "brainrecon", root / "brainrecon", ignore=shutil.ignore_patterns("__pycache__"))
    target = root / "brainrecon" / rel
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    return root


def test_import_contract_holds_on_the_tree():
    proc = _lint(SRC)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stdout.count("KEPT") == 3 and "BROKEN" not in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("rel, line, contract", [
    ("nsd/trials.py", "from brainrecon.report.plan import targets  # noqa", "stages import downstream only"),
    ("features/extract.py", "from ..reconstruct.run import upsample  # noqa", "stages import downstream only"),
    ("evaluate/plan.py", "import torch  # noqa", "import no torch"),
])
def test_import_contract_fails_on_a_planted_violation(tmp_path, rel, line, contract):
    proc = _lint(_planted(tmp_path, rel, line))
    assert proc.returncode != 0, proc.stdout[-3000:]
    broken = [ln for ln in proc.stdout.splitlines() if "BROKEN" in ln]
    assert any(contract in ln for ln in broken), proc.stdout[-3000:]
    module = "brainrecon." + rel[:-3].replace("/", ".")
    assert module in proc.stdout  # the report names the offending module


def test_an_import_cycle_is_reported(tmp_path):
    # synth imports nsd (it writes the synthetic NSD's files); nsd importing synth closes a cycle, which the
    # sibling contract reports besides the layer break
    root = _planted(tmp_path, "nsd/plan.py", "from ..synth import generate  # noqa")
    proc = _lint(root)
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if "BROKEN" in ln]
    assert any("no import cycles" in ln for ln in broken), proc.stdout[-3000:]


def test_plans_load_without_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PLANS)
            + "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'h5py', 'himalaya') if m in sys.modules)\n"
            + "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- size rules
MAX_LINES = 450
REASON = "Why one long module:"
MAX_PARAMS = 9
#: functions allowed more parameters, and why (data arguments, not settings a settings object would hold)
MANY_PARAMS = {
    ("regression/ridge.py", "KernelRidgeDecoder.__init__"):
        "an estimator's constructor: its parameters are the settings (sklearn convention); "
        "regression.plan.SpaceFit builds it",
    ("models/diffusion.py", "img2img"):
        "one settings object (Sampler); the rest is data (components, images, contexts, generators, latents)",
    ("reconstruct/takagi/pipeline.py", "reconstruct"):
        "one settings object; the rest is data (ids, models, inputs, samples) and the output sink",
    ("encoding/figures.py", "slice_mosaic"): "plotting options of one figure (matplotlib style keywords)",
}


def _modules():
    return sorted((SRC / "brainrecon").rglob("*.py"))


def test_long_modules_say_why():
    long = {}
    for p in _modules():
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            if REASON not in doc:
                long[str(p.relative_to(SRC / "brainrecon"))] = n
    assert long == {}, f"modules over {MAX_LINES} lines without '{REASON}' in their docstring: {long}"


def _signatures(path: Path):
    tree = ast.parse(path.read_text())

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                if names and names[0] in ("self", "cls"):
                    names = names[1:]
                yield f"{prefix}{child.name}", len(names)
                yield from walk(child, f"{prefix}{child.name}.")

    yield from walk(tree, "")


def test_no_function_takes_more_than_nine_parameters():
    many = {}
    for p in _modules():
        rel = str(p.relative_to(SRC / "brainrecon"))
        for name, n in _signatures(p):
            if n > MAX_PARAMS and (rel, name) not in MANY_PARAMS:
                many[f"{rel}:{name}"] = n
    assert many == {}, f"functions with more than {MAX_PARAMS} parameters (pass a settings object): {many}"
    # the allowlist names real functions that still need it (a stale entry would hide a future one)
    present = {(str(p.relative_to(SRC / "brainrecon")), name) for p in _modules() for name, n in _signatures(p)
               if n > MAX_PARAMS}
    assert set(MANY_PARAMS) == present, set(MANY_PARAMS) ^ present
