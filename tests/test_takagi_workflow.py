"""Takagi & Nishimoto in the workflow: blip/dpt features on a tiny synthetic NSD, a ridge on float16
dpt features, the config's regression settings, and the Snakemake DAG (dry-run, demo config)."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch
import yaml

from brainrecon.config import validate_config
from brainrecon.features import SPACES, default_options, space_role
from brainrecon.models import load_model, prepare_model
from brainrecon.nsd import layout
from conftest import REPO, extract, run_snakemake

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("tn_wf_models")
    return {r: prepare_model(r, d / r, "tiny", seed=0) for r in ("blip", "dpt")}


def inp(nsd, model):
    return {"stimuli": nsd["stimuli"], "brick": nsd["brick"], "model": model}


def test_spaces_registered():
    assert space_role("blip") == "blip" and space_role("dpt") == "dpt"
    assert SPACES["dpt"].config_keys == ("dpt_resize", "dpt_dtype")
    assert default_options("dpt")["dpt_dtype"] == "float16" and default_options("blip")["blip_size"] == 240


def test_blip_features_are_the_vit_tokens(tmp_path, nsd, folders):
    """By default the reference's input (img2feat_blip.py): PIL Lanczos to blip_size, then ToTensor only
    (no mean/std normalisation) -> BLIP's ViT, post-layernorm tokens; blip_normalize adds the CLIP
    normalisation the model was trained with."""
    from PIL import Image
    from torchvision import transforms

    assert default_options("blip")["blip_normalize"] is False
    out = extract("blip", tmp_path / "blip.h5", inp(nsd, folders["blip"]), batch_size=5, blip_size=24)
    parts = load_model("blip", folders["blip"])
    with h5py.File(out) as f:
        assert tuple(f.attrs["feature_shape"]) == (10, 32)  # (24 / 8)^2 patches + CLS at 24 px
        x, ids = f["test/features"][()], f["test/nsd_ids"][()]
        assert f["test/features"].dtype == np.float32
        assert not f.attrs["blip_normalize"]
    with h5py.File(nsd["brick"]) as f:
        imgs = np.stack([f["imgBrick"][int(i)] for i in ids])

    # the reference, independently: Image.resize(LANCZOS) -> transforms.ToTensor() -> visual encoder
    pv = torch.stack([transforms.ToTensor()(Image.fromarray(a).convert("RGB").resize((24, 24),
                                                                                     resample=Image.LANCZOS))
                      for a in imgs])
    with torch.no_grad():
        ref = parts.model.vision_model(pixel_values=pv, interpolate_pos_encoding=True).last_hidden_state
    np.testing.assert_allclose(x.reshape(len(ids), 10, 32), ref.numpy(), atol=1e-5)

    # normalisation on: the processor's CLIP mean/std, a different input
    out2 = extract("blip", tmp_path / "blip2.h5", inp(nsd, folders["blip"]), batch_size=5, blip_size=24,
                   blip_normalize=True)
    proc = parts.processor.image_processor
    mean, std = torch.tensor(proc.image_mean)[:, None, None], torch.tensor(proc.image_std)[:, None, None]
    with torch.no_grad():
        ref2 = parts.model.vision_model(pixel_values=(pv - mean) / std, interpolate_pos_encoding=True)
    with h5py.File(out2) as f:
        x2 = f["test/features"][()]
    np.testing.assert_allclose(x2.reshape(len(ids), 10, 32), ref2.last_hidden_state.numpy(), atol=1e-5)
    assert not np.allclose(x2, x)
    with pytest.raises(ValueError, match="multiple of the ViT patch size"):
        extract("blip", tmp_path / "bad.h5", inp(nsd, folders["blip"]), blip_size=20)
    assert not (tmp_path / "bad.h5").exists()


def test_dpt_features_float16_and_depth_round_trip(tmp_path, nsd, folders):
    from brainrecon.reconstruct.takagi import decode_depth

    out = extract("dpt", tmp_path / "dpt.h5", inp(nsd, folders["dpt"]), batch_size=5, dpt_resize=48)
    parts = load_model("dpt", folders["dpt"])
    with h5py.File(out) as f:
        assert tuple(f.attrs["feature_shape"]) == (4 * 17, 32)
        ds = f["train/features"]
        assert ds.dtype == np.float16 and f.attrs["storage_dtype"] == "float16"
        assert ds.chunks == (min(16, ds.shape[0]), min(4096, ds.shape[1]))
        x, ids = f["test/features"][()].astype(np.float32), f["test/nsd_ids"][()]
    with h5py.File(nsd["brick"]) as f:
        imgs = np.stack([f["imgBrick"][int(i)] for i in ids])
    from PIL import Image

    resized = [np.asarray(Image.fromarray(a).resize((48, 48), resample=Image.LANCZOS)) for a in imgs]
    pv = parts.image_processor(resized, return_tensors="pt").pixel_values
    with torch.no_grad():
        depth = parts.model(pv).predicted_depth
    # stored hidden states decode (neck + head) to the model's own depth of the image, up to float16
    d = decode_depth(parts.model, x, 16)
    ref = torch.nn.functional.interpolate(depth[:, None], size=(16, 16), mode="bicubic", align_corners=False)
    lo, hi = ref.amin((1, 2, 3), keepdim=True), ref.amax((1, 2, 3), keepdim=True)
    ref = (2 * (ref - lo) / (hi - lo) - 1).numpy()
    assert np.corrcoef(d.ravel(), ref.ravel())[0, 1] > 0.99
    out32 = extract("dpt", tmp_path / "dpt32.h5", inp(nsd, folders["dpt"]), batch_size=5, dpt_resize=48,
                    dpt_dtype="float32")
    with h5py.File(out32) as f:
        assert f["test/features"].dtype == np.float32
        np.testing.assert_allclose(f["test/features"][()], x, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="dpt_dtype"):
        extract("dpt", tmp_path / "bad.h5", inp(nsd, folders["dpt"]), dpt_dtype="int8")


def test_ridge_reads_float16_features(tmp_path):
    """The regression stage fits float16 (dpt) feature files like float32 ones."""
    from brainrecon.regression.plan import SpaceFit
    from brainrecon.regression.stage import fit_space

    rng = np.random.default_rng(0)
    n, nt, v = 30, 6, 20
    W = rng.standard_normal((v, 3 * 8))
    X, Xt = rng.standard_normal((n, v)).astype(np.float32), rng.standard_normal((nt, v)).astype(np.float32)
    prep = tmp_path / "prep.h5"
    with h5py.File(prep, "w") as f:
        f["train/betas"], f["train/nsd_ids"] = X, np.arange(n)
        f["test/betas"], f["test/nsd_ids"] = Xt, np.arange(100, 100 + nt)
        f["voxels/ijk"] = np.zeros((v, 3), int)
    out = {}
    for dt in (np.float16, np.float32):
        feat = tmp_path / f"feat_{np.dtype(dt).name}.h5"
        with h5py.File(feat, "w") as f:
            f["train/features"] = (X @ W).astype(dt)
            f["train/nsd_ids"] = np.arange(n)
            f.attrs["feature_shape"] = [3, 8]
        fit_space(prep, feat, tmp_path / f"out_{np.dtype(dt).name}.h5", SpaceFit.build(alphas=[1.0],
                  restandardise=False), progress=False)
        with h5py.File(tmp_path / f"out_{np.dtype(dt).name}.h5") as f:
            out[dt] = f["pred"][()]
            assert f["pred"].shape == (nt, 3, 8)
    np.testing.assert_allclose(out[np.float16], out[np.float32], rtol=1e-2, atol=1e-2)


def test_config_regression_settings_follow_the_papers():
    cfg = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), check_paths=False)
    sp = cfg["regression"]["spaces"]
    six = ["early", "ventral", "midventral", "midlateral", "lateral", "parietal"]
    assert sp["sdz"]["voxels"] == {"streams": ["early"]} and sp["sdc"]["voxels"] == {"streams": ["ventral"]}
    for s in ("blip", "dpt"):
        assert sp[s]["voxels"] == {"streams": six} and sp[s]["alphas"] == [1e4, 2e4, 4e4]
    for s in ("sdz", "sdc", "blip", "dpt"):
        assert sp[s]["train_on"] == "single_trial" and sp[s]["restandardise"] is False
        assert set(sp[s]["voxels"]["streams"]) <= set(layout.LABEL_TABLES["streams"].values())
        # himalaya RidgeCV's defaults (no intercept, -MSE fold score) and the whole-volume streams labels
        assert sp[s]["fit_intercept"] is False and sp[s]["prepared"] == "streams"
    assert cfg["regression"]["cv_score"] == "l2_neg_loss" and cfg["regression"]["cv"] == 5
    for s in ("vdvae", "clipvision", "cliptext"):  # Brain-Diffuser: sklearn Ridge with intercept, nsdgeneral
        assert sp[s]["fit_intercept"] is True and sp[s]["prepared"] == "nsdgeneral"
    from brainrecon.regression import plan as regression_plan

    assert regression_plan.inputs(cfg, "sdc", "01")["prepared"] == "results/prepared/streams/subj01.h5"
    assert regression_plan.inputs(cfg, "vdvae", "01")["prepared"] == "results/prepared/nsdgeneral/subj01.h5"
    tn = cfg["methods"]["takagi"]
    assert (tn["steps"], tn["strength"], tn["guidance_scale"], tn["eta"], tn["n_samples"], tn["image_size"]) == (
        50, 0.8, 5.0, 0.0, 5, 512)
    assert tn["caption"] == {"num_beams": 3, "max_length": 20, "min_length": 5, "repetition_penalty": 1.5,
                             "prompt": "a picture of ", "batch_size": 16}
    assert cfg["features"]["blip_size"] == 240 and cfg["features"]["dpt_dtype"] == "float16"


def _jobs(stdout: str) -> dict[str, int]:
    m = re.search(r"Job stats:\n(.*?)\n\n", stdout, re.S)
    assert m, stdout[-3000:]
    return {a: int(b) for a, b in re.findall(r"^(\S+)\s+(\d+)$", m.group(1), re.M)}


def test_dry_run_lists_takagi_jobs_for_four_subjects(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    assert cfg["nsd"]["subjects"] == [1, 2, 5, 7]
    targets = [f"results/reconstruct/takagi/{v}/subj{s:02d}/images.h5" for v in ("z", "c", "zc", "t", "td")
               for s in (1, 2, 5, 7)]
    from brainrecon.config import validate_config
    from brainrecon.reconstruct.takagi import plan as takagi_plan

    planned = [t for t in takagi_plan.targets(validate_config(cfg, check_paths=False)) if t.endswith(".h5")]
    assert sorted(planned) == sorted(targets)  # the plan names the same files
    common = ["--configfile", REPO / "config" / "demo.yaml", "--directory", tmp_path]
    proc = run_snakemake("-n", *common, *targets, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["reconstruct_takagi"] == 20
    assert jobs["takagi_captions"] == 4 and jobs["takagi_depth"] == 4
    assert jobs["regression_fit"] == 16 and jobs["features"] == 16  # sdz, sdc, blip, dpt x 4 subjects
    assert jobs["models_build_tiny"] == 4  # sd, sd2_depth, blip, dpt
    # each variant reads only what it uses
    blocks = proc.stdout.split("\n\n")
    for b in blocks:
        m = re.search(r"rule reconstruct_takagi:.*?wildcards: variant=(\w+), subject=(\d+)", b, re.S)
        if not m:
            continue
        v, inputs = m.group(1), re.search(r"input: (.*)", b).group(1)
        assert ("regression/sdz" in inputs) == (v != "c")
        assert ("regression/sdc" in inputs) == (v in ("c", "zc"))
        assert ("captions.csv" in inputs) == (v in ("t", "td"))
        assert ("depth.h5" in inputs) == (v == "td") == ("sd2_depth" in inputs)
        assert re.search(r"models_tiny/sd(,|$)", inputs)
        assert re.search(r"resources: .*gpu=0", b), b  # demo: models.device cpu holds no GPU


def test_takagi_targets_function():
    """The Takagi plan lists every configured variant x subject (the files rule all asks for), and nothing
    when the method is disabled."""
    from brainrecon.config import validate_config
    from brainrecon.reconstruct.takagi import plan as takagi_plan

    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    demo["methods"]["takagi"]["variants"] = ["zc", "td"]
    cfg = validate_config(demo, check_paths=False)
    got = [t for t in takagi_plan.targets(cfg) if t.endswith("images.h5")]
    assert sorted(got) == sorted(f"results/reconstruct/takagi/{v}/subj{s:02d}/images.h5" for v in ("zc", "td")
                                 for s in (1, 2, 5, 7))
    demo["methods"]["takagi"]["enabled"] = False
    assert takagi_plan.targets(validate_config(demo, check_paths=False)) == []
