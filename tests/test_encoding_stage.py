"""The encoding stage (brainrecon.encoding.stage) and its feature spaces (brainrecon.features.diffusion_spaces).

- z vs c on the synthetic NSD with a planted signal, through the stage glue with tiny random-weight SD
  features: "early" voxels (planted to follow low-level image content) are predicted better by z, "ventral"
  voxels (planted to follow object categories) better by c;
- FDR on pure-noise voxels: the fraction declared significant stays <= q over several seeds;
- NIfTI maps land at the prepared voxels' ijk with the prepared affine; ROI tables match the maps;
- the extractors capture what they claim: the hooked block at the named step (UNet calls counted), zc at
  strength s runs int(s * steps) steps and starts from exactly z;
- names, config checks, and a Snakemake dry-run of the demo config for 4 subjects.
"""

from __future__ import annotations

import json
import re

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainrecon.schema import defaults
from brainrecon.encoding import plan as ep
from brainrecon.encoding.plan import FitSettings
from brainrecon.encoding.stage import fit_encoding, image_folds, read_stats, summarise_rois
from brainrecon.features import diffusion_spaces as ds
from brainrecon.features import plan as fp
from brainrecon.features import space_options
from brainrecon.models import load_model, prepare_model
from brainrecon.nsd import layout
from brainrecon.nsd.plan import PrepareSettings
from brainrecon.nsd.prepare import prepare_subject, write_captions_table, write_stimulus_index
from conftest import REPO, extract, run_snakemake

torch.set_num_threads(1)
SUBJECT = 1
ALPHAS = [1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6]


# ----------------------------------------------------------------------------- fixtures
def _synth(d, n_images, n_shared, n_reps, snr, image_size, seed=0):
    from brainrecon.synth import SynthSettings, generate

    root = d / "nsd"
    generate(root, d / "coco", SynthSettings.build(subjects=(SUBJECT,), sessions=2, n_images=n_images, n_shared=n_shared, n_reps=n_reps, snr=snr, image_size=image_size, seed=seed), progress=False)
    files = {"expdesign": root / layout.expdesign_key(),
             "betas": [root / layout.betas_key(SUBJECT, s, "nii.gz") for s in (1, 2)],
             "rois": {n: root / layout.roi_key(SUBJECT, n) for n in layout.ROI_NAMES},
             "ctabs": {n: root / layout.ctab_key(SUBJECT, n) for n in layout.ROI_NAMES},
             "brainmask": root / layout.anatomy_key(SUBJECT, "brainmask")}
    prepare_subject(files, d / "prep.h5", SUBJECT, PrepareSettings.build(voxels="nsdgeneral", sessions=2),
                    progress=False)
    index = write_stimulus_index(root / layout.expdesign_key(), root / layout.stim_info_key("csv"), SUBJECT, 2,
                                 d / "stim.csv")
    write_captions_table(index, [d / "coco" / c for c in layout.COCO_CAPTION_FILES], d / "caps.csv")
    return {"dir": d, "root": root, "prep": d / "prep.h5", "stim": d / "stim.csv", "caps": d / "caps.csv",
            "brick": root / layout.stimuli_key()}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return prepare_model("sd", tmp_path_factory.mktemp("enc_models") / "sd", "tiny", seed=0)


@pytest.fixture(scope="module")
def sd_parts(sd_folder):
    return load_model("sd", sd_folder)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, sd_folder):
    """Synthetic NSD (1 subject, 120 images of which 30 test, 2 repetitions, SNR 4, 64 px) with z (sdz at
    64 px: 4x16x16) and c (sdc) of the tiny random-weight SD."""
    s = _synth(tmp_path_factory.mktemp("enc_planted"), 120, 30, 2, 4.0, 64)
    inputs = {"stimuli": s["stim"], "captions": s["caps"], "brick": s["brick"], "model": sd_folder}
    for space, kw in (("sdz", {"sdz_size": 64}), ("sdc", {})):
        s[space] = extract(space, s["dir"] / f"{space}.h5", inputs, batch_size=32, **kw)
    return s


@pytest.fixture(scope="module")
def small(tmp_path_factory, sd_folder):
    """A small synthetic NSD (12 images, 32 px) and its sdz (32 px) / sdc features, for the extractors."""
    s = _synth(tmp_path_factory.mktemp("enc_small"), 12, 4, 3, 2.0, 32)
    inputs = {"stimuli": s["stim"], "captions": s["caps"], "brick": s["brick"], "model": sd_folder}
    for space, kw in (("sdz", {"sdz_size": 32}), ("sdc", {})):
        s[space] = extract(space, s["dir"] / f"{space}.h5", inputs, batch_size=16, **kw)
    return s


def _groups(prep_h5, root) -> np.ndarray:
    """Planted group of every prepared voxel ("early", "ventral", "noise", "weak")."""
    from brainrecon.synth import planted_drive

    ijk, group, _, _ = planted_drive(root, SUBJECT, groups=("early", "ventral", "noise", "weak"))
    with h5py.File(prep_h5, "r") as f:
        pijk = f["voxels/ijk"][()]
    where = {tuple(x): g for x, g in zip(ijk.tolist(), group)}
    return np.asarray([where[tuple(x)] for x in pijk.tolist()])


def _fit(prep, feats, out, name, space=None, subject=None, **kw):
    """fit_encoding with the schema's encoding settings (numpy backend), ``kw`` overriding some."""
    enc = defaults("encoding")
    settings = {**ep.fit_settings({"encoding": enc, "regression": {"backend": "numpy"}}),
                "alphas": ALPHAS, "cv": 5, **kw}
    outputs = {"h5": out / f"{name}.h5", "r": out / f"{name}_r.nii.gz", "sig": out / f"{name}_sig.nii.gz",
               "rois": out / f"{name}_rois.csv"}
    summary = fit_encoding(prep, feats, outputs, FitSettings(**settings), space=space, subject=subject,
                           progress=False)
    return summary, read_stats(out / f"{name}.h5")


# ----------------------------------------------------------------------------- z vs c (planted signal)
def test_z_predicts_early_and_c_ventral_voxels(planted, tmp_path):
    """Through the stage glue (PCA, ridge on single trials, test r, FDR) with tiny random-weight SD features.

    What this proves: the stage recovers which voxels follow which planted signal from the two spaces —
    every ventral voxel is predicted better by c than by z, and early voxels on average better by z. The
    early margin is modest by construction, not by accident: the synthetic captions name the objects'
    and the background's colours, so c also carries the luminance/colour that drives early voxels; z wins
    because it keeps *where* things are (the voxels' receptive fields). It does not prove anything about
    real SD weights (random weights, 64 px images).
    """
    grp = _groups(planted["prep"], planted["root"])
    early, ventral, noise = grp == "early", grp == "ventral", grp == "noise"
    assert early.sum() > 50 and ventral.sum() > 20 and noise.sum() > 20
    r, sig = {}, {}
    for space in ("sdz", "sdc"):
        summary, st = _fit(planted["prep"], planted[space], tmp_path, space, space=space, subject=SUBJECT)
        r[space], sig[space] = st["r"], st["significant"]
        assert summary["n_train_rows"] == 2 * summary["n_test"] * 3  # 90 train images x 2 trials; 30 test
        assert st["attrs"]["train_on"] == "single_trial"
    z, c = r["sdz"], r["sdc"]
    # early voxels: z > c on average and for most voxels; strongly predicted and mostly significant
    assert z[early].mean() > c[early].mean() + 0.02, (z[early].mean(), c[early].mean())
    assert np.mean(z[early] > c[early]) > 0.6
    assert z[early].mean() > 0.5 and sig["sdz"][early].mean() > 0.8
    # ventral voxels: c >> z for every voxel
    assert c[ventral].mean() > z[ventral].mean() + 0.5, (c[ventral].mean(), z[ventral].mean())
    assert np.all(c[ventral] > z[ventral])
    assert sig["sdc"][ventral].mean() > 0.9 and sig["sdz"][ventral].mean() < 0.3
    # pure-noise voxels: nothing to predict; BH keeps their false discoveries rare
    for space in ("sdz", "sdc"):
        assert abs(r[space][noise].mean()) < 0.1
        assert sig[space][noise].mean() <= 0.05


# ----------------------------------------------------------------------------- fabricated prepared / features files
ROI_LABELS = {"streams": {1: "early", 2: "midventral", 5: "ventral"}, "prf-visualrois": {1: "V1v", 2: "V1d"}}


def _write_prepared(path, ijk, shape, affine, train, trials, trial_ids, test, train_ids, test_ids, rois):
    with h5py.File(path, "w") as f:
        f["train/betas"], f["train/nsd_ids"] = train.astype(np.float32), train_ids
        f["trials/betas"], f["trials/nsd_ids"] = trials.astype(np.float32), trial_ids
        f["test/betas"], f["test/nsd_ids"] = test.astype(np.float32), test_ids
        f["voxels/ijk"] = ijk.astype(np.int32)
        for name, labels in rois.items():
            ds = f.create_dataset(f"rois/{name}", data=labels.astype(np.int16))
            ds.attrs["labels_json"] = json.dumps({"0": "Unknown", **{str(k): v for k, v in ROI_LABELS[name].items()}})
        f.attrs.update(subject=SUBJECT, voxels="nsdgeneral", volume_shape=np.asarray(shape), affine=affine)


def _write_features(path, space, train_ids, test_ids, ftr, fte):
    with h5py.File(path, "w") as f:
        f["train/features"], f["train/nsd_ids"] = ftr.astype(np.float32), train_ids
        f["test/features"], f["test/nsd_ids"] = fte.astype(np.float32), test_ids
        f.attrs.update(space=space, feature_shape=np.asarray([ftr.shape[1]]))


def _fabricate(d, seed, V=240, n_train=60, n_test=24, reps=2, d_feat=30, signal_voxels=0, shape=(10, 9, 8),
               affine=None, noise_sd=1.0):
    """Prepared + features files; the first ``signal_voxels`` voxels follow a linear map of the features,
    the others are pure noise independent of everything."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(shape)), size=V, replace=False)
    ijk = np.stack(np.unravel_index(np.sort(flat), shape), axis=1)
    if affine is None:
        affine = np.diag([1.8, 1.8, 1.8, 1.0])
    train_ids = np.sort(rng.choice(1000, size=n_train, replace=False))
    test_ids = np.setdiff1d(np.arange(1000, 1000 + 3 * n_test), [])[:n_test]
    ftr, fte = rng.standard_normal((n_train, d_feat)), rng.standard_normal((n_test, d_feat))
    W = np.zeros((d_feat, V))
    W[:, :signal_voxels] = rng.standard_normal((d_feat, signal_voxels)) / np.sqrt(d_feat)
    trial_img = np.repeat(np.arange(n_train), reps)
    rng.shuffle(trial_img)
    trials = ftr[trial_img] @ W + noise_sd * rng.standard_normal((trial_img.size, V))
    train = np.stack([trials[trial_img == i].mean(0) for i in range(n_train)])
    test = fte @ W + noise_sd / np.sqrt(3) * rng.standard_normal((n_test, V))
    rois = {"streams": rng.choice([0, 1, 2, 5], size=V), "prf-visualrois": rng.choice([-1, 0, 1, 2], size=V)}
    _write_prepared(d / f"prep{seed}.h5", ijk, shape, affine, train, trials, train_ids[trial_img], test, train_ids,
                    test_ids, rois)
    _write_features(d / f"feat{seed}.h5", "fab", train_ids, test_ids, ftr, fte)
    return d / f"prep{seed}.h5", d / f"feat{seed}.h5", ijk, rois


def test_fdr_on_pure_noise_voxels_stays_below_q(tmp_path):
    """Pure-noise voxels (responses independent of the features): over several seeds the fraction of
    voxels declared significant at q = 0.05 stays <= q; BH under the global null makes any discovery rare
    (P(any) <= q), so most seeds have none."""
    q = 0.05
    fracs = []
    for seed in range(6):
        prep, feat, _, _ = _fabricate(tmp_path, seed, V=400, signal_voxels=0)
        _, st = _fit(prep, feat, tmp_path, f"null{seed}", q=q, alphas=[1.0, 100.0, 1e4], cv=4,
                     roi_files=("streams",))
        fracs.append(float(np.mean(st["significant"])))
        assert fracs[-1] <= q
        # the p-values of noise voxels are spread over [0, 1] (one-sided: half of the r are negative)
        assert 0.3 < np.mean(st["p"] > 0.5) < 0.7
    assert sum(f > 0 for f in fracs) <= 2, fracs


def test_nifti_maps_at_ijk_with_affine_and_roi_table(tmp_path):
    theta = 0.3
    affine = np.array([[1.8 * np.cos(theta), -1.8 * np.sin(theta), 0, -40.0],
                       [1.8 * np.sin(theta), 1.8 * np.cos(theta), 0, -55.5],
                       [0, 0, 1.8, 12.25], [0, 0, 0, 1]])
    prep, feat, ijk, rois = _fabricate(tmp_path, 7, V=150, signal_voxels=60, shape=(8, 6, 5), affine=affine,
                                       noise_sd=0.5)
    summary, st = _fit(prep, feat, tmp_path, "map", alphas=[0.1, 1.0, 10.0, 100.0], cv=4,
                       roi_files=("streams", "prf-visualrois"))
    sig = st["significant"]
    assert 40 <= sig[:60].sum() and sig[60:].sum() <= 5  # the planted voxels are found
    assert summary["n_significant"] == int(sig.sum())
    for name, expect in (("map_r", st["r"]), ("map_sig", sig.astype(np.float32))):
        img = nib.load(str(tmp_path / f"{name}.nii.gz"))
        vol = np.asarray(img.dataobj)
        assert vol.shape == (8, 6, 5) and vol.dtype == np.float32
        assert np.allclose(img.affine, affine, atol=1e-5)
        assert np.allclose(vol[tuple(ijk.T)], expect, atol=1e-6)
        outside = np.ones(vol.shape, bool)
        outside[tuple(ijk.T)] = False
        assert np.all(vol[outside] == 0)
    assert np.array_equal(st["ijk"], ijk)
    # ROI table: one row per label (0 = outside and -1 = invalid are not ROIs), mean r of exactly its voxels
    table = pd.read_csv(tmp_path / "map_rois.csv")
    assert set(table["roi_file"]) == {"streams", "prf-visualrois"}
    for name, labels in rois.items():
        t = table[table["roi_file"] == name].set_index("label")
        assert sorted(t.index) == sorted(ROI_LABELS[name])
        for value, roi in ROI_LABELS[name].items():
            m = labels == value
            assert t.loc[value, "roi"] == roi and t.loc[value, "n_voxels"] == m.sum()
            assert t.loc[value, "mean_r"] == pytest.approx(st["r"][m].mean())
            assert t.loc[value, "frac_significant"] == pytest.approx(sig[m].mean())
    assert (table["space"] == "fab").all() and (table["kind"] == "other").all()
    # the summary concatenates tables in the given space order
    table.assign(space="other").to_csv(tmp_path / "other_rois.csv", index=False)
    both = summarise_rois([tmp_path / "map_rois.csv", tmp_path / "other_rois.csv"], tmp_path / "sum.csv",
                          space_order=["other", "fab"])
    assert list(pd.unique(both["space"])) == ["other", "fab"] and len(both) == 2 * len(table)


def test_fit_encoding_pca_and_folds(tmp_path):
    """More feature columns than n_components: PCA on the training images caps at the rank (n - 1); the CV
    folds never split an image's trials; averaged training uses one row per image."""
    prep, feat, _, _ = _fabricate(tmp_path, 3, V=50, n_train=40, d_feat=300, signal_voxels=10)
    summary, st = _fit(prep, feat, tmp_path, "pca", n_components=100, cv=4, train_on="averaged",
                       roi_files=("streams",))
    assert summary["n_components_used"] == 39 and summary["n_train_rows"] == 40
    assert "kept 39" in st["attrs"]["pca_note"]
    img = np.array([0, 0, 1, 2, 1, 3, 2, 3, 4, 4])
    folds = image_folds(img, 2)
    for tr, va in folds:
        assert not set(img[tr]) & set(img[va])
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="train_on"):
        _fit(prep, feat, tmp_path, "bad", train_on="trials")
    with pytest.raises(KeyError, match="no ROI"):
        _fit(prep, feat, tmp_path, "bad", roi_files=("floc-faces",))


# ----------------------------------------------------------------------------- extractors
class _CallCounter:
    def __init__(self, module):
        self.n = 0
        self.h = module.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        self.n += 1

    def close(self):
        self.h.remove()


def _images(s, n):
    from brainrecon.nsd.readers import ImageBrick

    idx = pd.read_csv(s["stim"]).sort_values("nsdId").iloc[:n]
    with ImageBrick(s["brick"]) as b:
        return idx["nsdId"].to_numpy(), b.read(idx["brick_row"].to_numpy())


def test_unet_extractor_hooks_named_block_at_named_step(small, sd_parts):
    from brainrecon.features.extractors import _resize_unit, image_generators
    from brainrecon.models.sd import sd_unconditional
    from brainrecon.models.diffusion import Sampler, sd_img2img

    ids, images = _images(small, 3)
    kw = dict(unet_strength=0.8, num_inference_steps=5, guidance_scale=5.0, eta=0.0, seed=0, image_size=32,
              init_noise="reference",
              c_features=small["sdc"])  # int(0.8 * 5) = 4 denoising steps
    # reference: the whole run, every mid-block output recorded per UNet call
    rec = []
    h = sd_parts.unet.mid_block.register_forward_hook(lambda m, i, o: rec.append(o.detach().clone()))
    c = torch.from_numpy(ds.CTable(small["sdc"]).rows(ids))
    try:
        sd_img2img(sd_parts, _resize_unit(images, 32), c, uncond=sd_unconditional(sd_parts),
                   generator=image_generators(0, ids),
                   sampler=Sampler(steps=5, strength=0.8, guidance_scale=5.0, eta=0.0, posterior="mean",
                                   init_noise="reference"))
    finally:
        h.remove()
    assert len(rec) == 4 and rec[0].shape[0] == 6  # [uncond; cond] of 3 images per call
    kw = {"pool": 1, "storage_dtype": "float16", **kw}

    def unet(block, step, **over):
        return ds.setup_unet(sd_parts, block=block, step=step, **{**kw, **over})

    for step in (1, 3):
        ext = unet("mid", step)
        counter = _CallCounter(sd_parts.unet)
        try:
            out = ext(ids, images)
        finally:
            counter.close()
        assert counter.n == step  # stopped right after the captured step
        assert out.shape == (3, *rec[0].shape[1:])
        np.testing.assert_allclose(out, rec[step - 1][3:].numpy(), rtol=1e-5, atol=1e-6)  # conditional half
        assert not np.allclose(out, rec[step - 1][:3].numpy())
    # another block at the same step gives that block's output (down blocks: hidden states, not residuals)
    down = unet("down1", 2)(ids, images)
    assert down.shape[1] == sd_parts.unet.down_blocks[1].resnets[-1].out_channels
    # pooling: 2 -> means of 2x2 cells, "global" -> channel means, stored as float16 by default
    full = unet("up1", 2)(ids, images)
    b, C, hh, ww = full.shape
    pooled = unet("up1", 2, pool=2)(ids, images)
    np.testing.assert_allclose(pooled, full.reshape(b, C, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5)), rtol=1e-5,
                               atol=1e-6)
    glob = unet("up1", 2, pool="global")
    np.testing.assert_allclose(glob(ids, images), full.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert glob.storage_dtype == "float16"
    with pytest.raises(ValueError, match="outside the run's denoising steps 1..4"):
        unet("mid", 5)
    with pytest.raises(ValueError, match="pool must be"):
        unet("mid", 1, pool=0)
    with pytest.raises(ValueError, match="has 2 up blocks"):
        unet("up2", 1)


def test_zc_runs_int_strength_steps_from_z(small, sd_parts):
    ids, images = _images(small, 3)
    kw = dict(num_inference_steps=10, guidance_scale=5.0, eta=0.0, seed=0, c_features=small["sdc"],
              init_noise="reference")
    with h5py.File(small["sdz"], "r") as f:  # the images' rows of the sdz file (train or test split)
        z_rows = np.concatenate([f["train/features"][()], f["test/features"][()]])
        z_ids = np.concatenate([f["train/nsd_ids"][()], f["test/nsd_ids"][()]])
        z = z_rows[[int(np.flatnonzero(z_ids == i)[0]) for i in ids]].reshape(3, 4, 8, 8)
    # strength 0: no step, the latent is the image's z itself (same preprocessing as the sdz space)
    zc0 = ds.setup_zc(sd_parts, strength=0.0, image_size=32, **kw)(ids, images)
    np.testing.assert_allclose(zc0, z, rtol=1e-5, atol=1e-6)
    for s in (0.25, 0.5, 0.99):
        ext = ds.setup_zc(sd_parts, strength=s, image_size=32, **kw)
        counter = _CallCounter(sd_parts.unet)
        try:
            out = ext(ids, images)
        finally:
            counter.close()
        assert counter.n == int(s * 10)  # 2, 5, 9 DDIM steps
        assert ext.settings["denoising_steps"] == int(s * 10)
        assert out.shape == z.shape and not np.allclose(out, z, atol=1e-3)
    # seeded per nsdId: an image alone gives the same latent as in a batch
    batch = ds.setup_zc(sd_parts, strength=0.5, image_size=32, **kw)(ids, images)
    alone = ds.setup_zc(sd_parts, strength=0.5, image_size=32, **kw)(ids[1:2], images[1:2])
    np.testing.assert_allclose(alone[0], batch[1], rtol=1e-4, atol=2e-5)  # float batching noise only


def test_encoding_features_written_by_the_features_writer(small, sd_folder, tmp_path):
    enc = defaults("encoding")
    enc["img2img"].update(num_inference_steps=5, image_size=32)
    enc["unet"].update(strength=0.8, pool=1)
    opts = space_options("unet_mid_t2", {"encoding": enc})
    assert opts["unet_strength"] == 0.8 and opts["storage_dtype"] == "float16"
    inputs = {"stimuli": small["stim"], "brick": small["brick"], "model": sd_folder, "c": small["sdc"]}
    out = extract("unet_mid_t2", tmp_path / "u.h5", inputs, batch_size=5, **opts)
    assert fp.get_space("unet_mid_t2").role == "sd" and fp.get_space("unet_mid_t2").reads_c
    stim = pd.read_csv(small["stim"])
    with h5py.File(out, "r") as f:
        assert f.attrs["space"] == "unet_mid_t2" and f.attrs["storage_dtype"] == "float16"
        assert f.attrs["block"] == "mid" and int(f.attrs["step"]) == 2 and int(f.attrs["denoising_steps"]) == 4
        for split in ("train", "test"):
            want = np.sort(stim.loc[stim["split"] == split, "nsdId"].to_numpy())
            assert np.array_equal(f[f"{split}/nsd_ids"][()], want)
            assert f[f"{split}/features"].dtype == np.float16
            assert f[f"{split}/features"].shape == (want.size, int(np.prod(f.attrs["feature_shape"])))
    opts = space_options("zc_s0.4", {"encoding": enc})
    assert "pool" not in opts and "unet_strength" not in opts
    out = extract("zc_s0.4", tmp_path / "zc.h5", inputs, batch_size=4, **opts)
    with h5py.File(out, "r") as f:
        assert list(f.attrs["feature_shape"]) == [4, 8, 8] and int(f.attrs["denoising_steps"]) == 2
        assert f["train/features"].dtype == np.float32
    with pytest.raises(FileNotFoundError, match="c features file"):
        extract("zc_s0.4", tmp_path / "x.h5", {**inputs, "c": tmp_path / "missing.h5"}, **opts)
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ValueError, match="reads c"):
        extract("zc_s0.4", tmp_path / "x.h5", {k: v for k, v in inputs.items() if k != "c"}, **opts)


# ----------------------------------------------------------------------------- names and config
def test_space_names_are_canonical_and_filesystem_safe():
    assert fp.zc_space_name(0.4) == "zc_s0.4" and fp.zc_space_name(1) == "zc_s1.0"
    assert fp.zc_space_name(0.125) == "zc_s0.125" and fp.unet_space_name("down1", 10) == "unet_down1_t10"
    for name in ("zc_s0.4", "zc_s0.25", "zc_s1.0", "unet_mid_t1", "unet_up3_t40", "unet_down0_t20"):
        assert re.fullmatch(r"[a-z0-9_.]+", name) and fp.is_parametric(name)
        assert re.fullmatch(fp.PARAMETRIC_RE, name)
        p = fp.parse_parametric(name)
        again = fp.zc_space_name(p["strength"]) if p["kind"] == "zc" else fp.unet_space_name(p["block"], p["step"])
        assert again == name
    assert fp.parse_parametric("unet_up3_t40") == {"kind": "unet", "block": "up3", "step": 40}
    for bad in ("zc_s0.40", "zc_s.4", "zc_s1.5", "zc_s0.0", "unet_mid_t0", "unet_mid_t01", "unet_down01_t1",
                "unet_side_t1", "sdz", "zc_s0.4/x"):
        with pytest.raises(ValueError):
            fp.parse_parametric(bad)
    with pytest.raises(ValueError, match="3 decimals"):
        fp.zc_space_name(0.1234)
    assert ep.describe_space("sdz")["label"] == "z" and ep.describe_space("sdc")["kind"] == "c"
    assert ep.describe_space("zc_s0.4")["label"] == "zc s=0.4"
    assert ep.describe_space("unet_mid_t10")["label"] == "mid t=10"


def test_encoding_config_names_and_checks():
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["encoding"]
    cfg = {**defaults("encoding"), **cfg}
    names = ep.space_names(cfg)
    assert names[:6] == ["sdz", "sdc", "zc_s0.2", "zc_s0.4", "zc_s0.6", "zc_s0.8"]
    assert len(names) == 6 + 3 * 3 and "unet_up3_t40" in names
    assert ep.figure_names(names) == ["spaces", "noise_levels", "unet_steps", "unet_layers"]
    assert ep.figure_names(["sdz", "sdc"]) == ["spaces"]
    with pytest.raises(ValueError, match="encoding.unet.steps: step.*exceed the 40"):
        ep.space_names({**cfg, "unet": {**cfg["unet"], "steps": [41]}})
    with pytest.raises(ValueError, match=r"encoding.zc_strengths\[0\]"):
        ep.space_names({**cfg, "zc_strengths": [0.12345]})
    with pytest.raises(ValueError, match=r"encoding.spaces\[0\]: unknown feature space 'nope'"):
        ep.space_names({**cfg, "spaces": ["nope"]})
    with pytest.raises(ValueError, match="figure_roi_file"):
        ep.space_names({**cfg, "figure_roi_file": "floc-faces", "roi_files": ["streams"]})


def _jobs(stdout: str) -> dict[str, int]:
    m = re.search(r"Job stats:\n(.*?)\n\n", stdout, re.S)
    assert m, stdout[-3000:]
    return {a: int(b) for a, b in re.findall(r"^(\S+)\s+(\d+)$", m.group(1), re.M)}


def _feature_jobs(stdout: str) -> list[tuple[str, str, str]]:
    """(space, subject, input line) of every `rule features` job of a dry run."""
    out = []
    for block in stdout.split("\n\n"):
        if re.search(r"^rule features:", block, re.M):
            wc = re.search(r"wildcards: space=([\w.]+), subject=(\d+)", block)
            out.append((wc.group(1), wc.group(2), re.search(r"input: (.*)", block).group(1)))
    return out


def test_dry_run_lists_encoding_jobs_for_four_subjects(tmp_path):
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    assert demo["nsd"]["subjects"] == [1, 2, 5, 7]
    proc = run_snakemake("-n", "encoding_all", "--configfile", REPO / "config" / "demo.yaml", "--directory", tmp_path,
                         timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    # demo: sdz, sdc, zc at 2 strengths, 2 blocks x 2 steps = 8 spaces x 4 subjects
    assert jobs["encoding_fit"] == 32
    # one features rule for every space: sdz, sdc and the 6 encoding-only spaces, 4 subjects each
    feats = _feature_jobs(proc.stdout)
    assert jobs["features"] == len(feats) == 4 * 8
    enc_feats = {(sp, s) for sp, s, _ in feats if sp.startswith(("zc_", "unet_"))}
    assert len(enc_feats) == 4 * 6 and {s for _, s in enc_feats} == {"01", "02", "05", "07"}
    assert jobs["encoding_mosaics"] == 4 and jobs["encoding_summary"] == 1 and jobs["encoding_figure"] == 4
    fits = re.findall(r"rule encoding_fit:.*?wildcards: voxels=(\w+), space=([\w.]+), subject=(\d+)", proc.stdout,
                      re.S)
    # the default voxel set is the whole brain (the CVPR paper's maps)
    assert {s for _, _, s in fits} == {"01", "02", "05", "07"} and {v for v, _, _ in fits} == {"brainmask"}
    assert {sp for _, sp, _ in fits} == {"sdz", "sdc", "zc_s0.4", "zc_s0.8", "unet_down0_t1", "unet_down0_t4",
                                         "unet_mid_t1", "unet_mid_t4"}
    for space, subject, inputs in feats:
        if space.startswith(("zc_", "unet_")):  # reads the images and the subject's c, runs the tiny SD
            assert "nsd_stimuli.hdf5" in inputs and f"features/sdc/subj{subject}.h5" in inputs
            assert "models_tiny/sd" in inputs
        else:  # sdz / sdc: no c file among the inputs
            assert "features/sdc/" not in inputs
    assert len(re.findall(r"results/prepared/brainmask/subj\d\d\.h5", proc.stdout)) >= 4
    # nsdgeneral maps, the cheaper option: only nsdgeneral's prepared files (no brainmask ones) are read
    over = tmp_path / "ng.yaml"
    over.write_text(yaml.safe_dump({"encoding": {"voxels": ["nsdgeneral"], "spaces": ["sdz"], "zc_strengths": [],
                                                 "unet": {"blocks": []}}}))
    proc = run_snakemake("-n", "encoding_all", "--configfile", REPO / "config" / "demo.yaml", over, "--directory",
                         tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["encoding_fit"] == 4 and not [f for f in _feature_jobs(proc.stdout) if f[0] != "sdz"]
    assert len(re.findall(r"results/prepared/nsdgeneral/subj\d\d\.h5", proc.stdout)) >= 4
    assert "results/prepared/brainmask/" not in proc.stdout
