"""The DAG from raw NSD to prepared per-subject data, run through Snakemake for real."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_snakemake


def _jobs_by_rule(dry_run_stdout: str) -> dict[str, int]:
    """Parse the job-count table that `snakemake -n` prints."""
    counts = {}
    in_table = False
    for line in dry_run_stdout.splitlines():
        if line.strip().startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\S+)\s+(\d+)\s*$", line.strip())
            if m:
                counts[m.group(1)] = int(m.group(2))
            elif counts:
                break
    return counts


def test_real_nsd_dag_builds_offline(tmp_path):
    """snakemake -n on config/config.yaml lists downloads and preparation for subjects 1, 2, 5, 7."""
    proc = run_snakemake("-n", "--configfile", REPO / "config" / "config.yaml", "--directory", tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    counts = _jobs_by_rule(proc.stdout)
    # 37 sessions of betas + 8 ROIs + 8 ctabs + responses + 3 anatomy per subject, + 3 shared files
    per_subject = 37 + 8 + 8 + 1 + 3
    assert counts.get("download_nsd_file") == 4 * per_subject + 3, counts
    assert counts.get("download_coco_captions") == 1
    # per subject: nsdgeneral (Brain-Diffuser), the whole-volume streams (Takagi's regression.spaces.*.prepared)
    # and the brain mask (the whole-brain encoding maps)
    assert counts.get("prepare_subject") == 4 * 3
    assert counts.get("prepare_stimuli") == 4
    for s in ("01", "02", "05", "07"):
        assert f"results/prepared/nsdgeneral/subj{s}.h5" in out
        assert f"results/prepared/streams/subj{s}.h5" in out
        assert f"results/prepared/brainmask/subj{s}.h5" in out
        assert f"nsddata_betas/ppdata/subj{s}/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session37.nii.gz" in out
    assert "betas_session38" not in out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run the demo config through preparation in a scratch directory (synthetic NSD, 4 subjects)."""
    work = tmp_path_factory.mktemp("demo")
    proc = run_snakemake(
        "--configfile", REPO / "config" / "demo.yaml", "--directory", work, "--cores", "2",
        "prepare_all",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return work


def test_demo_prepares_four_subjects(demo_run):
    for s in ("01", "02", "05", "07"):
        h5 = demo_run / "results" / "prepared" / "nsdgeneral" / f"subj{s}.h5"
        with h5py.File(h5, "r") as f:
            tr, te = f["train/betas"], f["test/betas"]
            assert tr.dtype == np.float32 and te.dtype == np.float32
            assert tr.shape[1] == te.shape[1] == f["voxels/ijk"].shape[0]
            assert set(f["train/nsd_ids"][:]).isdisjoint(f["test/nsd_ids"][:])
            assert len(f["test/nsd_ids"]) == 8  # synth.n_shared in config/demo.yaml
        stim = pd.read_csv(demo_run / "results" / "prepared" / "stimuli" / f"subj{s}.csv")
        assert len(stim) == 40
        caps = pd.read_csv(demo_run / "results" / "prepared" / "stimuli" / f"subj{s}_captions.csv")
        assert set(caps["nsdId"]) == set(stim["nsdId"])
    # volumes differ per subject, so nothing can assume one shape
    shapes = set()
    for s in ("01", "02", "05", "07"):
        with h5py.File(demo_run / "results" / "prepared" / "nsdgeneral" / f"subj{s}.h5", "r") as f:
            shapes.add(tuple(f.attrs["volume_shape"]))
    assert len(shapes) == 4


def test_demo_rerun_is_noop_then_param_change_reruns_prepare(demo_run):
    cfg = REPO / "config" / "demo.yaml"
    proc = run_snakemake("-n", "--configfile", cfg, "--directory", demo_run, "prepare_all")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
    proc = run_snakemake(
        "-n", "--configfile", cfg, "--directory", demo_run, "prepare_all",
        "--config", "prepare={'normalise': 'none'}",
    )
    counts = _jobs_by_rule(proc.stdout)
    assert counts.get("prepare_subject") == 4, proc.stdout
    assert "synth_nsd" not in counts and "prepare_stimuli" not in counts
    assert "Params have changed" in proc.stdout
