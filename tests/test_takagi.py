"""Takagi & Nishimoto reconstruction with tiny random-weight models and fabricated predictions.

Checks: the roles load from their hub layouts; X_z decoding; 40 of 50 DDIM steps (UNet hook);
5 samples differ and each is reproducible alone from its recorded seed; z-only ignores c, c-only
ignores z (while zc depends on both); BLIP captions (one per image, non-empty, min/max length in
tokens); +D feeds the decoded depth map as the SD2-depth UNet's 5th channel and changes the output;
every variant writes its own folder with the documented layout.
"""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from brainrecon.models import load_model, prepare_model
from brainrecon.models.registry import select_repo_files
from brainrecon.reconstruct import takagi as T
from brainrecon.reconstruct.run import Predictions, derive_seed

torch.set_num_threads(1)

SIZE = 32  # tiny SD: VAE factor 4 -> latents 4x8x8
IDS = np.array([3, 11, 42])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("tn_models")
    return {r: prepare_model(r, d / r, "tiny", seed=0) for r in ("sd", "sd2_depth", "blip", "dpt")}


@pytest.fixture(scope="module")
def models(folders):
    return {r: load_model(r, f) for r, f in folders.items()}


@pytest.fixture(scope="module")
def preds():
    rng = np.random.default_rng(0)
    n = IDS.size
    return {
        "z": rng.standard_normal((n, 4, 8, 8)).astype(np.float32),
        "z2": rng.standard_normal((n, 4, 8, 8)).astype(np.float32),
        "c": rng.standard_normal((n, 77, 32)).astype(np.float32),
        "c2": rng.standard_normal((n, 77, 32)).astype(np.float32),
        "blip": rng.standard_normal((n, 10, 32)).astype(np.float32),
        "dpt": rng.standard_normal((n, 68, 32)).astype(np.float32),
    }


def settings(**kw):
    base = dict(steps=10, strength=0.8, guidance_scale=5.0, n_samples=3, image_size=SIZE, batch_size=4, seed=7)
    base.update(kw)
    return T.Settings.from_mapping(base)


def run(variant, models, preds, s=None, z="z", c="c", captions=None, depth=None):
    """T.reconstruct on IDS with the tiny SD / SD2-depth; z, c: keys of ``preds`` or arrays (None: absent)."""
    inputs = {"sdz": preds[z] if isinstance(z, str) else z, "sdc": preds[c] if isinstance(c, str) else c,
              "captions": captions, "depth": depth}
    return T.reconstruct(variant, IDS, "01", s or settings(), models={"sd": models["sd"], "sd2_depth": models["sd2_depth"]},
                         inputs=inputs, progress=False)


class Counter:
    """Forward pre-hook on a UNet: number of calls and the sample tensors it received."""

    def __init__(self, unet):
        self.calls, self.inputs = 0, []
        self.handle = unet.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.calls += 1
        self.inputs.append(args[0].detach().clone())

    def remove(self):
        self.handle.remove()


# ----------------------------------------------------------------------------- roles
def test_roles_layout_and_classes(folders, models):
    blip = folders["blip"]
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt", "tokenizer_config.json",
              "special_tokens_map.json"):
        assert (blip / f).is_file(), f
    assert not (blip / "processor_config.json").exists()  # not in the hub repo
    index = json.loads((folders["sd2_depth"] / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionDepth2ImgPipeline"
    assert index["depth_estimator"] == ["transformers", "DPTForDepthEstimation"]
    assert index["feature_extractor"] == ["transformers", "DPTFeatureExtractor"]
    assert models["sd2_depth"].unet.config.in_channels == 5
    assert type(models["sd2_depth"].scheduler).__name__ == "DDIMScheduler"
    assert type(models["blip"].model).__name__ == "BlipForConditionalGeneration"
    assert models["blip"].processor.tokenizer.bos_token == "[DEC]"
    assert type(models["dpt"].model).__name__ == "DPTForDepthEstimation"


def test_fetch_selects_tokenizer_and_processor_files():
    listing = ["README.md", "config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
               "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt"]
    got = select_repo_files("blip", listing)
    assert got == sorted(["config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                          "tokenizer.json", "tokenizer_config.json", "vocab.txt"])
    sd2 = ["model_index.json", "depth_estimator/config.json", "depth_estimator/model.safetensors",
           "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
           "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
           "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
           "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
           "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
           "vae/diffusion_pytorch_model.safetensors", "512-depth-ema.ckpt"]
    got = select_repo_files("sd2_depth", sd2)
    assert "512-depth-ema.ckpt" not in got and not any("fp16" in f for f in got)
    assert "unet/diffusion_pytorch_model.safetensors" in got and "feature_extractor/preprocessor_config.json" in got


# ----------------------------------------------------------------------------- X_z and steps
def test_decode_z_is_the_vae_decoding_resized(models, preds):
    from brainrecon.models.diffusion import vae_decode

    out = T.decode_z(models["sd"].vae, preds["z"][:1], 48)
    assert out.shape == (1, 48, 48, 3) and out.dtype == np.uint8
    ref = vae_decode(models["sd"].vae, torch.from_numpy(preds["z"][:1]))  # 32 px
    ref = (ref[0].permute(1, 2, 0).numpy() * 255).round()
    small = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(out[0]).resize((32, 32)))
    assert np.corrcoef(small.ravel(), ref.ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match="predicted z"):
        T.decode_z(models["sd"].vae, np.zeros((1, 3, 8, 8), np.float32), 32)


def test_forty_of_fifty_steps(models, preds):
    unet = models["sd"].unet
    cnt = Counter(unet)
    try:
        rec = T.reconstruct("zc", IDS[:1], "01", settings(steps=50, n_samples=1, batch_size=1),
                            models={"sd": models["sd"]}, inputs={"sdz": preds["z"][:1], "sdc": preds["c"][:1]},
                            progress=False)
    finally:
        cnt.remove()
    assert cnt.calls == 40 and rec.num_steps == 40
    assert len(rec.timesteps) == 40
    # the reference sampler's start (default init_noise: reference): noised to 801, first step at 781
    assert rec.schedule.noise_timestep == 801 and rec.timesteps[0] == 781
    assert T.output_attrs("zc", "01", settings(steps=50), rec)["noise_timestep"] == 801
    assert cnt.inputs[0].shape[0] == 2  # CFG: unconditional + conditional
    assert T.num_denoising_steps("zc", 50, 0.8) == 40 and T.num_denoising_steps("c", 50, 0.8) == 50
    # c only: pure noise over the whole grid
    cnt = Counter(unet)
    try:
        rec = T.reconstruct("c", IDS[:1], "01", settings(steps=50, n_samples=1, batch_size=1),
                            models={"sd": models["sd"]}, inputs={"sdc": preds["c"][:1]}, progress=False)
    finally:
        cnt.remove()
    assert cnt.calls == 50 and rec.num_steps == 50
    # z only: both branches would be the empty prompt -> one conditional pass per step
    cnt = Counter(unet)
    try:
        T.reconstruct("z", IDS[:1], "01", settings(steps=10, n_samples=1, batch_size=1),
                      models={"sd": models["sd"]}, inputs={"sdz": preds["z"][:1]}, progress=False)
    finally:
        cnt.remove()
    assert cnt.calls == 8 and cnt.inputs[0].shape[0] == 1


# ----------------------------------------------------------------------------- seeds
def test_samples_differ_and_reproduce_from_their_seeds(models, preds):
    s = settings()
    rec = run("zc", models, preds, s)
    assert rec.images.shape == (3, 3, SIZE, SIZE, 3) and rec.images.dtype == np.uint8
    assert rec.seeds.shape == (3, 3) and np.unique(rec.seeds).size == 9
    assert rec.seeds[1, 2] == derive_seed(7, 1, int(IDS[1]), 2) == T.sample_seed(7, "01", IDS[1], 2)
    for i in range(3):
        for a in range(3):
            for b in range(a + 1, 3):
                assert np.abs(rec.images[i, a].astype(int) - rec.images[i, b]).mean() > 1.0
    # one sample alone, from its recorded seed, in a batch of its own
    alone = T.reconstruct("zc", IDS[1:2], "01", settings(batch_size=1), models={"sd": models["sd"]},
                          inputs={"sdz": preds["z"][1:2], "sdc": preds["c"][1:2]}, samples=[2], progress=False)
    assert alone.seeds[0, 0] == rec.seeds[1, 2]
    np.testing.assert_array_equal(alone.images[0, 0], rec.images[1, 2])
    # a different base seed changes the samples; another subject too
    other = run("zc", models, preds, settings(seed=8))
    assert not np.array_equal(other.images, rec.images)
    assert T.sample_seed(7, "02", IDS[1], 2) != rec.seeds[1, 2]


# ----------------------------------------------------------------------------- which input matters
def test_z_only_ignores_c_and_c_only_ignores_z(models, preds):
    s = settings(n_samples=1)
    z1 = run("z", models, preds, s, c=preds["c"]).images
    z2 = run("z", models, preds, s, c="c2").images
    z3 = run("z", models, preds, s, c=None).images
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(z1, z3)
    c1 = run("c", models, preds, s, z=preds["z"]).images
    c2 = run("c", models, preds, s, z="z2").images
    c3 = run("c", models, preds, s, z=None).images
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(c1, c3)
    # ... while zc uses both (so the checks above are not vacuous)
    zc = run("zc", models, preds, s).images
    assert not np.array_equal(zc, run("zc", models, preds, s, c="c2").images)
    assert not np.array_equal(zc, run("zc", models, preds, s, z="z2").images)
    assert not np.array_equal(zc, z1)
    with pytest.raises(ValueError, match="needs the sdz"):
        run("zc", models, preds, s, z=None)


# ----------------------------------------------------------------------------- +T
def test_captions_one_per_image_non_empty(models, preds):
    cs = T.CaptionSettings.from_mapping({"max_length": 12, "min_length": 6})
    caps, n_tok = T.decode_captions(models["blip"], preds["blip"], cs, progress=False)
    assert len(caps) == len(IDS) and all(isinstance(c, str) and c.strip() for c in caps)
    assert all(6 <= n <= 12 for n in n_tok)
    vocab = set(models["blip"].processor.tokenizer.get_vocab())
    assert all(w in vocab for c in caps for w in c.split())
    assert not any(c.startswith("a picture of") for c in caps)  # prompt stripped
    # batching does not change beam search results
    cs1 = T.CaptionSettings.from_mapping({"max_length": 12, "min_length": 6, "batch_size": 1})
    caps1, _ = T.decode_captions(models["blip"], preds["blip"], cs1, progress=False)
    assert caps1 == caps


def test_caption_min_length_is_respected(models, preds):
    """A decoder that always wants to stop ([SEP] logit boosted) stops exactly at min_length."""
    parts = copy.copy(models["blip"])
    parts.model = copy.deepcopy(models["blip"].model)
    sep = parts.model.config.text_config.sep_token_id
    with torch.no_grad():
        parts.model.text_decoder.cls.predictions.decoder.bias[sep] += 1e3
    prompt_len = 4  # [DEC] a picture of
    for m in (0, 7, 9):
        cs = T.CaptionSettings.from_mapping({"min_length": m})
        caps, n_tok = T.decode_captions(parts, preds["blip"], cs, progress=False)
        # min_length counts the whole sequence; [SEP] is allowed from length m on and then emitted at once
        assert list(n_tok) == [max(m, prompt_len + 1) + (1 if m > prompt_len else 0)] * len(IDS)
        if m > prompt_len:
            assert all(len(c.split()) == m - prompt_len for c in caps)
    with pytest.raises(ValueError, match="min_length"):
        T.CaptionSettings.from_mapping({"min_length": 30, "max_length": 20})


def test_captions_csv_round_trip(tmp_path):
    p = tmp_path / "c.csv"
    T.write_captions_csv(p, [5, 2], ["a dog", "NA"], [7, 6])
    assert T.read_captions_csv(p, [2, 5]) == ["NA", "a dog"]
    assert list(pd.read_csv(p).columns) == ["nsdId", "caption", "n_tokens"]
    with pytest.raises(KeyError, match="nsdId"):
        T.read_captions_csv(p, [9])


def test_caption_variant_is_prompted_by_the_caption(models, preds):
    s = settings(n_samples=1)
    a = run("t", models, preds, s, captions=["dog on grass"] * 3).images
    b = run("t", models, preds, s, captions=["red bus in street"] * 3).images
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, run("t", models, preds, s, captions=["dog on grass"] * 3, c="c2").images)


# ----------------------------------------------------------------------------- +D
def test_depth_decoding_matches_dpt_forward(models):
    """decode_depth on the hidden states of a real image = the model's own depth of that image."""
    dpt = models["dpt"]
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    pv = dpt.image_processor(list(img), return_tensors="pt").pixel_values
    with torch.no_grad():
        out = dpt.model(pv, output_hidden_states=True)
    hs = torch.stack([out.hidden_states[1:][i] for i in dpt.model.config.backbone_out_indices], 1)
    d = T.decode_depth(dpt.model, hs.reshape(2, -1, hs.shape[-1]).numpy(), 8)
    ref = torch.nn.functional.interpolate(out.predicted_depth[:, None], size=(8, 8), mode="bicubic",
                                          align_corners=False)
    lo, hi = ref.amin((1, 2, 3), keepdim=True), ref.amax((1, 2, 3), keepdim=True)
    np.testing.assert_allclose(d, (2 * (ref - lo) / (hi - lo) - 1).numpy(), atol=1e-5)
    assert d.shape == (2, 1, 8, 8) and d.min() == -1 and d.max() == 1
    assert T.dpt_hidden_layout(dpt.model) == (4, 17, 32)
    with pytest.raises(ValueError, match="DPT hidden states"):
        T.decode_depth(dpt.model, np.zeros((1, 60, 32), np.float32), 8)


def test_depth_variant_uses_the_depth_map(models, preds):
    depth = T.decode_depth(models["dpt"].model, preds["dpt"], 8)
    depth2 = T.decode_depth(models["dpt"].model, preds["dpt"][::-1].copy() * 3 + 1, 8)
    assert not np.allclose(depth, depth2)
    s = settings(n_samples=1)
    caps = ["dog on grass"] * 3
    unet = models["sd2_depth"].unet
    cnt = Counter(unet)
    try:
        a = run("td", models, preds, s, captions=caps, depth=depth)
    finally:
        cnt.remove()
    x = cnt.inputs[0]
    assert x.shape[1] == 5 and cnt.calls == 8
    # the 5th channel is the depth map, in the unconditional and the conditional half
    np.testing.assert_allclose(x[:3, 4:].numpy(), depth, atol=1e-6)
    np.testing.assert_allclose(x[3:, 4:].numpy(), depth, atol=1e-6)
    b = run("td", models, preds, s, captions=caps, depth=depth2)
    assert not np.array_equal(a.images, b.images)
    with pytest.raises(ValueError, match="depth maps must be"):
        run("td", models, preds, s, captions=caps, depth=depth[:, :, :4, :4])
    with pytest.raises(ValueError, match="5 input channels"):
        T.reconstruct("zc", IDS, "01", s, models={"sd": models["sd2_depth"]},
                      inputs={"sdz": preds["z"], "sdc": preds["c"]}, progress=False)


# ----------------------------------------------------------------------------- files
def _regression_file(path, pred, ids):
    with h5py.File(path, "w") as f:
        f["pred"] = pred
        f["nsd_ids"] = np.asarray(ids, np.int64)


def test_subject_files_every_variant_own_folder(tmp_path, folders, preds):
    reg = tmp_path / "regression"
    reg.mkdir()
    order = np.array([2, 0, 1])  # files list the images in another order than IDS: rows follow nsd_ids
    for space, arr in (("sdz", preds["z"]), ("sdc", preds["c"]), ("blip", preds["blip"]), ("dpt", preds["dpt"])):
        _regression_file(reg / f"{space}.h5", arr[order], IDS[order])
    dec = tmp_path / "decoded"
    T.captions_subject({"blip": reg / "blip.h5", "blip_model": folders["blip"]}, dec / "captions.csv",
                       settings=T.CaptionSettings.from_mapping({"max_length": 12, "min_length": 6}),
                       prediction_key="pred", device="cpu", dtype="float32", progress=False)
    table = pd.read_csv(dec / "captions.csv", keep_default_na=False)
    assert list(table["nsdId"]) == list(IDS[order]) and (table["caption"].str.len() > 0).all()
    T.depth_subject({"dpt": reg / "dpt.h5", "dpt_model": folders["dpt"], "sd2_model": folders["sd2_depth"]},
                    {"h5": dec / "depth.h5", "png": dec / "depth_png"}, image_size=SIZE, prediction_key="pred",
                    device="cpu", dtype="float32", progress=False)
    with h5py.File(dec / "depth.h5") as f:
        assert f["depth"].shape == (3, 1, 8, 8)
    assert len(list((dec / "depth_png").glob("*.png"))) == 3

    s = dict(steps=10, strength=0.8, guidance_scale=5.0, n_samples=2, image_size=SIZE, batch_size=3, seed=0)
    outs = {}
    for v in T.VARIANTS:
        out = tmp_path / "takagi" / v / "subj01"
        spec = T.variant_spec(v)
        inputs = {**{k: reg / f"{k}.h5" for k in spec.spaces}, "sd_model": folders["sd"],
                  "sd2_model": folders["sd2_depth"], "captions": dec / "captions.csv", "depth": dec / "depth.h5"}
        T.reconstruct_subject(
            v, "01", inputs, {"h5": out / "images.h5", "png": out / "png"}, settings=T.Settings.from_mapping(s),
            prediction_keys={k: "pred" for k in spec.spaces}, device="cpu", dtype="float32", progress=False)
        with h5py.File(out / "images.h5") as f:
            assert f["images"].shape == (3, 2, SIZE, SIZE, 3) and f["images"].dtype == np.uint8
            np.testing.assert_array_equal(f["nsd_ids"][()], np.sort(IDS))
            assert f["seeds"].shape == (3, 2)
            assert ("stage1" in f) == (v != "c")
            assert ("captions" in f) == (v in ("t", "td"))
            assert ("depth" in f) == (v == "td")
            if v in ("t", "td"):
                caps = [c.decode() if isinstance(c, bytes) else c for c in f["captions"][()]]
                assert caps == T.read_captions_csv(dec / "captions.csv", np.sort(IDS))
            assert f.attrs["variant"] == v and f.attrs["num_steps"] == (10 if v == "c" else 8)
            outs[v] = f["images"][()]
        assert sorted(p.name for p in (out / "png").iterdir()) == sorted(
            f"{k}_{j}.png" for k in IDS for j in range(2))
        assert not list(out.glob(".*tmp*"))  # nothing half-written left
    # rows follow nsd_ids, not file order: zc of image IDS[0] equals a run on that image alone
    alone = T.reconstruct("zc", IDS[:1], "01", T.Settings.from_mapping(s), models={"sd": load_model("sd", folders["sd"])},
                          inputs={"sdz": preds["z"][:1], "sdc": preds["c"][:1]}, progress=False)
    np.testing.assert_array_equal(outs["zc"][0], alone.images[0])
    assert len({outs[v].tobytes() for v in T.VARIANTS}) == len(T.VARIANTS)


def test_bad_inputs(tmp_path, models, preds):
    with pytest.raises(ValueError, match="unknown Takagi variant"):
        T.variant_spec("g")
    with pytest.raises(ValueError, match=r"unknown methods.takagi setting.*stength"):
        T.Settings.from_mapping({"stength": 0.8})
    with pytest.raises(ValueError, match="rows for"):
        run("zc", models, preds, settings(), z=preds["z"][:2])
    with pytest.raises(ValueError, match="NaN"):
        run("zc", models, preds, settings(n_samples=1), c=np.full_like(preds["c"], np.nan))
    p = tmp_path / "r.h5"
    with h5py.File(p, "w") as f:
        f["pred"] = preds["z"]
    with pytest.raises(KeyError, match="nsd_ids"):
        Predictions(p)


def test_variant_params_scope():
    cfg = dict(steps=50, strength=0.8, guidance_scale=5.0, eta=0.0, n_samples=5, image_size=512, batch_size=5, seed=0)
    assert "strength" not in T.variant_settings("c", cfg)
    assert "guidance_scale" not in T.variant_settings("z", cfg)
    assert T.variant_settings("zc", cfg) == {k: v for k, v in cfg.items() if k != "batch_size"}
