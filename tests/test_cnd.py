"""CnD Phase 1: the double contrastive loss against a direct implementation, masking and sparsification, the
encoder's files, training on the synthetic NSD (the loss falls, the embeddings carry the planted categories),
and a killed training resuming to the very weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from brainrecon.nsd import layout
from brainrecon.nsd.plan import PrepareSettings
from brainrecon.nsd.prepare import prepare_subject
from brainrecon.reconstruct import cnd
from brainrecon.reconstruct.cnd.encoder import FmriMAE, MAEConfig, pad_voxels
from brainrecon.reconstruct.cnd.losses import info_nce, sparsify

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _settings(**over):
    return cnd.Phase1Settings.from_mapping({**TINY, "epochs": 4, "warmup_epochs": 1, "batch_size": 16, "lr": 1e-3,
                                           **over})


# ----------------------------------------------------------------------------- the loss
def _direct_info_nce(q, k, tau, negatives):
    """-log( e^{s(q_i,k_i)/τ} / (e^{s(q_i,k_i)/τ} + Σ_{j≠i} e^{s(q_i, n_j)/τ}) ), n = k or q, averaged: a loop."""
    q, k = q.double(), k.double()
    total = 0.0
    for i in range(len(q)):
        def s(a, b):
            return float(a @ b / (a.norm() * b.norm())) / tau
        pos = np.exp(s(q[i], k[i]))
        neg = sum(np.exp(s(q[i], (k if negatives == "keys" else q)[j])) for j in range(len(q)) if j != i)
        total += -np.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("negatives", ["keys", "queries"])
def test_info_nce_equals_the_formula(negatives):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    got = float(info_nce(q, k, 0.1, negatives))
    assert got == pytest.approx(_direct_info_nce(q, k, 0.1, negatives), rel=1e-5)
    # positives identical to their queries and far from the rest: near 0
    assert float(info_nce(torch.eye(6), torch.eye(6), 0.05, negatives)) < 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(q[:1], k[:1], 0.1)


def test_double_contrastive_terms_are_the_two_info_nce():
    """The loss of one batch = α_C InfoNCE(view 1, view 2) + α_S InfoNCE(view 1, input), recomputed from the model's
    own reconstructions with the same random draws (sparsification, then mask 1, then mask 2)."""
    from brainrecon.reconstruct.cnd.losses import double_contrastive_loss

    s = _settings(alpha_self=1.0, alpha_cross=0.5, sparsify=0.2, mask_loss_weight=0.3)
    model = cnd.build_model(s, 50)
    x = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    terms = double_contrastive_loss(model, x, s, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    xs = sparsify(x, 0.2, g)
    r1, m1 = model.reconstruct(xs, 0.75, g)
    r2, _ = model.reconstruct(xs, 0.75, g)
    target = pad_voxels(xs, model.config)
    cross, self_ = _direct_info_nce(r1.detach(), r2.detach(), 0.1, "keys"), _direct_info_nce(r1.detach(), target,
                                                                                              0.1, "keys")
    err = ((model.patchify(r1) - model.patchify(target)) ** 2).mean(-1)
    mask = float((err * m1).sum().detach() / m1.sum())
    assert float(terms["cross"]) == pytest.approx(cross, rel=1e-5)
    assert float(terms["self"]) == pytest.approx(self_, rel=1e-5)
    assert float(terms["mask"]) == pytest.approx(mask, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(0.5 * cross + 1.0 * self_ + 0.3 * mask, rel=1e-5)
    # duplicate self-contrasting adds the second view's self term
    dup = double_contrastive_loss(model, x, _settings(duplicate_self=True, sparsify=0.2),
                                  torch.Generator().manual_seed(7))
    assert float(dup["self"]) == pytest.approx(self_ + _direct_info_nce(r2.detach(), target, 0.1, "keys"), rel=1e-5)


def test_sparsification_and_masking_statistics():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(50, 200, generator=g) + 1.0  # no zeros before
    xs = sparsify(x, 0.2, torch.Generator().manual_seed(4))
    zeros = (xs == 0).sum(1)
    assert (zeros == 40).all()  # int(0.2 * 200) per pattern
    assert len({tuple(np.flatnonzero(r.numpy() == 0)) for r in xs}) == 50  # drawn per pattern
    assert torch.equal(xs, sparsify(x, 0.2, torch.Generator().manual_seed(4)))  # seeded
    assert torch.equal(xs[xs != 0], x[xs != 0]) and torch.equal(sparsify(x, 0.0), x)
    assert (zeros.float().mean() / 200) == pytest.approx(0.2)

    model = FmriMAE(MAEConfig(num_voxels=200, **TINY))
    L = model.config.num_patches
    assert L == (200 + 16 - 200 % 16) // 16 == 13
    t = torch.randn(30, L, 32)
    kept, mask, restore = model.random_masking(t, 0.75, torch.Generator().manual_seed(5))
    assert kept.shape == (30, int(L * 0.25), 32) and (mask.sum(1) == L - int(L * 0.25)).all()
    # kept tokens are the unmasked ones, in order of the shuffle; restore inverts it
    for i in range(30):
        vis = np.flatnonzero(mask[i].numpy() == 0)
        assert sorted(kept[i].tolist()) == sorted(t[i, vis].tolist())
    _, mask2, _ = model.random_masking(t, 0.75, torch.Generator().manual_seed(6))
    assert not torch.equal(mask, mask2)  # independent views
    freq = torch.stack([model.random_masking(t, 0.75, torch.Generator().manual_seed(s))[1] for s in range(200)])
    assert abs(float(freq.mean()) - (L - int(L * 0.25)) / L) < 1e-6 and float(freq.mean((0, 1)).std()) < 0.05


def test_wrap_padding_and_files(tmp_path):
    c = MAEConfig(num_voxels=35, **TINY)
    x = torch.arange(2 * 35, dtype=torch.float32).reshape(2, 35)
    np.testing.assert_array_equal(pad_voxels(x, c).numpy(), np.pad(x.numpy(), ((0, 0), (0, 16 - 35 % 16)), "wrap"))
    assert MAEConfig(num_voxels=32, **TINY).padded_voxels == 48  # a whole extra patch, as the reference
    torch.manual_seed(0)
    model = FmriMAE(c)
    model.save_pretrained(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["num_voxels"] == 35
    back = FmriMAE.from_pretrained(tmp_path / "enc")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert torch.equal(model.eval().embed(x), back.embed(x)) and back.embed(x).shape == (2, c.num_patches, 32)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        FmriMAE.from_pretrained(tmp_path)


def test_lr_schedule_warms_up_then_decays():
    s = _settings(epochs=10, warmup_epochs=2, lr=1.0, min_lr=0.1)
    lrs = [cnd.lr_at(k, 5, s, 10) for k in range(50)]
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1 and lrs[-1] < 0.2


# ----------------------------------------------------------------------------- on the synthetic NSD
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from brainrecon.synth import SynthSettings, generate

    d = tmp_path_factory.mktemp("cnd_nsd")
    root = d / "nsd"
    generate(root, d / "coco", SynthSettings.build(subjects=(1,), sessions=2, n_images=160, n_shared=40, n_reps=2,
                                                   snr=3.0, image_size=32, seed=0), progress=False)
    files = {"expdesign": root / layout.expdesign_key(),
             "betas": [root / layout.betas_key(1, s, "nii.gz") for s in (1, 2)],
             "rois": {n: root / layout.roi_key(1, n) for n in layout.ROI_NAMES},
             "ctabs": {n: root / layout.ctab_key(1, n) for n in layout.ROI_NAMES},
             "brainmask": root / layout.anatomy_key(1, "brainmask")}
    prepare_subject(files, d / "prep.h5", 1, PrepareSettings.build(voxels="nsdgeneral", sessions=2), progress=False)
    return {"dir": d, "root": root, "prep": d / "prep.h5"}


def _probe_auc(train_e, train_y, test_e, test_y, alpha=1.0):
    """Mean over categories of the test AUC of a ridge probe (one per category) on standardised embeddings."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import roc_auc_score

    mu, sd = train_e.mean(0), train_e.std(0) + 1e-8
    a, b = (train_e - mu) / sd, (test_e - mu) / sd
    aucs = []
    for c in range(train_y.shape[1]):
        if len(set(test_y[:, c])) < 2:
            continue
        score = Ridge(alpha=alpha).fit(a, train_y[:, c]).predict(b)
        aucs.append(roc_auc_score(test_y[:, c], score))
    return float(np.mean(aucs))


def test_phase1_learns_the_planted_categories(prepared, tmp_path):
    """On the synthetic NSD (categories drive the ventral voxels), a tiny encoder's loss falls and a linear probe
    on its test-image embeddings predicts which categories an image holds far above chance, unlike the same probe
    trained on shuffled labels. Training never sees a test image's trial."""
    from brainrecon.synth import load_planted

    s = _settings(epochs=25, warmup_epochs=2, batch_size=32, checkpoint_every=1000)
    out = {"encoder": tmp_path / "encoder", "loss": tmp_path / "loss.csv", "embeddings": tmp_path / "emb.h5"}
    summary = cnd.train_subject({"prepared": prepared["prep"]}, out, s, checkpoint_dir=tmp_path / "ck",
                                subject="01", progress=False)
    import pandas as pd

    loss = pd.read_csv(out["loss"])
    per_epoch = loss.groupby("epoch")["loss"].mean().to_numpy()
    with h5py.File(prepared["prep"], "r") as p:
        n_trials, n_test = p["trials/nsd_ids"].shape[0], p["test/nsd_ids"].shape[0]
    assert (n_trials, n_test) == (240, 40)  # 120 training images x 2 repetitions; 40 shared test images
    assert len(loss) == summary["steps"] == 25 * (n_trials // 32)
    assert per_epoch[-3:].mean() < per_epoch[:3].mean() - 0.1
    assert not (tmp_path / "ck").exists()  # checkpoint removed once the outputs exist
    planted = load_planted(prepared["root"])
    presence = np.asarray(planted["images"]["presence"])
    with h5py.File(out["embeddings"], "r") as f, h5py.File(prepared["prep"], "r") as p:
        assert not set(f["trials/nsd_ids"][()]) & set(p["test/nsd_ids"][()])
        tr_e, tr_id = f["train/embeddings"][()], f["train/nsd_ids"][()]
        te_e, te_id = f["test/embeddings"][()], f["test/nsd_ids"][()]
        assert f["trials/embeddings"].shape == (n_trials, 32) and te_e.shape == (n_test, 32)
    auc = _probe_auc(tr_e, presence[tr_id], te_e, presence[te_id])
    rng = np.random.default_rng(0)
    shuffled = np.mean([_probe_auc(tr_e, presence[rng.permutation(tr_id)], te_e, presence[te_id]) for _ in range(10)])
    print(f"category probe AUC: trained {auc:.3f}, shuffled labels {shuffled:.3f}")
    assert auc > 0.75 and auc - shuffled > 0.2
    back = cnd.FmriMAE.from_pretrained(out["encoder"])
    with h5py.File(prepared["prep"], "r") as p:
        x = torch.from_numpy(p["test/betas"][()][:4])
    np.testing.assert_allclose(back.pooled(x).numpy(), te_e[:4], rtol=1e-5, atol=1e-6)


def test_training_on_test_trials_is_refused(prepared, tmp_path):
    bad = tmp_path / "leak.h5"
    with h5py.File(prepared["prep"], "r") as p, h5py.File(bad, "w") as f:
        for grp in ("trials", "train", "test"):
            f[f"{grp}/betas"] = p[f"{grp}/betas"][()]
            f[f"{grp}/nsd_ids"] = p[f"{grp}/nsd_ids"][()]
        ids = f["trials/nsd_ids"][()]
        ids[0] = p["test/nsd_ids"][0]
        f["trials/nsd_ids"][...] = ids
    with pytest.raises(ValueError, match="training trials show test images"):
        cnd.read_patterns(bad)


_RUN = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
torch.set_num_threads(1)
from brainrecon.reconstruct import cnd
s = cnd.Phase1Settings.from_mapping({settings})
out = {{"encoder": sys.argv[1] + "/encoder", "loss": sys.argv[1] + "/loss.csv", "embeddings": sys.argv[1] + "/e.h5"}}
cnd.train_subject({{"prepared": sys.argv[2]}}, out, s, checkpoint_dir=sys.argv[1] + "/ck", subject="01",
                  progress=False)
"""


def test_killed_training_resumes_to_the_same_weights(prepared, tmp_path):
    """SIGKILL mid-training (after a checkpoint), rerun: it resumes from the checkpoint and ends with exactly the
    weights and loss log of an uninterrupted run (CPU, seeded)."""
    settings = {**TINY, "embed_dim": 64, "depth": 3, "epochs": 12, "warmup_epochs": 1, "batch_size": 32,
                "lr": 1e-3, "checkpoint_every": 3, "sparsify": 0.2}
    script = _RUN.format(settings=repr(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    subprocess.run([sys.executable, "-c", script, str(a), str(prepared["prep"])], check=True, env=env, timeout=900)
    proc = subprocess.Popen([sys.executable, "-c", script, str(b), str(prepared["prep"])], env=env,
                            start_new_session=True)
    ck = b / "ck" / "checkpoint.pt"
    t0 = time.monotonic()
    step = 0
    while time.monotonic() - t0 < 600 and proc.poll() is None:
        if ck.is_file():
            try:
                step = torch.load(ck, weights_only=False)["step"]
            except Exception:  # noqa: BLE001 - being replaced at this instant
                step = 0
            if step >= 6:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (b / "encoder").exists() and not (b / "loss.csv").exists()  # nothing half-written
    total = 12 * (240 // 32)
    assert 6 <= step < total
    rerun = subprocess.run([sys.executable, "-c", script, str(b), str(prepared["prep"])], check=True, env=env,
                           timeout=900, capture_output=True, text=True)
    import re

    m = re.search(r"resuming from .*checkpoint\.pt: stage nsd, step (\d+)", rerun.stderr)
    assert m and int(m.group(1)) >= 6, rerun.stderr[-2000:]  # it did resume, not start over
    wa, wb = cnd.FmriMAE.from_pretrained(a / "encoder"), cnd.FmriMAE.from_pretrained(b / "encoder")
    for (k, va), vb in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(va, vb), k
    la, lb = (a / "loss.csv").read_text(), (b / "loss.csv").read_text()
    assert la == lb and len(la.splitlines()) == total + 1


# ----------------------------------------------------------------------------- the workflow
def test_phase1_rule_runs_and_reruns_only_on_settings_that_change_the_weights(tmp_path):
    """The demo's phase-1 job for one subject runs through Snakemake (GPU tag 0 on CPU); afterwards a new
    checkpoint interval reruns nothing, a new temperature reruns exactly phase 1 (and its loss figure)."""
    import re

    import yaml

    from conftest import run_snakemake

    base = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    over = {"nsd": {"subjects": [1]}, "synth": {"n_images": 24, "n_shared": 4}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(over))
    target = "results/reconstruct/cnd/phase1/subj01/embeddings.h5"
    common = ["--directory", tmp_path, "--workflow-profile", "none", "--rerun-triggers", "mtime", "params", "input",
              "--configfile", REPO / "config" / "demo.yaml", cfg]
    dry = run_snakemake(target, "results/figures/cnd_phase1_loss.png", "-n", *common, timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    block = dry.stdout[dry.stdout.index("rule cnd_phase1:"):]
    assert "results/prepared/nsdgeneral/subj01.h5" in block.split("\n\n")[0]
    assert re.search(r"resources: .*gpu=0", block.split("\n\n")[0])
    run = run_snakemake(target, "results/figures/cnd_phase1_loss.png", "--cores", "2", *common, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-4000:]
    assert (tmp_path / "results/reconstruct/cnd/phase1/subj01/encoder/model.safetensors").is_file()
    assert not (tmp_path / "results/reconstruct/cnd/phase1/subj01.checkpoint").exists()
    assert base["methods"]["cnd"]["phase1"]["checkpoint_every"] != 7

    def rerun(change):
        p = tmp_path / "change.yaml"
        p.write_text(yaml.safe_dump({"methods": {"cnd": {"phase1": change}}}))
        proc = run_snakemake(target, "results/figures/cnd_phase1_loss.png", "-n", *common, p, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return sorted(set(re.findall(r"^(?:local)?rule (\w+):", proc.stdout, re.M)))

    assert rerun({"checkpoint_every": 7}) == []
    assert rerun({"temperature": 0.2}) == ["cnd_loss_figure", "cnd_phase1"]


def test_pretrain_stage_runs_first_and_checks_its_shape(prepared, tmp_path):
    """A user-supplied pre-training set (the paper's HCP stage) trains first, with its own schedule, then NSD."""
    with h5py.File(prepared["prep"], "r") as p:
        V = p["trials/betas"].shape[1]
    rng = np.random.default_rng(1)
    np.save(tmp_path / "pre.npy", rng.standard_normal((64, V)).astype(np.float32))
    s = _settings(epochs=2, warmup_epochs=1, batch_size=32, pretrain=str(tmp_path / "pre.npy"), pretrain_epochs=3)
    out = {"encoder": tmp_path / "enc", "loss": tmp_path / "loss.csv", "embeddings": tmp_path / "e.h5"}
    cnd.train_subject({"prepared": prepared["prep"], "pretrain": tmp_path / "pre.npy"}, out, s,
                      checkpoint_dir=tmp_path / "ck", subject="01", progress=False)
    import pandas as pd

    log = pd.read_csv(out["loss"])
    assert list(dict.fromkeys(log["stage"])) == ["pretrain", "nsd"]
    assert (log["stage"] == "pretrain").sum() == 3 * (64 // 32) and (log["stage"] == "nsd").sum() == 2 * (240 // 32)
    np.save(tmp_path / "bad.npy", rng.standard_normal((64, V + 1)).astype(np.float32))
    with pytest.raises(ValueError, match=f"V={V}"):
        cnd.train_subject({"prepared": prepared["prep"], "pretrain": tmp_path / "bad.npy"},
                          {k: tmp_path / f"x_{k}" for k in out}, s, checkpoint_dir=tmp_path / "ck2", subject="01",
                          progress=False)
    assert not (tmp_path / "x_encoder").exists()
    with pytest.raises(ValueError, match="pretrain_epochs"):
        _settings(pretrain="x.npy", pretrain_epochs=0)
