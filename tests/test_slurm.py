"""The cluster path for real: a single-node SLURM cluster (partitions cpu and gpu, fake GPU GRES) runs a slice
of the demo DAG through `--profile profiles/slurm`; GPU-tagged rules must land in `gpu` with a GPU request and
the rest in `cpu`. Skipped with a printed reason where SLURM cannot be installed/started (not root)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.slurm
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root to install and start slurmctld/slurmd/munged (not root here)")
    inst = subprocess.run(["bash", str(CLUSTER), "install"], capture_output=True, text=True, timeout=600)
    if inst.returncode != 0:
        pytest.skip(f"SLURM could not be installed: {inst.stderr.strip()[-500:]}")
    d = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(CLUSTER), "start", str(d)], capture_output=True, text=True, timeout=120)
    if start.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(d)], capture_output=True)
        pytest.fail(f"SLURM installed but did not start:\n{start.stdout}\n{start.stderr}")
    env = {"SLURM_CONF": str(d / "slurm.conf")}
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(d)], capture_output=True, timeout=60)


def _jobs(env):
    """{job id: (name, partition, tres-per-job string)} from scontrol (kept MinJobAge=300 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True,
                         env={**os.environ, **env}).stdout
    jobs = {}
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "JobId" in f:
            jobs[f["JobId"]] = (f.get("JobName", ""), f.get("Partition", ""),
                                f.get("TresPerJob", "") + f.get("TresPerNode", "") + f.get("TRES", ""))
    return jobs


def test_demo_slice_runs_on_slurm_with_gpu_rules_in_gpu_partition(slurm, tmp_path):
    assert shutil.which("sbatch"), "cluster fixture should have installed sbatch"
    cfg = tmp_path / "slurm_demo.yaml"
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    demo["nsd"]["subjects"] = [1]
    demo["models"]["device"] = "auto"  # GPU-tagged rules request a GPU (resolved to CPU in the job)
    cfg.write_text(yaml.safe_dump(demo))
    target = "results/features/clipvision/subj01.h5"
    proc = run_snakemake(
        "--profile", REPO / "profiles" / "slurm", "--configfile", cfg, "--directory", tmp_path,
        "--slurm-partition-config", REPO / "profiles" / "slurm" / "partitions.yaml",
        "--jobs", "4", target,
        env=slurm, timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert (tmp_path / target).exists()
    jobs = _jobs(slurm)
    # snakemake names SLURM jobs by run uuid; the rule is in the comment/log: map via the slurm logs
    logs = list((tmp_path / "logs" / "slurm").rglob("*.log")) or list((tmp_path / ".snakemake").rglob("slurm_logs/**/*.log"))
    assert logs, "no SLURM job logs written"
    by_rule = {}
    for log in logs:
        m = re.search(r"rule_(\w+)", str(log))
        jid = log.stem
        if m and jid in jobs:
            by_rule.setdefault(m.group(1), []).append(jobs[jid])
    assert "features" in by_rule and "synth_nsd" in by_rule, (sorted(by_rule), out[-3000:])
    for rule, entries in by_rule.items():
        for name, partition, tres in entries:
            if rule == "features":
                assert partition == "gpu", (rule, partition)
                assert "gpu" in tres, (rule, tres)
            else:
                assert partition == "cpu", (rule, partition)
                assert "gpu" not in tres, (rule, tres)
