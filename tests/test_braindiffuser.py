"""Brain-Diffuser reconstruction on tiny random-weight models (CPU), from fabricated regression outputs.

Nothing here depends on the features / regression stages: regression files of the documented
layout (docs/DATA_PRODUCTS.md) are written with random predictions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from brainrecon.models import load_model, prepare_model
from brainrecon.models.vd import dual_blocks
from brainrecon.models.vdvae import VDVAE, VDVAEConfig, latent_dims
from brainrecon.nsd.rois import roi_patterns
from brainrecon.reconstruct import braindiffuser as bd
from brainrecon.models.diffusion import make_generators, random_latents

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {role: prepare_model(role, root / role, "tiny", seed=0) for role in ("vd", "vdvae")}


@pytest.fixture(scope="module")
def vd(model_dirs):
    return load_model("vd", model_dirs["vd"])


@pytest.fixture(scope="module")
def vdvae():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = VDVAE(VDVAEConfig.tiny())
    return model.eval()


@pytest.fixture(scope="module")
def preds(vd, vdvae):
    """Random 'predictions' for 3 images: VDVAE latents (3, D), CLIP text/vision contexts, and second draws."""
    rng = np.random.default_rng(0)
    (tl, td), (il, idim) = bd.context_shapes(vd)
    d = latent_dims(vdvae.config)
    return {
        "keys": [3, 8, 11],
        "lat": rng.standard_normal((3, d)).astype(np.float32),
        "lat2": rng.standard_normal((3, d)).astype(np.float32),
        "text": rng.standard_normal((3, tl, td)).astype(np.float32),
        "text2": rng.standard_normal((3, tl, td)).astype(np.float32),
        "vision": rng.standard_normal((3, il, idim)).astype(np.float32),
        "vision2": rng.standard_normal((3, il, idim)).astype(np.float32),
    }


SMALL = bd.Settings.from_mapping(dict(steps=4, strength=0.75, image_size=32, batch_size=3))  # 3 denoising steps


def _inputs(preds, lat="lat", text="text", vision="vision", rows=slice(None)):
    """The reconstruct() inputs from the named entries of ``preds`` (None: absent)."""
    return {"vdvae": None if lat is None else preds[lat][rows], "cliptext": None if text is None else preds[text][rows],
            "clipvision": None if vision is None else preds[vision][rows]}


def _run(variant, preds, vd, vdvae, settings=SMALL, text="text", vision="vision", lat="lat", keys=None, subject="01"):
    return bd.reconstruct(variant, preds["keys"] if keys is None else keys, subject, settings,
                          models={"vdvae": vdvae, "vd": vd}, inputs=_inputs(preds, lat, text, vision), progress=False)


class UNetCalls:
    """Forward hook on the UNet: records (sample, encoder_hidden_states shape) of every call."""

    def __init__(self, unet):
        self.samples, self.contexts = [], []
        self.handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.samples.append(args[0].detach().clone())
        self.contexts.append(tuple(kwargs["encoder_hidden_states"].shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----------------------------------------------------------------------------- stage 1
def test_stage1_is_deterministic_per_seed_and_independent_of_batch(vdvae, preds):
    lat, seeds = preds["lat"], [101, 202, 303]
    a = bd.decode_stage1(vdvae, lat, seeds)
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, bd.decode_stage1(vdvae, lat, seeds))
    # other batch composition: reordered subset
    b = bd.decode_stage1(vdvae, lat[[2, 0]], [303, 101])
    assert np.array_equal(b[0], a[2]) and np.array_equal(b[1], a[0])
    # decoding one image per call gives the batched result
    assert np.array_equal(bd.decode_stage1(vdvae, lat, seeds, batch_size=1), a)
    # the seed matters (prior samples of the layers without a prediction, DMoL sampling) ...
    c = bd.decode_stage1(vdvae, lat[:1], [999])
    assert np.abs(c[0].astype(int) - a[0]).mean() > 1
    # ... and so do the predicted latents
    d = bd.decode_stage1(vdvae, preds["lat2"][:1], [101])
    assert np.abs(d[0].astype(int) - a[0]).mean() > 1


def test_stage1_layers_inferred_from_latent_size(vdvae):
    assert bd.vdvae_num_layers(vdvae, latent_dims(vdvae.config)) == 31
    assert bd.vdvae_num_layers(vdvae, latent_dims(vdvae.config, 5)) == 5
    with pytest.raises(ValueError, match="matches no number of decoder layers"):
        bd.vdvae_num_layers(vdvae, 12345)


def test_only_vdvae_is_the_bicubic_upsampled_stage1_and_needs_no_vd(vdvae, preds):
    s = bd.Settings.from_mapping(dict(image_size=96, batch_size=2))
    rec = bd.reconstruct("only_vdvae", preds["keys"], "01", s, models={"vdvae": vdvae},
                         inputs={"vdvae": preds["lat"]}, progress=False)
    assert rec.num_steps == 0 and rec.images.shape == (3, 96, 96, 3)
    expected = np.stack([np.asarray(Image.fromarray(im).resize((96, 96), Image.BICUBIC)) for im in rec.stage1])
    assert np.array_equal(rec.images, expected)
    seeds = [bd.image_seed(0, "01", k) for k in preds["keys"]]
    assert np.array_equal(rec.stage1, bd.decode_stage1(vdvae, preds["lat"], seeds))


# ----------------------------------------------------------------------------- stage 2
def test_full_runs_exactly_37_denoising_steps_for_50_steps_at_strength_075(vd, vdvae, preds, tmp_path):
    s = bd.Settings.from_mapping(dict(steps=50, strength=0.75, image_size=32, batch_size=2))
    with UNetCalls(vd.image_unet) as calls:
        out = bd.reconstruct_to_files(
            "full", preds["keys"][:2], "01", s, {"h5": tmp_path / "images.h5", "png": tmp_path / "png"},
            models={"vdvae": vdvae, "vd": vd}, inputs=_inputs(preds, rows=slice(0, 2)), progress=False,
        )
    assert len(calls.samples) == 37 == out["num_denoising_steps"] == bd.num_denoising_steps(50, 0.75)
    # CFG: unconditional and conditional halves in one call -> batch 2 x 2 images; dual context 77 + 17 tokens
    (tl, _), (il, _) = bd.context_shapes(vd)
    assert all(x.shape[0] == 4 for x in calls.samples)
    assert set(calls.contexts) == {(4, tl + il, vd.image_unet.config.cross_attention_dim)}
    with h5py.File(tmp_path / "images.h5") as f:
        assert f.attrs["num_denoising_steps"] == 37
        assert len(f.attrs["timesteps"]) == 37
        # the reference sampler's start (default init_noise: reference): noised to 741, first step at 721
        assert f.attrs["init_noise"] == "reference" and f.attrs["noise_timestep"] == 741
        assert f.attrs["timesteps"][0] == 721
        assert f.attrs["guidance_scale"] == 7.5 and f.attrs["effective_text_weight"] == pytest.approx(0.4)


def test_text_weight_is_the_dual_guidance_mix_ratio_of_each_variant(vd, vdvae, preds):
    for variant, expected in [("full", 0.4), ("no_text", 0.0), ("no_vision", 1.0), ("no_vdvae", 0.4)]:
        with UNetCalls(vd.image_unet):
            bd.reconstruct(variant, [3], "01", bd.Settings.from_mapping(dict(steps=2, strength=0.5, image_size=32)),
                           models={"vdvae": vdvae, "vd": vd}, inputs=_inputs(preds, rows=slice(0, 1)), progress=False)
        assert {b.mix_ratio for b in dual_blocks(vd.image_unet)} == {expected}, variant


def test_each_variant_reads_what_it_claims(vd, vdvae, preds):
    full = _run("full", preds, vd, vdvae)
    assert full.num_steps == bd.num_denoising_steps(4, 0.75) == 3
    # full depends on both CLIP predictions and on the VDVAE latents
    assert not np.array_equal(full.images, _run("full", preds, vd, vdvae, text="text2").images)
    assert not np.array_equal(full.images, _run("full", preds, vd, vdvae, vision="vision2").images)
    assert not np.array_equal(full.images, _run("full", preds, vd, vdvae, lat="lat2").images)
    # no_text = text weight 0: identical whatever the CLIP-text prediction, or none at all
    no_text = _run("no_text", preds, vd, vdvae)
    assert np.array_equal(no_text.images, _run("no_text", preds, vd, vdvae, text="text2").images)
    assert np.array_equal(no_text.images, _run("no_text", preds, vd, vdvae, text=None).images)
    assert not np.array_equal(no_text.images, _run("no_text", preds, vd, vdvae, vision="vision2").images)
    assert not np.array_equal(no_text.images, full.images)
    # no_vision = text weight 1: identical whatever the CLIP-vision prediction
    no_vision = _run("no_vision", preds, vd, vdvae)
    assert np.array_equal(no_vision.images, _run("no_vision", preds, vd, vdvae, vision="vision2").images)
    assert np.array_equal(no_vision.images, _run("no_vision", preds, vd, vdvae, vision=None).images)
    assert not np.array_equal(no_vision.images, _run("no_vision", preds, vd, vdvae, text="text2").images)
    # no_vdvae: independent of the VDVAE latents and of the VDVAE model; no stage 1
    no_vdvae = _run("no_vdvae", preds, vd, vdvae)
    assert no_vdvae.stage1 is None
    again = bd.reconstruct("no_vdvae", preds["keys"], "01", SMALL, models={"vd": vd},
                           inputs=_inputs(preds, lat=None), progress=False)
    assert np.array_equal(no_vdvae.images, again.images)
    assert not np.array_equal(no_vdvae.images, full.images)
    # a variant without what it needs says so
    with pytest.raises(ValueError, match="needs the cliptext predictions"):
        _run("full", preds, vd, vdvae, text=None)
    with pytest.raises(ValueError, match="needs the VDVAE model"):
        bd.reconstruct("only_vdvae", [3], "01", SMALL, models={}, inputs={"vdvae": preds["lat"][:1]}, progress=False)


def test_no_vdvae_starts_from_a_standard_normal_latent(vd, vdvae, preds):
    # the random "AutoKL latent" is exactly a N(0, I) draw from the image's stage-2 generator
    z = random_latents(vd.vae, 32, make_generators([5, 6]))
    ref = torch.stack([torch.randn(tuple(z.shape[1:]), generator=g) for g in make_generators([5, 6])])
    assert torch.allclose(z, ref, atol=1e-5)
    # the first UNet input (noised to t1) is then N(0, I) too: sqrt(abar) z0 + sqrt(1 - abar) eps
    with UNetCalls(vd.image_unet) as calls:
        _run("no_vdvae", preds, vd, None, lat=None)
    first = calls.samples[0][3:]  # conditional half (uncond half is the same latents)
    assert abs(float(first.std()) - 1.0) < 0.1 and abs(float(first.mean())) < 0.1
    # whereas the full variant starts from the encoded stage-1 image (a different, image-dependent start)
    with UNetCalls(vd.image_unet) as calls_full:
        bd.reconstruct("full", preds["keys"], "01", SMALL, models={"vdvae": vdvae, "vd": vd},
                       inputs=_inputs(preds), progress=False)
    assert not torch.allclose(calls_full.samples[0], calls.samples[0])


# ----------------------------------------------------------------------------- seeds
def test_seed_per_subject_and_image_independent_of_batch_composition(vd, vdvae, preds):
    all3 = _run("full", preds, vd, vdvae, settings=bd.Settings.from_mapping(dict(steps=10, image_size=32, batch_size=3)))
    sub = {k: preds[k][[2, 0]] for k in ("lat", "text", "vision")}
    two = bd.reconstruct("full", [11, 3], "01", bd.Settings.from_mapping(dict(steps=10, image_size=32, batch_size=1)),
                         models={"vdvae": vdvae, "vd": vd}, inputs=_inputs(sub), progress=False)
    assert list(two.seeds) == [all3.seeds[2], all3.seeds[0]]
    assert np.array_equal(two.stage1, all3.stage1[[2, 0]])
    diff = np.abs(two.images.astype(int) - all3.images[[2, 0]].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05  # batched kernels: at most a rounding flip
    # another subject or nsdId: another seed, another image
    other = _run("full", preds, vd, vdvae, subject="02")
    assert not set(other.seeds) & set(all3.seeds)
    assert np.abs(other.images.astype(int) - all3.images).mean() > 1
    assert len({bd.image_seed(0, s, 3) for s in ("01", "02", "avg")}) == 3
    assert bd.image_seed(0, "01", 3) != bd.image_seed(1, "01", 3)
    assert bd.image_seed(0, "01", "V1") != bd.image_seed(0, "01", "V2")


# ----------------------------------------------------------------------------- outputs
def test_outputs_are_complete_or_absent(vdvae, preds, tmp_path, monkeypatch):
    out, png = tmp_path / "subj01" / "images.h5", tmp_path / "subj01" / "png"
    s = bd.Settings.from_mapping(dict(image_size=32, batch_size=1))
    from brainrecon.reconstruct.braindiffuser import pipeline

    real_upsample = pipeline.upsample
    calls = []

    def failing_upsample(images, size):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full (simulated)")
        return real_upsample(images, size)

    monkeypatch.setattr(pipeline, "upsample", failing_upsample)
    with pytest.raises(RuntimeError, match="simulated"):
        bd.reconstruct_to_files("only_vdvae", preds["keys"], "01", s, {"h5": out, "png": png}, models={"vdvae": vdvae},
                                inputs={"vdvae": preds["lat"]}, progress=False)
    assert len(calls) == 2  # the first image had been written (to temporary names) when it failed
    assert not out.exists() and not png.exists()
    assert list((tmp_path / "subj01").iterdir()) == []  # no temporary leftovers either
    monkeypatch.setattr(pipeline, "upsample", real_upsample)

    bd.reconstruct_to_files("only_vdvae", preds["keys"], "01", s, {"h5": out, "png": png}, models={"vdvae": vdvae},
                            inputs={"vdvae": preds["lat"]}, progress=False)
    with h5py.File(out) as f:
        images, ids = f["images"][:], f["nsd_ids"][:]
        assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
        assert f["stage1"].shape == (3, 64, 64, 3)
        assert list(ids) == preds["keys"]
        assert list(f["seeds"][:]) == [bd.image_seed(0, "01", k) for k in preds["keys"]]
        assert f.attrs["variant"] == "only_vdvae" and f.attrs["num_denoising_steps"] == 0
        assert json.loads(f.attrs["settings"]) == {"image_size": 32, "seed": 0, "vdvae_temperature": 1.0}
    assert sorted(p.name for p in png.iterdir()) == sorted(f"{k}.png" for k in preds["keys"])
    for k, im in zip(ids, images):
        assert np.array_equal(np.asarray(Image.open(png / f"{k}.png")), im)


# ----------------------------------------------------------------------------- from regression files
def _write_regression(path, ids, pred, extra=None, key="pred_restd"):
    with h5py.File(path, "w") as f:
        f["nsd_ids"] = np.asarray(ids, np.int64)
        f[key] = pred
        f["train_mean"] = np.zeros(pred.shape[1:])
        f["train_std"] = np.ones(pred.shape[1:])
        for name, v in (extra or {}).items():
            f[f"extra/{name}"] = v


def test_reconstruct_subject_from_regression_files(model_dirs, vd, tmp_path):
    vdvae_model = load_model("vdvae", model_dirs["vdvae"]).model
    (tl, td), (il, idim) = bd.context_shapes(vd)
    rng = np.random.default_rng(1)
    ids = [7, 21]
    reg = {
        "vdvae": tmp_path / "vdvae.h5", "clipvision": tmp_path / "clipvision.h5", "cliptext": tmp_path / "cliptext.h5",
    }
    _write_regression(reg["vdvae"], ids, rng.standard_normal((2, latent_dims(vdvae_model.config))).astype("f4"))
    _write_regression(reg["clipvision"], ids, rng.standard_normal((2, il, idim)).astype("f4"))
    _write_regression(reg["cliptext"], ids, rng.standard_normal((2, tl, td)).astype("f4"), key="pred")
    settings = {"image_size": 32, "seed": 0, "vdvae_temperature": 1.0, "steps": 4, "strength": 0.75,
                "guidance_scale": 7.5, "batch_size": 2, "text_weight": 0.4}
    out = tmp_path / "full" / "subjavg"
    keys = {"vdvae": "pred_restd", "clipvision": "pred_restd", "cliptext": "pred"}
    models = {"vdvae_model": model_dirs["vdvae"], "vd_model": model_dirs["vd"]}
    res = bd.reconstruct_subject("full", "avg", {**reg, **models}, {"h5": out / "images.h5", "png": out / "png"},
                                 settings=bd.Settings.from_mapping(settings), prediction_keys=keys,
                                 device="cpu", dtype="float16", progress=False)
    assert res["num_denoising_steps"] == 3
    with h5py.File(out / "images.h5") as f:
        assert f["images"].shape == (2, 32, 32, 3) and list(f["nsd_ids"][:]) == ids
        used = json.loads(f.attrs["inputs"])
        assert used["vdvae"].endswith("vdvae.h5:pred_restd") and used["cliptext"].endswith("cliptext.h5:pred")
        assert f.attrs["dtype"] == "float32" and f.attrs["device"] == "cpu"  # CPU always float32
        assert list(f["seeds"][:]) == [bd.image_seed(0, "avg", k) for k in ids]
    # only_vdvae reads the VDVAE predictions only (no CLIP file, no VD model)
    out2 = tmp_path / "only_vdvae" / "subjavg"
    bd.reconstruct_subject("only_vdvae", "avg", {"vdvae": reg["vdvae"], "vdvae_model": model_dirs["vdvae"]},
                           {"h5": out2 / "images.h5", "png": out2 / "png"},
                           settings=bd.Settings.from_mapping(bd.variant_settings("only_vdvae", settings)),
                           prediction_keys=keys, device="cpu", dtype="float32", progress=False)
    with h5py.File(out2 / "images.h5") as f, h5py.File(out / "images.h5") as g:
        assert np.array_equal(f["stage1"][:], g["stage1"][:])  # same seeds, same stage 1 in every variant
    # the files of one subject must list the same test images
    _write_regression(reg["cliptext"], [7, 22], rng.standard_normal((2, tl, td)).astype("f4"), key="pred")
    with pytest.raises(ValueError, match="test nsdIds differ"):
        bd.reconstruct_subject("full", "avg", {**reg, **models}, {"h5": out / "x.h5", "png": out / "xpng"},
                               settings=bd.Settings.from_mapping(settings), prediction_keys=keys, device="cpu",
                               dtype="float32")
    assert not (out / "x.h5").exists()


# ----------------------------------------------------------------------------- ROI-optimal
def _prepared_with_rois(path, rng, v=60):
    labels = {
        "prf-visualrois": rng.integers(-1, 8, v),
        "floc-faces": rng.integers(0, 6, v),
        "prf-eccrois": rng.integers(-1, 6, v),
        "floc-places": np.zeros(v, np.int64),
    }
    with h5py.File(path, "w") as f:
        f["voxels/ijk"] = np.zeros((v, 3), np.int32)
        for name, lab in labels.items():
            f[f"rois/{name}"] = lab.astype(np.int16)
    return labels


def test_roi_patterns_are_one_exactly_on_the_roi_voxels(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "prep.h5"
    labels = _prepared_with_rois(path, rng)
    pats = roi_patterns(path, ["V1", "V4", "face", "ecc4+"])
    assert set(pats) == {"V1", "V4", "face", "ecc4+"}
    for p in pats.values():
        assert p.shape == (1, 60) and p.dtype == np.float32 and set(np.unique(p)) <= {0.0, 1.0}
    vis = labels["prf-visualrois"]
    assert np.array_equal(pats["V1"][0] == 1, (vis == 1) | (vis == 2))  # V1v ∪ V1d
    assert np.array_equal(pats["V4"][0] == 1, vis == 7)  # hV4
    assert np.array_equal(pats["face"][0] == 1, labels["floc-faces"] >= 1)
    assert np.array_equal(pats["ecc4+"][0] == 1, labels["prf-eccrois"] == 5)
    # the file's own ctab labels win over the default table
    with h5py.File(path, "a") as f:
        f["rois/prf-visualrois"].attrs["labels_json"] = json.dumps({"1": "V1v", "3": "V1d", "7": "hV4"})
    assert np.array_equal(roi_patterns(path, ["V1"])["V1"][0] == 1, (vis == 1) | (vis == 3))
    with pytest.raises(ValueError, match="unknown ROI-optimal"):
        roi_patterns(path, ["V7"])
    with pytest.raises(ValueError, match="'place'.*no voxel"):
        roi_patterns(path, ["place"])
    with pytest.raises(KeyError, match="floc-words"):
        roi_patterns(path, ["word"])


def test_renormalised_predictions_have_the_training_mean_norm(tmp_path):
    rng = np.random.default_rng(3)
    rows_a = rng.standard_normal((7, 4, 5)) * 3 + 1
    rows_b = rng.standard_normal((12, 4, 5))
    for name, rows in (("a", rows_a), ("b", rows_b)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["train/features"] = rows.reshape(len(rows), -1).astype("f4")
    pooled = np.concatenate([rows_a, rows_b]).reshape(19, -1).astype("f4").astype(np.float64)
    target = np.linalg.norm(pooled, axis=1).mean()
    got = bd.mean_row_norm([tmp_path / "a.h5", tmp_path / "b.h5"], chunk_rows=5)
    assert got == pytest.approx(target, rel=1e-9)
    assert bd.mean_row_norm(tmp_path / "a.h5") == pytest.approx(np.linalg.norm(pooled[:7], axis=1).mean())
    pred = rng.standard_normal((3, 4, 5)) * np.array([0.01, 1.0, 100.0])[:, None, None]
    out = bd.renormalise(pred, got)
    assert out.shape == pred.shape
    assert np.allclose(np.linalg.norm(out.reshape(3, -1), axis=1), got, rtol=1e-5)
    cos = (out.reshape(3, -1) * pred.reshape(3, -1)).sum(1) / np.linalg.norm(out.reshape(3, -1), axis=1) \
        / np.linalg.norm(pred.reshape(3, -1), axis=1)
    assert np.allclose(cos, 1.0)
    # the moments fallback is the RMS norm (>= the mean norm)
    rms = bd.rms_norm_from_moments(pooled.mean(0), pooled.std(0))
    assert rms == pytest.approx(np.sqrt((pooled ** 2).sum(1).mean()))
    assert rms >= target
    with pytest.raises(ValueError, match="cannot renormalise"):
        bd.renormalise(np.zeros((1, 3)), 1.0)


def test_reconstruct_rois_renormalise_recipe_writes_one_image_per_roi(model_dirs, vd, tmp_path, monkeypatch):
    d = latent_dims(load_model("vdvae", model_dirs["vdvae"]).model.config)
    (tl, td), (il, idim) = bd.context_shapes(vd)
    shapes = {"vdvae": (d,), "clipvision": (il, idim), "cliptext": (tl, td)}
    rng = np.random.default_rng(4)
    reg, feats = {}, {}
    for space, shape in shapes.items():
        reg[space] = tmp_path / f"reg_{space}.h5"
        extra = {f"roi_{n}": rng.standard_normal((1, *shape)).astype("f4") * 0.01 for n in ("V1", "face")}
        _write_regression(reg[space], [1, 2], rng.standard_normal((2, *shape)).astype("f4"), extra=extra)
        feats[space] = [tmp_path / f"feat_{space}_{i}.h5" for i in range(2)]
        for i, p in enumerate(feats[space]):
            with h5py.File(p, "w") as f:
                f["train/features"] = (rng.standard_normal((5 + i, int(np.prod(shape)))) * (2 + i)).astype("f4")
    seen = {}
    from brainrecon.reconstruct.braindiffuser import roi

    real = roi.reconstruct_to_files

    def spy(variant, keys, subject, settings, outputs, **kw):
        seen.update(kw, variant=variant, keys=keys)
        return real(variant, keys, subject, settings, outputs, **kw)

    monkeypatch.setattr(roi, "reconstruct_to_files", spy)
    settings = bd.roi_settings({"image_size": 32, "seed": 0, "vdvae_temperature": 1.0, "steps": 4, "strength": 0.75,
                                "guidance_scale": 7.5, "batch_size": 2, "text_weight": 0.4, "init_noise": "reference",
                                "roi_recipe": "renormalise", "roi_constants": "derived"})
    out = tmp_path / "roi" / "subjavg"
    inputs = {**reg, **{f"features_{k}": [str(p) for p in v] for k, v in feats.items()},
              "vdvae_model": model_dirs["vdvae"], "vd_model": model_dirs["vd"]}
    bd.reconstruct_rois("avg", ["V1", "face"], inputs, {"h5": out / "images.h5", "png": out / "png"},
                        settings=bd.Settings.from_mapping(settings), device="cpu", dtype="float32", progress=False)
    assert seen["variant"] == "full" and seen["keys"] == ["V1", "face"]
    norms = {space: bd.mean_row_norm(feats[space]) for space in shapes}
    lat = seen["inputs"]["vdvae"][0:2]
    assert np.allclose(np.linalg.norm(lat, axis=1), norms["vdvae"], rtol=1e-5)
    for space in ("clipvision", "cliptext"):
        assert np.allclose(np.linalg.norm(seen["inputs"][space].reshape(2, -1), axis=1), norms[space], rtol=1e-5)
    # direction kept: the renormalised V1 latent is parallel to the regression's extra/roi_V1
    with h5py.File(reg["vdvae"]) as f:
        raw = f["extra/roi_V1"][0]
    assert np.allclose(lat[0] / norms["vdvae"], raw / np.linalg.norm(raw), atol=1e-5)
    with h5py.File(out / "images.h5") as f:
        assert [r.decode() if isinstance(r, bytes) else r for r in f["rois"][:]] == ["V1", "face"]
        assert f["images"].shape == (2, 32, 32, 3)
        assert json.loads(f.attrs["roi_constants_used"])["target_norms"] == pytest.approx(norms)
        assert f.attrs["roi_recipe"] == "renormalise"
    assert sorted(p.name for p in (out / "png").iterdir()) == ["V1.png", "face.png"]


def _roi_toy(tmp_path, rng, V=30, n_train=40):
    """Exactly z-scored training betas (as Brain-Diffuser's X), three spaces, three ROI patterns."""
    from brainrecon.regression.plan import SpaceFit
    from brainrecon.regression.stage import fit_space

    shapes = {"vdvae": (12,), "clipvision": (3, 4), "cliptext": (2, 4)}
    Xtr = rng.standard_normal((n_train, V))
    Xtr = (Xtr - Xtr.mean(0)) / Xtr.std(0)
    Xte = rng.standard_normal((6, V))
    prep = tmp_path / "prep.h5"
    with h5py.File(prep, "w") as f:
        f["train/betas"], f["train/nsd_ids"] = Xtr.astype("f4"), np.arange(n_train)
        f["test/betas"], f["test/nsd_ids"] = Xte.astype("f4"), np.arange(100, 106)
        f["voxels/ijk"] = np.zeros((V, 3), np.int64)
    pats = {f"roi_{n}": (rng.random((1, V)) < 0.3).astype("f4") for n in ("face", "V1", "ecc1")}
    pats["zero"] = np.zeros((1, V), "f4")
    reg, feats, Y = {}, {}, {}
    for space, shape in shapes.items():
        D = int(np.prod(shape))
        W = rng.standard_normal((V, D))
        Y[space] = (Xtr.astype("f4").astype(np.float64) @ W + 2.0 + rng.standard_normal((n_train, D)))
        feats[space] = tmp_path / f"feat_{space}.h5"
        with h5py.File(feats[space], "w") as f:
            f["train/features"], f["train/nsd_ids"] = Y[space].astype("f4"), np.arange(n_train)
            f["test/features"], f["test/nsd_ids"] = np.zeros((6, D), "f4"), np.arange(100, 106)
            f.attrs["feature_shape"] = np.asarray(shape)
        reg[space] = tmp_path / f"reg_{space}.h5"
        fit_space(prep, feats[space], reg[space], SpaceFit.build(alphas=[30.0], train_on="averaged"),
                  extra_patterns=pats, progress=False)
    return prep, pats, shapes, reg, feats, Xtr.astype("f4").astype(np.float64), Y


@pytest.mark.parametrize("constants", ["published", "derived"])
def test_roi_reference_recipe_equals_roi_generate_features(tmp_path, constants):
    """The reference (scripts/roi_generate_features.py) computed independently on sklearn Ridge's coef_ and
    intercept_: VDVAE unit(p W^T) * 50 + b, z-scored across the ROIs, mapped to the training latents' mean/std,
    norm 80; CLIP unit(p W^T) * 15 (vision) / 9 (text) + b. Our inputs from the regression outputs equal it."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(11)
    prep, pats, shapes, reg, feats, Xtr, Y = _roi_toy(tmp_path, rng)
    names = ["face", "V1", "ecc1"]
    roi_act = np.concatenate([pats[f"roi_{n}"] for n in names]).astype(np.float64)
    settings = bd.Settings.from_mapping({"roi_recipe": "reference", "roi_constants": constants})
    got, used = bd.roi_inputs_for(names, reg, {k: [str(v)] for k, v in feats.items()}, settings)

    if constants == "published":
        const = {"vdvae": 50, "clipvision": 15, "cliptext": 9, "vdvae_norm": 80}
    else:  # derived from the training features: mean distance from the mean; VDVAE: mean norm
        const = {k: float(np.linalg.norm(Y[k] - Y[k].mean(0), axis=1).mean()) for k in shapes}
        const["vdvae_norm"] = float(np.linalg.norm(Y["vdvae"], axis=1).mean())
    assert used == pytest.approx(const, rel=1e-5)
    num_rois = len(names)
    # -- VDVAE, line by line as the reference
    ridge = Ridge(alpha=30.0, fit_intercept=True).fit(Xtr, Y["vdvae"])
    reg_w, reg_b = ridge.coef_, ridge.intercept_
    pred_vae = roi_act @ reg_w.T
    pred_vae = pred_vae / (np.linalg.norm(pred_vae, axis=1).reshape((num_rois, 1)) + 1e-8)
    pred_vae = pred_vae * const["vdvae"] + reg_b
    pred_vae = (pred_vae - np.mean(pred_vae, axis=0)) / np.std(pred_vae, axis=0)
    pred_vae = pred_vae * np.std(Y["vdvae"], axis=0) + np.mean(Y["vdvae"], axis=0)
    pred_vae = pred_vae / np.linalg.norm(pred_vae, axis=1).reshape((num_rois, 1))
    pred_vae = pred_vae * const["vdvae_norm"]
    np.testing.assert_allclose(got["vdvae"], pred_vae, rtol=1e-4, atol=1e-4 * np.abs(pred_vae).max())
    # -- CLIP: per token j, pred[:, j] = roi_act @ reg_w[j].T; Frobenius unit norm; scale; + intercept
    for space in ("clipvision", "cliptext"):
        T, d = shapes[space]
        ridge = Ridge(alpha=30.0, fit_intercept=True).fit(Xtr, Y[space])
        reg_w = ridge.coef_.reshape(T, d, -1)
        reg_b = ridge.intercept_.reshape(T, d)
        pred = np.zeros((num_rois, T, d))
        for j in range(T):
            pred[:, j] = roi_act @ reg_w[j].T
        pred = pred / (np.linalg.norm(pred, axis=(1, 2)).reshape((num_rois, 1, 1)) + 1e-8)
        pred = pred * const[space] + reg_b
        np.testing.assert_allclose(got[space], pred, rtol=1e-4, atol=1e-4 * np.abs(pred).max())


def test_roi_reference_recipe_needs_two_rois_and_is_the_default(tmp_path):
    rng = np.random.default_rng(12)
    _, _, _, reg, feats, _, _ = _roi_toy(tmp_path, rng)
    s = bd.Settings.from_mapping({})
    assert (s.roi_recipe, s.roi_constants) == ("reference", "derived")
    with pytest.raises(ValueError, match=">= 2 ROI rows"):
        bd.roi_inputs_for(["face"], reg, {k: [str(v)] for k, v in feats.items()}, s)
    from brainrecon.schema import defaults

    assert defaults("methods.braindiffuser")["roi_optimal"] == [
        "face", "word", "place", "body", "V1", "V2", "V3", "V4", "ecc0pt5", "ecc1", "ecc2", "ecc4", "ecc4+"]


# ----------------------------------------------------------------------------- settings
def test_variant_settings_list_only_what_a_variant_depends_on():
    cfg = {"image_size": 512, "seed": 0, "vdvae_temperature": 1.0, "steps": 50, "strength": 0.75,
           "guidance_scale": 7.5, "batch_size": 4, "text_weight": 0.4, "variants": ["full"], "enabled": True,
           "init_noise": "reference"}
    assert set(bd.variant_settings("only_vdvae", cfg)) == {"image_size", "seed", "vdvae_temperature"}
    assert all("init_noise" in bd.variant_settings(v, cfg) for v in bd.VARIANTS if v != "only_vdvae")
    assert "vdvae_temperature" not in bd.variant_settings("no_vdvae", cfg)
    assert "text_weight" not in bd.variant_settings("no_text", cfg)
    assert "text_weight" not in bd.variant_settings("no_vision", cfg)
    assert {"guidance_scale", "steps", "strength", "text_weight"} <= set(bd.variant_settings("full", cfg))
    assert not any("batch_size" in bd.variant_settings(v, cfg) for v in bd.VARIANTS)
    assert bd.variant_spec("only_vdvae").needs == ("vdvae",)
    assert "cliptext" not in bd.variant_spec("no_text").needs and "clipvision" not in bd.variant_spec("no_vision").needs
    with pytest.raises(ValueError, match="unknown Brain-Diffuser variant"):
        bd.variant_spec("roi")
    with pytest.raises(ValueError, match="unknown methods.braindiffuser setting.*guidance"):
        bd.Settings.from_mapping({"guidance": 3})
    with pytest.raises(ValueError, match="text_weight"):
        bd.Settings.from_mapping(dict(text_weight=1.5))


# ----------------------------------------------------------------------------- workflow
SNAKEFILE = """
from pathlib import Path
configfile: "config.yaml"
include: "{repo}/workflow/rules/common.smk"
wildcard_constraints:
    subject=r"\\d\\d",
include: "{repo}/workflow/rules/braindiffuser.smk"
rule all:
    input: braindiffuser_plan.targets(config)
"""


def _snakemake(workdir, *args):
    exe = str(Path(sys.executable).with_name("snakemake"))
    return subprocess.run([exe, "-s", "Snakefile", "--cores", "1", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=300)


def _jobs(stdout):
    """rule -> count from the job table of a dry run."""
    out, table = {}, False
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
            continue
        if table and len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
        elif table and parts and parts[0] == "total":
            break
    return out


@pytest.mark.slow
def test_rules_dag_inputs_and_rerun_scope(tmp_path):
    """Dry runs: every variant × subject (+ avg) + ROI folders; only_vdvae/no_text do not depend on
    CLIP-text outputs; a batch_size change reruns nothing; a guidance_scale change reruns stage-2
    variants only."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["nsd"]["subjects"] = [1, 2]
    cfg["methods"]["braindiffuser"]["roi_optimal"] = ["V1", "face"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(repo=REPO))
    models = tmp_path / cfg["models"]["tiny_root"]
    for role in ("vd", "vdvae"):
        (models / role).mkdir(parents=True)
    for space in bd.SPACES:
        for s in ("01", "02", "avg"):
            p = tmp_path / f"results/regression/{space}/subj{s}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        for s in ("01", "02"):
            p = tmp_path / f"results/features/{space}/subj{s}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    proc = _snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs.get("reconstruct_braindiffuser") == 5 * 3, proc.stdout[-3000:]  # 5 variants x (01, 02, avg)
    assert jobs.get("reconstruct_braindiffuser_roi") == 3

    # pretend every job ran (outputs present, metadata incl. params recorded), then check what a change reruns
    out = tmp_path / "results/reconstruct/braindiffuser"
    for folder in [*(f"{v}/subj{s}" for v in bd.VARIANTS for s in ("01", "02", "avg")),
                   *(f"roi/subj{s}" for s in ("01", "02", "avg"))]:
        (out / folder / "png").mkdir(parents=True)
        (out / folder / "images.h5").touch()
    proc = _snakemake(tmp_path, "--touch", "--forceall")
    assert proc.returncode == 0, proc.stderr[-3000:]
    time.sleep(1.1)
    (tmp_path / "results/regression/cliptext/subj01.h5").write_text("new")  # e.g. a new CLIP-text alpha
    proc = _snakemake(tmp_path, "-n")
    rerun = set(re.findall(r"output: results/reconstruct/braindiffuser/(\w+)/subj01/images\.h5", proc.stdout))
    assert rerun == {"full", "no_vdvae", "no_vision", "roi"}, proc.stdout[-3000:]

    cfg["methods"]["braindiffuser"]["batch_size"] = 1  # fitting the batch to a GPU reruns nothing
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _snakemake(tmp_path, "-n", "--rerun-triggers", "params")
    assert not re.findall(r"output: results/reconstruct/braindiffuser/\w+/subj02/", proc.stdout), proc.stdout[-3000:]

    cfg["methods"]["braindiffuser"]["guidance_scale"] = 5.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _snakemake(tmp_path, "-n", "--rerun-triggers", "params")
    rerun = set(re.findall(r"output: results/reconstruct/braindiffuser/(\w+)/subj02/images\.h5", proc.stdout))
    assert rerun == {"full", "no_vdvae", "no_text", "no_vision", "roi"}, proc.stdout[-3000:]
