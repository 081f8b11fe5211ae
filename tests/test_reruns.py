"""Incremental reruns and resilience, run through Snakemake for real on a small demo slice.

One module fixture builds a slice of the demo (synthetic NSD, tiny random-weight models): subjects 01 and
02 (+ their average), Brain-Diffuser variants full / only_vdvae / no_text, ROI-optimal images of 01 and
avg, their evaluation CSVs, one table and one figure. Then:

* nothing to do when nothing changed;
* a new CLIP-text alpha schedules exactly the cliptext fits ("Params have changed"), the cliptext average,
  what reads CLIP-text (full, ROI), their evaluations and the report outputs reading those - and nothing
  upstream, nothing of only_vdvae / no_text;
* a new prepare.normalise cascades from prepare_subject through every regression, reconstruction and
  evaluation, not into synth, stimuli, models or features;
* leaf config keys reach exactly the params of the jobs that use them;
* a job killed with SIGKILL while writing its outputs leaves nothing under its final names, and
  ``--rerun-incomplete`` reruns only that job.

The expected job sets are written out below from the rules' DAG (which variant reads which regression
space, what each table/figure reads), not taken from Snakemake's output.

Runs use ``--workflow-profile none`` (the repo's default profile sets cores and rerun-incomplete) and
``--rerun-triggers mtime params input``: the "code" trigger would add jobs whenever a workflow script of
this checkout is edited between the fixture's run and a dry run, which has nothing to do with the config
changes tested here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import h5py
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, run_snakemake

DEMO = REPO / "config" / "demo.yaml"

SUBJECTS = ("01", "02")
ALL_SUBJECTS = SUBJECTS + ("avg",)  # methods.braindiffuser.subject_average is on in the demo
VARIANTS = ("full", "only_vdvae", "no_text")
ROI_SUBJECTS = ("01", "avg")
ROIS = ["V1", "V2", "V3"]
SPACES = ("vdvae", "clipvision", "cliptext")

# The demo, made small: 12 images per subject (4 shared = test set), 32 px, one alpha (no CV), one
# denoising step (int(0.75 * 2)), pixel metrics only, takagi off.
SLICE = {
    "nsd": {"subjects": [1, 2]},
    "synth": {"n_images": 12, "n_shared": 4, "image_size": 32},
    "regression": {"spaces": {s: {"alphas": [100.0]} for s in SPACES}},
    "methods": {
        "braindiffuser": {"variants": list(VARIANTS), "steps": 2, "image_size": 32, "roi_optimal": ROIS},
        "takagi": {"enabled": False},
    },
    "evaluate": {"metrics": ["PixCorr", "SSIM"], "per_image": False, "takagi_for_samples": False},
    "report": {"n_images": 2, "dpi": 20},
}

# Regression spaces each reconstruction reads (brainrecon.reconstruct.variants.variant_spec; the ROI-optimal
# images are reconstructed like "full" from all three).
READS = {
    "full": {"vdvae", "clipvision", "cliptext"},
    "only_vdvae": {"vdvae"},
    "no_text": {"vdvae", "clipvision"},
    "roi": {"vdvae", "clipvision", "cliptext"},
}


def reg(space, s):
    return f"results/regression/{space}/subj{s}.h5"


def feat(space, s):
    return f"results/features/{space}/subj{s}.h5"


def recon(variant, s):
    return f"results/reconstruct/braindiffuser/{variant}/subj{s}/images.h5"


def ev(variant, s):
    return f"results/evaluate/braindiffuser/{variant}/subj{s}.csv"


def prep(s):
    return f"results/prepared/nsdgeneral/subj{s}.h5"


TABLE = "results/tables/braindiffuser_table1.csv"  # reads every Brain-Diffuser evaluation CSV
FIGURE = "results/figures/braindiffuser_full_subjects.png"  # reads full's images.h5 of avg, 01, 02
TARGETS = (
    [ev(v, s) for v in VARIANTS for s in ALL_SUBJECTS]
    + [recon("roi", s) for s in ROI_SUBJECTS]
    + [TABLE, FIGURE]
)
PARAMS_CHANGED = "Params have changed since last execution"


# ---------------------------------------------------------------- helpers


def _write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _nested(dotted: str, value):
    """{"a": {"b": value}} from "a.b" (config overlay: nested keys merge, lists replace)."""
    out = value
    for k in reversed(dotted.split(".")):
        out = {k: out}
    return out


def _args(work, configfiles, *opts, targets=TARGETS):
    # targets first: --configfile / --rerun-triggers take several values
    return [
        *targets, "--directory", work, "--workflow-profile", "none",
        "--rerun-triggers", "mtime", "params", "input",
        "--configfile", DEMO, *configfiles, *opts,
    ]


def _parse_jobs(stdout: str) -> list[dict]:
    """Jobs of a `snakemake -n` listing: [{"rule", "output": [...], "reason"}] in printed order."""
    jobs, cur = [], None
    for line in stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if m:
            cur = {"rule": m.group(1), "output": [], "reason": ""}
            jobs.append(cur)
            continue
        if cur is None:
            continue
        m = re.match(r"^\s{4}(\w+): (.*)$", line)
        if m:
            key, val = m.groups()
            if key == "output":
                cur["output"] = [v.strip() for v in val.split(", ")]
            elif key == "reason":
                cur["reason"] = val
        elif not line.startswith(" "):
            cur = None
    return jobs


def _job_stats(stdout: str) -> dict[str, int]:
    """The `job  count` table Snakemake prints (dry and real runs)."""
    counts, in_table = {}, False
    for line in stdout.splitlines():
        s = line.strip()
        if s.startswith("job") and "count" in s:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\S+)\s+(\d+)$", s)
            if m:
                if m.group(1) != "total":
                    counts[m.group(1)] = int(m.group(2))
            elif counts:
                break
    return counts


def _scheduled(proc) -> dict[str, dict]:
    """{first output: job} of a dry run; checks that the listing parsed and agrees with the job table."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    jobs = _parse_jobs(proc.stdout)
    assert Counter(j["rule"] for j in jobs) == Counter(_job_stats(proc.stdout)), (
        "job listing and job table disagree:\n" + proc.stdout[-6000:]
    )
    by_output = {}
    for j in jobs:
        assert j["output"], f"job without output in the listing: {j}"
        assert j["output"][0] not in by_output, f"two jobs write {j['output'][0]}"
        by_output[j["output"][0]] = j
    return by_output


def _dry(work, configfiles):
    proc = run_snakemake(*_args(work, configfiles, "-n"), timeout=600)
    return _scheduled(proc)


def _assert_schedule(jobs: dict[str, dict], expected: dict[str, str], params_changed: set[str]):
    """Exactly the expected jobs ({output: rule}); "Params have changed" exactly on `params_changed`;
    every other job rescheduled because an input is updated by another scheduled job."""
    got = {o: j["rule"] for o, j in jobs.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(f"{o} ({got[o]})" for o in set(got) - set(expected))
    assert not missing and not extra, f"not scheduled: {missing}\nscheduled but unaffected: {extra}"
    for o, rule in expected.items():
        assert got[o] == rule, f"{o}: rule {got[o]}, expected {rule}"
    changed = {o for o, j in jobs.items() if PARAMS_CHANGED in j["reason"]}
    assert changed == set(params_changed), (
        f"'{PARAMS_CHANGED}' on {sorted(changed)}, expected on {sorted(params_changed)}"
    )
    for o, j in jobs.items():
        if o not in params_changed:
            assert "Input files updated by another job" in j["reason"], f"{o}: reason {j['reason']!r}"


def _downstream_of_regression(spaces, subjects=SUBJECTS) -> dict[str, str]:
    """Every job that reads (transitively) the regression outputs of `spaces`, with the fits themselves."""
    jobs = {}
    for space in spaces:
        for s in subjects:
            jobs[reg(space, s)] = "regression_fit"
        jobs[reg(space, "avg")] = "regression_subject_average"
    hit = set(spaces)
    for v in VARIANTS:
        if READS[v] & hit:
            for s in ALL_SUBJECTS:
                jobs[recon(v, s)] = "reconstruct_braindiffuser"
                jobs[ev(v, s)] = "evaluate_recon"
            jobs[TABLE] = "report_table"
            if v == "full":
                jobs[FIGURE] = "report_figure"
    if READS["roi"] & hit:
        for s in ROI_SUBJECTS:
            jobs[recon("roi", s)] = "reconstruct_braindiffuser_roi"
    return jobs


# ---------------------------------------------------------------- the slice


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    """The demo slice, run once: returns (work directory, slice config file)."""
    base = tmp_path_factory.mktemp("reruns")
    work = base / "work"
    work.mkdir()
    cfg = _write_yaml(base / "slice.yaml", SLICE)
    t0 = time.monotonic()
    proc = run_snakemake(*_args(work, [cfg], "--cores", "2"), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    print(f"demo slice built in {time.monotonic() - t0:.0f} s")
    for t in TARGETS:
        assert (work / t).is_file(), t
    return work, cfg


def test_nothing_to_do_without_changes(slice_run):
    work, cfg = slice_run
    proc = run_snakemake(*_args(work, [cfg], "-n"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-4000:]
    assert _parse_jobs(proc.stdout) == []


def test_new_cliptext_alpha_reruns_exactly_what_reads_cliptext(slice_run, tmp_path):
    work, cfg = slice_run
    change = _write_yaml(tmp_path / "change.yaml", _nested("regression.spaces.cliptext.alphas", [1000.0]))
    jobs = _dry(work, [cfg, change])
    expected = _downstream_of_regression(["cliptext"])
    # spelled out, so that a mistake in the helper cannot hide one in the workflow
    assert set(expected) == {
        reg("cliptext", "01"), reg("cliptext", "02"), reg("cliptext", "avg"),
        recon("full", "01"), recon("full", "02"), recon("full", "avg"),
        ev("full", "01"), ev("full", "02"), ev("full", "avg"),
        recon("roi", "01"), recon("roi", "avg"), TABLE, FIGURE,
    }
    _assert_schedule(jobs, expected, params_changed={reg("cliptext", s) for s in SUBJECTS})
    rules = Counter(j["rule"] for j in jobs.values())
    for upstream in ("synth_nsd", "prepare_subject", "prepare_stimuli", "models_build_tiny", "features"):
        assert upstream not in rules, f"{upstream} rescheduled by a regression alpha"
    for o in jobs:
        assert "/only_vdvae/" not in o and "/no_text/" not in o, f"{o} does not read CLIP-text"
        assert "/vdvae/" not in o and "/clipvision/" not in o, o


def test_new_normalisation_cascades_from_prepare(slice_run, tmp_path):
    work, cfg = slice_run
    change = _write_yaml(tmp_path / "change.yaml", _nested("prepare.normalise", "none"))
    jobs = _dry(work, [cfg, change])
    expected = {prep(s): "prepare_subject" for s in SUBJECTS}
    expected.update(_downstream_of_regression(SPACES))
    assert len(expected) == 2 + 6 + 3 + 9 + 2 + 9 + 2
    _assert_schedule(jobs, expected, params_changed={prep(s) for s in SUBJECTS})
    rules = Counter(j["rule"] for j in jobs.values())
    for upstream in ("synth_nsd", "prepare_stimuli", "models_build_tiny", "features"):
        assert upstream not in rules, f"{upstream} does not read the prepared betas"


# (dotted key, new value, {first output or rule name: count} of the jobs that must report "Params have
# changed" - and no other job may report it). Rule-name entries stand for jobs whose first output is long.
LEAF_KEYS = [
    # stage 2 of Brain-Diffuser: full, no_text and the ROI images; only_vdvae has no diffusion stage
    ("methods.braindiffuser.guidance_scale", 3.0,
     {recon(v, s) for v in ("full", "no_text") for s in ALL_SUBJECTS} | {recon("roi", s) for s in ROI_SUBJECTS}),
    # no_text fixes its text weight at 0: only full and ROI read it
    ("methods.braindiffuser.text_weight", 0.7,
     {recon("full", s) for s in ALL_SUBJECTS} | {recon("roi", s) for s in ROI_SUBJECTS}),
    ("features.vdvae_layers", 30, {feat("vdvae", s) for s in SUBJECTS}),
    ("evaluate.convention", "mindeye", {ev(v, s) for v in VARIANTS for s in ALL_SUBJECTS}),
    # Brain-Diffuser's single-sample evaluations compute no TN- column: the TN- convention does not reach them
    ("methods.braindiffuser.roi_recipe", "renormalise", {recon("roi", s) for s in ROI_SUBJECTS}),
    ("regression.cv", 3, {reg(space, s) for space in SPACES for s in SUBJECTS}),
    ("synth.snr", 1.0, {"rule:synth_nsd"}),
    # the tiny models' seed: the two model folders. (evaluate_recon takes it too, for its seeded tiny nets, but
    # its jobs are already rescheduled by their updated inputs, and Snakemake compares params only of jobs
    # that nothing else reschedules.)
    ("models.seed", 1, {"resources/demo/models_tiny/vdvae", "resources/demo/models_tiny/vd"}),
    ("report.dpi", 30, {FIGURE}),
]


def test_convention_switch_reruns_only_evaluation_and_tables(slice_run, tmp_path):
    """A new evaluation convention (of either column group) reruns the evaluations that use it and the tables
    reading them - no reconstruction, no figure of images, nothing upstream. The slice's Brain-Diffuser
    evaluations have no TN- columns, so a new TN- convention reruns nothing at all."""
    work, cfg = slice_run
    change = _write_yaml(tmp_path / "change.yaml", _nested("evaluate.convention", "braindiffuser"))
    jobs = _dry(work, [cfg, change])
    evals = {ev(v, s): "evaluate_recon" for v in VARIANTS for s in ALL_SUBJECTS}
    _assert_schedule(jobs, {**evals, TABLE: "report_table"}, params_changed=set(evals))
    change = _write_yaml(tmp_path / "tn.yaml", _nested("evaluate.takagi_convention", "mindeye"))
    proc = run_snakemake(*_args(work, [cfg, change], "-n"), timeout=600)
    assert proc.returncode == 0 and _parse_jobs(proc.stdout) == [], proc.stdout[-3000:]


@pytest.mark.parametrize("key,value,expected", LEAF_KEYS, ids=[k for k, _, _ in LEAF_KEYS])
def test_leaf_config_key_reaches_params(slice_run, tmp_path, key, value, expected):
    """Changing one key makes exactly the jobs that use it report "Params have changed" (so the value
    reaches them through params:, where Snakemake sees it)."""
    work, cfg = slice_run
    change = _write_yaml(tmp_path / "change.yaml", _nested(key, value))
    jobs = _dry(work, [cfg, change])
    changed = {o: j["rule"] for o, j in jobs.items() if PARAMS_CHANGED in j["reason"]}
    assert changed, f"changing {key} reruns nothing: the value does not reach any rule's params"
    got = {o for o in changed if o in expected}
    got |= {f"rule:{r}" for r in changed.values() if f"rule:{r}" in expected}
    others = sorted(f"{o} ({r})" for o, r in changed.items() if o not in expected and f"rule:{r}" not in expected)
    assert got == expected, f"{key}: params changed on {sorted(changed)}, expected {sorted(expected)}"
    assert not others, f"{key}: also params-changed: {others}"
    if "rule:synth_nsd" in expected:
        assert Counter(changed.values()) == Counter({"synth_nsd": 1})


# ---------------------------------------------------------------- resilience


def _processes_mentioning(text: str) -> list[int]:
    """Our processes whose command line mentions `text` (e.g. the scratch directory)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append(int(p.name))
    return pids


def test_killed_job_leaves_nothing_done_and_reruns_alone(slice_run, tmp_path):
    """SIGKILL the whole snakemake process group while reconstruct_braindiffuser_roi (a leaf of the slice)
    has written part of its outputs; then nothing counts as done, and --rerun-incomplete redoes that job only.
    """
    work, cfg = slice_run
    target = recon("roi", "01")
    folder = work / Path(target).parent
    job_log = work / "logs/reconstruct/braindiffuser/roi/subj01.log"
    # one ROI image per batch (batch_size is not a rerun trigger), so the job writes its outputs in steps
    batch1 = _write_yaml(tmp_path / "batch1.yaml", _nested("methods.braindiffuser.batch_size", 1))
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"),
           *map(str, _args(work, [cfg, batch1], "--force", "--cores", "1", targets=[target]))]
    run_log = tmp_path / "killed_run.log"
    with open(run_log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    partial = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            # the first ROI image, written into the job's hidden temporary png/ folder
            partial = list(folder.glob(".png.*.tmp/*.png"))
            if partial:
                break
            time.sleep(0.05)
        finished_early = proc.poll() is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not finished_early, "the job ended before it was killed:\n" + run_log.read_text()[-4000:]
    assert partial, "no partial output seen within the time limit:\n" + run_log.read_text()[-4000:]
    assert job_log.exists(), "the job had started (its log exists)"
    # the job's script died with the group (nothing keeps writing into the folder)
    deadline = time.monotonic() + 60
    while _processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(work)), "processes of the killed run survived the SIGKILL"

    # nothing under the final names; what was written sits under hidden temporary names
    assert not (folder / "images.h5").exists(), "images.h5 exists after the kill: the write was not atomic"
    assert not (folder / "png").exists(), "png/ exists after the kill: the write was not atomic"
    leftovers = sorted(p.name for p in folder.iterdir())
    assert leftovers and all(n.startswith(".") and ".tmp" in n for n in leftovers), leftovers
    assert all(p.exists() for p in partial), "the partial PNG was written under a temporary name"

    # the killed run left its lock; a dry run now schedules exactly the killed job (temp files count for nothing)
    unlock = run_snakemake(*_args(work, [cfg], "--unlock"), timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    jobs = _dry(work, [cfg])
    assert {o: j["rule"] for o, j in jobs.items()} == {target: "reconstruct_braindiffuser_roi"}, sorted(jobs)
    reason = jobs[target]["reason"].lower()
    assert "missing output" in reason or "incomplete" in reason, reason

    # --rerun-incomplete: only that job runs, and succeeds
    rerun = run_snakemake(*_args(work, [cfg], "--rerun-incomplete", "--cores", "2"), timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert _job_stats(rerun.stdout + rerun.stderr) == {"reconstruct_braindiffuser_roi": 1}, rerun.stdout[-3000:]
    with h5py.File(folder / "images.h5", "r") as f:
        assert f["images"].shape == (len(ROIS), 32, 32, 3)
        assert f["images"][:].std() > 0
    assert sorted(p.name for p in (folder / "png").glob("*.png")) == sorted(f"{r}.png" for r in ROIS)

    # and then nothing is left to do
    proc = run_snakemake(*_args(work, [cfg], "-n"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-4000:]
