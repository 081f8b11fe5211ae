"""Features stage: one HDF5 per subject and space, on a small synthetic NSD with tiny random-weight models.

Checks the file layout against docs/DATA_PRODUCTS.md, that each space computes what it says from exactly the
imgBrick rows / captions of the stimulus index (recomputed here with the model calls directly), determinism
and independence from the batch size, bad inputs, and the Snakemake rule.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainrecon.features import SPACES, extract_features, image_seed, space_role
from brainrecon.models import load_model, prepare_model
from brainrecon.models.vdvae import VDVAEConfig, flatten_latents, latent_dims, preprocess
from brainrecon.nsd.readers import NSDFileError
from conftest import REPO, extract, run_snakemake

torch.set_num_threads(1)

SUBJECT = 1
ALL = ("vdvae", "clipvision", "cliptext", "sdz", "sdc")
ROLE = {"vdvae": "vdvae", "clipvision": "vd", "cliptext": "vd", "sdz": "sd", "sdc": "sd"}
BASE_BATCH = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("feat_models")
    return {role: prepare_model(role, d / role, "tiny", seed=0) for role in ("vdvae", "vd", "sd")}


def run(space, out, nsd, models, batch_size=BASE_BATCH, model_source=None, stimuli_csv=None, captions_csv=None,
        brick_path=None, model_folder=None, **options):
    inputs = {"stimuli": stimuli_csv or nsd["stimuli"], "captions": captions_csv or nsd["captions"],
              "brick": brick_path or nsd["brick"], "model": model_folder or models[ROLE[space]]}
    return extract(space, out, inputs, batch_size=batch_size, model_source=model_source, **options)


@pytest.fixture(scope="module")
def base(nsd, models, tmp_path_factory):
    d = tmp_path_factory.mktemp("feat_base")
    return {s: run(s, d / f"{s}.h5", nsd, models, model_source="tiny") for s in ALL}


def read(path):
    out = {}
    with h5py.File(path, "r") as f:
        out["groups"] = {k: sorted(f[k].keys()) for k in f.keys()}
        for split in ("train", "test"):
            out[split] = f[f"{split}/features"][()]
            out[f"{split}_ids"] = f[f"{split}/nsd_ids"][()]
            out[f"{split}_chunks"] = f[f"{split}/features"].chunks
            out[f"{split}_dtypes"] = (f[f"{split}/features"].dtype, f[f"{split}/nsd_ids"].dtype)
        out["attrs"] = dict(f.attrs)
    return out


def split_ids(nsd, split):
    df = pd.read_csv(nsd["stimuli"])
    return np.sort(df.loc[df["split"] == split, "nsdId"].to_numpy())


def captions_of(nsd) -> dict[int, list[str]]:
    df = pd.read_csv(nsd["captions"], keep_default_na=False, dtype={"caption": str})
    return {int(k): list(g.sort_values("caption_idx")["caption"]) for k, g in df.groupby("nsdId")}


def brick_rows(nsd, ids) -> np.ndarray:
    with h5py.File(nsd["brick"], "r") as f:
        return np.stack([f["imgBrick"][int(i)] for i in ids])


def expected_shape(space, models):
    if space == "vdvae":
        return (latent_dims(VDVAEConfig.tiny(), 31),)
    if space == "clipvision":
        enc = load_model("vd", models["vd"], components=["image_encoder"]).image_encoder.config
        return ((enc.image_size // enc.patch_size) ** 2 + 1, enc.projection_dim)
    if space in ("cliptext", "sdc"):
        role = ROLE[space]
        te = load_model(role, models[role], components=["text_encoder"]).text_encoder.config
        return (te.max_position_embeddings, te.projection_dim if space == "cliptext" else te.hidden_size)
    vae = load_model("sd", models["sd"], components=["vae"]).vae.config
    factor = 2 ** (len(vae.block_out_channels) - 1)
    return (vae.latent_channels, 320 // factor, 320 // factor)


# --------------------------------------------------------------------------------------------- layout
def test_registry_roles():
    assert set(ALL) <= set(SPACES)
    assert {s: space_role(s) for s in ALL} == ROLE


@pytest.mark.parametrize("space", ALL)
def test_file_layout(space, base, nsd, models):
    r = read(base[space])
    assert r["groups"] == {"train": ["features", "nsd_ids"], "test": ["features", "nsd_ids"]}
    shape = expected_shape(space, models)
    a = r["attrs"]
    assert a["space"] == space and a["role"] == ROLE[space] and a["model_source"] == "tiny"
    assert tuple(int(x) for x in a["feature_shape"]) == shape
    for split in ("train", "test"):
        x, ids = r[split], r[f"{split}_ids"]
        assert r[f"{split}_dtypes"] == (np.float32, np.int64)
        np.testing.assert_array_equal(ids, split_ids(nsd, split))
        assert x.shape == (len(ids), int(np.prod(shape)))
        rows, cols = r[f"{split}_chunks"]  # bands of rows, about 1 MiB each
        assert rows == min(len(ids), 64) and cols == min(x.shape[1], 2**20 // (4 * rows))
        assert np.isfinite(x).all()
        # every image gets its own features
        assert len({row.tobytes() for row in x}) == len(ids)
    assert not set(r["train_ids"]) & set(r["test_ids"])


# --------------------------------------------------------------------------------------------- what is computed
def test_vdvae_rows_are_latents_of_the_brick_rows(base, nsd, models):
    r = read(base["vdvae"])
    parts = load_model("vdvae", models["vdvae"])
    ids = [r["train_ids"][2], r["test_ids"][1]]
    rows = [r["train"][2], r["test"][1]]
    images = brick_rows(nsd, ids)
    for nsd_id, img, row in zip(ids, images, rows):
        g = torch.Generator().manual_seed(image_seed(0, nsd_id))
        z = parts.model.encode_latents(preprocess(img[None]), num_layers=31, generator=g)
        np.testing.assert_allclose(row, flatten_latents(z)[0].numpy(), rtol=1e-5, atol=1e-5)
    # the check discriminates: another image (same seed) gives other latents
    g = torch.Generator().manual_seed(image_seed(0, ids[0]))
    other = flatten_latents(parts.model.encode_latents(preprocess(images[1:]), num_layers=31, generator=g))[0]
    assert not np.allclose(rows[0], other.numpy(), atol=1e-3)


def test_clipvision_rows_are_vd_image_context_of_the_brick_rows(base, nsd, models):
    from brainrecon.models.vd import encode_vd_image

    r = read(base["clipvision"])
    parts = load_model("vd", models["vd"], components=["image_encoder", "image_feature_extractor"])
    ids = r["test_ids"]
    ref = encode_vd_image(brick_rows(nsd, ids), parts.image_encoder, parts.image_feature_extractor)
    np.testing.assert_allclose(r["test"], ref.reshape(len(ids), -1).numpy(), rtol=1e-5, atol=1e-6)
    # tokens are normalised by the CLS token's norm
    cls = r["test"].reshape(len(ids), *ref.shape[1:])[:, 0]
    np.testing.assert_allclose(np.linalg.norm(cls, axis=-1), 1.0, rtol=1e-5)


def test_sdz_is_scaled_posterior_mean_at_320(base, nsd, models):
    from PIL import Image

    r = read(base["sdz"])
    vae = load_model("sd", models["sd"], components=["vae"]).vae
    ids = r["train_ids"][:3]
    imgs = [np.asarray(Image.fromarray(a).resize((320, 320), Image.LANCZOS)) for a in brick_rows(nsd, ids)]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
    ref = (mean * 0.18215).reshape(len(ids), -1).numpy()
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    np.testing.assert_allclose(r["train"][:3], ref, rtol=1e-4, atol=1e-5)
    assert r["attrs"]["latent"] == "posterior_mean" and int(r["attrs"]["sdz_size"]) == 320


@pytest.mark.parametrize("space", ["cliptext", "sdc"])
def test_caption_spaces_are_means_over_the_image_captions(space, base, nsd, models):
    from brainrecon.models.sd import encode_sd_text
    from brainrecon.models.vd import encode_vd_text

    encode = encode_vd_text if space == "cliptext" else encode_sd_text
    r = read(base[space])
    parts = load_model(ROLE[space], models[ROLE[space]], components=["text_encoder", "tokenizer"])
    caps = captions_of(nsd)
    for split in ("train", "test"):
        for i, nsd_id in enumerate(r[f"{split}_ids"][:3]):
            c = caps[int(nsd_id)]
            assert 2 <= len(c) <= 5
            per_caption = encode(c, parts.text_encoder, parts.tokenizer)  # (n_captions, 77, D)
            np.testing.assert_allclose(r[split][i], per_caption.mean(0).reshape(-1).numpy(), rtol=1e-5, atol=1e-6)
            # the mean is not just one caption's context
            assert not np.allclose(r[split][i], per_caption[0].reshape(-1).numpy(), atol=1e-4)


def test_max_captions_keeps_the_first_captions(nsd, models, tmp_path):
    from brainrecon.models.vd import encode_vd_text

    out = run("cliptext", tmp_path / "c.h5", nsd, models, max_captions=1)
    r = read(out)
    parts = load_model("vd", models["vd"], components=["text_encoder", "tokenizer"])
    caps = captions_of(nsd)
    first = encode_vd_text([caps[int(i)][0] for i in r["test_ids"]], parts.text_encoder, parts.tokenizer)
    np.testing.assert_allclose(r["test"], first.reshape(len(first), -1).numpy(), rtol=1e-5, atol=1e-6)
    assert int(r["attrs"]["max_captions"]) == 1


def test_vdvae_layers_option_gives_leading_columns(base, nsd, models, tmp_path):
    out = run("vdvae", tmp_path / "v3.h5", nsd, models, vdvae_layers=3)
    r3, r31 = read(out), read(base["vdvae"])
    d3 = latent_dims(VDVAEConfig.tiny(), 3)
    assert r3["train"].shape[1] == d3 and int(r3["attrs"]["vdvae_layers"]) == 3
    # the same per-image draws in block order: 3 layers = the first columns of 31 layers
    np.testing.assert_allclose(r3["train"], r31["train"][:, :d3], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("space", ALL)
def test_deterministic_and_independent_of_batch_size(space, base, nsd, models, tmp_path):
    ref = read(base[space])
    again = read(run(space, tmp_path / "again.h5", nsd, models))
    other = read(run(space, tmp_path / "b3.h5", nsd, models, batch_size=3))
    for split in ("train", "test"):
        np.testing.assert_array_equal(again[split], ref[split])  # same inputs -> same numbers
        np.testing.assert_array_equal(other[f"{split}_ids"], ref[f"{split}_ids"])
        np.testing.assert_allclose(other[split], ref[split], rtol=1e-5, atol=1e-6)


def test_row_bands_of_several_chunks(base, nsd, models, tmp_path, monkeypatch):
    """Chunks of 3 rows: batches of 5 rows straddle bands; every row lands where it belongs."""
    import brainrecon.features.extract as extract_mod

    monkeypatch.setattr(extract_mod, "CHUNK_ROWS", 3)
    r = read(run("vdvae", tmp_path / "bands.h5", nsd, models))
    ref = read(base["vdvae"])
    for split in ("train", "test"):
        assert r[f"{split}_chunks"][0] == 3
        np.testing.assert_allclose(r[split], ref[split], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- bad inputs
def _no_output(out):
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == []  # no temporary file either


def test_missing_captions_for_an_image(nsd, models, tmp_path):
    caps = pd.read_csv(nsd["captions"], keep_default_na=False)
    victim = int(caps["nsdId"].iloc[-1])
    bad = tmp_path / "in" / "caps.csv"
    bad.parent.mkdir()
    caps[caps["nsdId"] != victim].to_csv(bad, index=False)
    out = tmp_path / "out" / "f.h5"
    out.parent.mkdir()
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: no caption for 1 image.*{victim}"):
        run("cliptext", out, nsd, models, captions_csv=bad)
    _no_output(out)


def test_unknown_space_and_option(nsd, models, tmp_path):
    out = tmp_path / "out" / "f.h5"
    out.parent.mkdir()
    with pytest.raises(KeyError, match=r"unknown feature space 'clip'.*cliptext"):
        extract_features("clip", out, {"stimuli": nsd["stimuli"], "model": models["vd"]}, {}, None)
    with pytest.raises(TypeError, match=r"'clipvision' takes no option.*vdvae_layers"):
        run("clipvision", out, nsd, models, vdvae_layers=3)
    _no_output(out)


def test_missing_or_wrong_model_folder(nsd, models, tmp_path):
    out = tmp_path / "out" / "f.h5"
    out.parent.mkdir()
    missing = tmp_path / "models" / "vd"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        run("clipvision", out, nsd, models, model_folder=missing)
    with pytest.raises(FileNotFoundError, match="imagenet64-iter-1600000-model-ema.th"):
        run("vdvae", out, nsd, models, model_folder=models["vd"])
    _no_output(out)


def test_bad_stimulus_index_or_brick_keeps_existing_output(nsd, models, tmp_path):
    out = tmp_path / "out" / "f.h5"
    out.parent.mkdir()
    out.write_bytes(b"previous result")
    df = pd.read_csv(nsd["stimuli"])
    no_split = tmp_path / "no_split.csv"
    df.drop(columns="split").to_csv(no_split, index=False)
    with pytest.raises(ValueError, match=rf"{re.escape(str(no_split))}: .*no column\(s\) \['split'\]"):
        run("vdvae", out, nsd, models, stimuli_csv=no_split)
    far = tmp_path / "far.csv"
    df.assign(brick_row=df["brick_row"] + 10_000).to_csv(far, index=False)
    with pytest.raises(NSDFileError, match="out of range"):
        run("vdvae", out, nsd, models, stimuli_csv=far)
    with pytest.raises(FileNotFoundError, match="image brick"):
        run("sdz", out, nsd, models, brick_path=tmp_path / "nope.hdf5")
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.h5"]


# --------------------------------------------------------------------------------------------- Snakemake
def test_features_rule_through_snakemake(tmp_path):
    """Demo config for one subject, tiny synthetic NSD generated by the workflow itself."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg["nsd"]["subjects"] = [SUBJECT]
    cfg["synth"].update(n_images=12, n_shared=4, n_reps=3, image_size=64)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    target = "results/features/clipvision/subj01.h5"
    common = ["--configfile", cfg_file, "--directory", tmp_path, "--workflow-profile", "none"]
    proc = run_snakemake(*common, "--cores", "2", target, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    r = read(tmp_path / target)
    stim = pd.read_csv(tmp_path / "results" / "prepared" / "stimuli" / "subj01.csv")
    for split in ("train", "test"):
        np.testing.assert_array_equal(r[f"{split}_ids"], np.sort(stim.loc[stim["split"] == split, "nsdId"]))
    assert r["attrs"]["model_source"] == "tiny" and r["attrs"]["space"] == "clipvision"
    assert r["test"].shape == (4, int(np.prod(r["attrs"]["feature_shape"])))
    assert (tmp_path / "logs" / "features" / "clipvision" / "subj01.log").is_file()
    assert (tmp_path / "benchmarks" / "features" / "clipvision" / "subj01.tsv").is_file()
    assert (tmp_path / "resources" / "demo" / "models_tiny" / "vd" / "model_index.json").is_file()

    # another space's setting and the batch size do not make clipvision out of date ...
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**cfg, "features": {"batch_size": 3, "vdvae_layers": 7}}))
    proc = run_snakemake("-n", target, "--configfile", changed, *common[2:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    # ... while the space's own model settings do
    changed.write_text(yaml.safe_dump({**cfg, "models": {**cfg["models"], "device": "cuda", "dtype": "float16"}}))
    proc = run_snakemake("-n", target, "--configfile", changed, *common[2:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"features\s+1", proc.stdout) and "Params have changed" in proc.stdout, proc.stdout[-3000:]
