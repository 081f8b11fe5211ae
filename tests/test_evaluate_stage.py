"""The evaluation stage (brainrecon.evaluate.stage) on fabricated images.h5 / imgBrick / stimulus tables.

Expected values come from the definitions (identical reconstructions -> PixCorr 1, SSIM 1, 100 %
identification; a permutation -> chance), from numpy recomputations in the test, or from the
metric primitives run on the rows the test selects itself (tests/metric_reference.py).
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from brainrecon.evaluate import extract_features
from brainrecon.evaluate.plan import (
    BRAINDIFFUSER_COLUMNS,
    TAKAGI_COLUMNS,
    EvalSettings,
    exclusion_tag,
    nets_needed,
    required_nets,
    resolve_metrics,
)
from brainrecon.evaluate.stage import (
    eval_net_files,
    evaluate_reconstruction,
    fetch_eval_nets,
    load_eval_nets,
    read_exclusion_list,
    read_ground_truth,
    read_reconstructions,
    split_test_ids,
)
from brainrecon.evaluate.suite import compute_scores
from brainrecon.models.plan import Runtime
from metric_reference import reference_metrics

torch.set_num_threads(1)

FAST = ["PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "CLIP"]


@pytest.fixture(scope="module")
def nets():
    return load_eval_nets(["alexnet", "clip", "efficientnet_b1"], "tiny", seed=0)


def smooth_images(rng, n, size, grid=6):
    """n distinct smooth random RGB images (bilinear upsampling of a random grid), uint8."""
    base = torch.from_numpy(rng.random((n, 3, grid, grid)))
    up = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (up.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def write_brick(path, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["imgBrick"] = images
    return path


def write_recon(path, images, nsd_ids, seeds=True, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if images is not None:
            f["images"] = images
        if nsd_ids is not None:
            f["nsd_ids"] = np.asarray(nsd_ids)
        if seeds:
            f["seeds"] = np.arange(len(nsd_ids))
        for k, v in extra.items():
            f[k] = v
    return path


def write_stimuli(path, test_ids, train_ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(set(test_ids) | set(train_ids))
    pd.DataFrame({"nsdId": ids, "split": ["test" if i in set(test_ids) else "train" for i in ids]}).to_csv(
        path, index=False
    )
    return path


@pytest.fixture()
def world(tmp_path):
    """A 30-image brick; test ids 2..28 step 2 except a few; stimulus table of one subject."""
    rng = np.random.default_rng(0)
    brick_imgs = smooth_images(rng, 30, 48)
    test_ids = [1, 4, 6, 9, 12, 15, 17, 20, 23, 26, 28, 29]
    train_ids = [i for i in range(30) if i not in test_ids]
    return {
        "imgs": brick_imgs,
        "brick": write_brick(tmp_path / "brick.hdf5", brick_imgs),
        "stimuli": write_stimuli(tmp_path / "stim" / "subj01.csv", test_ids, train_ids),
        "test_ids": test_ids,
        "rng": rng,
        "tmp": tmp_path,
    }


IDS = {"method": "braindiffuser", "variant": "full", "subject": "01", "weights": "tiny"}


def settings(metrics=None, **nway):
    """EvalSettings of ``metrics`` (convention braindiffuser); nway: ``n``, ``trials``, ``net``, ``seed``."""
    return EvalSettings(convention="braindiffuser", takagi_convention="braindiffuser", metrics=tuple(metrics or ()),
                        takagi_for_samples=True,
                        nway_n=tuple(nway.get("n", ())), nway_trials=nway.get("trials", 100),
                        nway_net=nway.get("net", "inception_v3"), seed=nway.get("seed", 0))


def scores(gt, recon, nets, metrics, batch_size=32, **nway):
    return compute_scores(gt, recon, nets, settings(metrics, **nway), metrics=metrics,
                          runtime=Runtime("cpu", "float32", batch_size))


def run_stage(world, recon_path, out, metrics, nets, exclude=None, excluded_csv=None, per_image_csv=None,
              stimuli="default"):
    stimuli = [world["stimuli"]] if stimuli == "default" else stimuli
    return evaluate_reconstruction(
        {"images": recon_path, "brick": world["brick"], "stimuli": stimuli, "exclude": exclude},
        {"csv": out, "excluded": excluded_csv, "per_image": per_image_csv},
        settings(metrics), ids=IDS, nets=nets, runtime=Runtime("cpu", "float32", 5))


# --------------------------------------------------------------------------- definitions
def test_identical_reconstructions_score_perfectly(world, nets):
    ids = np.array(world["test_ids"])[::-1].copy()  # not sorted: the GT must follow nsd_ids
    recon = world["imgs"][ids]
    rp = write_recon(world["tmp"] / "rec" / "images.h5", recon, ids)
    out = world["tmp"] / "out" / "subj01.csv"
    per = world["tmp"] / "out" / "subj01_images.csv"
    run_stage(world, rp, out, FAST + ["EffNet-B"], nets, per_image_csv=per)
    row = pd.read_csv(out, dtype={"subject": str}).iloc[0]
    assert row["PixCorr"] == pytest.approx(1.0, abs=1e-9)
    assert row["SSIM"] == pytest.approx(1.0, abs=1e-9)
    for m in ("AlexNet(2)", "AlexNet(5)", "CLIP"):
        assert row[m] == 1.0
    assert row["EffNet-B"] == pytest.approx(0.0, abs=1e-6)
    assert row["n_images"] == len(ids) and row["n_samples"] == 1
    assert (row["method"], row["variant"], row["subject"], row["convention"]) == ("braindiffuser", "full", "01",
                                                                                   "braindiffuser")
    pi = pd.read_csv(per)
    assert pi["nsd_id"].tolist() == ids.tolist()
    assert np.allclose(pi["PixCorr"], 1.0) and np.allclose(pi["AlexNet(2)"], 1.0)


def test_multi_sample_file_gets_takagi_columns(world, nets):
    """(n, samples, S, S, 3) images.h5: TN- columns added; nets requested through a loader callable."""
    ids = np.array(world["test_ids"][:6])
    recon = np.stack([world["imgs"][ids], world["imgs"][ids]], axis=1)  # 2 samples, both the GT
    rp = write_recon(world["tmp"] / "tn" / "images.h5", recon, ids)
    asked = []

    def loader(names):
        asked.append(list(names))
        missing = [n for n in names if n not in nets]
        return {**{n: nets[n] for n in names if n in nets}, **load_eval_nets(missing, "tiny")}

    out = world["tmp"] / "out" / "tn.csv"
    run_stage(world, rp, out, ["PixCorr", "CLIP"], loader)
    row = pd.read_csv(out).iloc[0]
    assert asked == [["alexnet", "inception_v3", "clip"]]
    assert row["n_samples"] == 2 and row["n_images"] == 6
    assert [c for c in row.index if c.startswith("TN-")] == list(TAKAGI_COLUMNS)
    for c in TAKAGI_COLUMNS:
        assert row[c] == 1.0, c
    assert row["PixCorr"] == pytest.approx(1.0, abs=1e-9)


def test_permuted_reconstructions_are_at_chance(tmp_path, nets):
    rng = np.random.default_rng(1)
    n = 30
    gt = smooth_images(rng, n, 32)
    perm = np.roll(np.arange(n), 7)  # every reconstruction shows another image
    bank = scores(gt, gt[perm], nets, ["PixCorr", "AlexNet(2)", "CLIP"], batch_size=20)
    s = bank.summary()
    # recon j = GT_perm[j]: one GT (i = perm[j]) always beats it, the other n-2 are random: (n-2)/2/(n-1)
    for m in ("AlexNet(2)", "CLIP"):
        assert abs(s[m] - 0.5) < 0.12, (m, s[m])
    assert abs(s["PixCorr"]) < 0.1


def test_scores_match_the_primitives_on_every_subset(nets):
    """compute_scores + ScoreBank.summary == the metric primitives for all metric kinds, with samples, on subsets."""
    rng = np.random.default_rng(2)
    gt = smooth_images(rng, 5, 40)
    noise = rng.integers(-70, 70, (5, 2, 40, 40, 3))
    recon = np.clip(gt[:, None].astype(int) + noise, 0, 255).astype(np.uint8)
    recon[:, 1] = smooth_images(rng, 5, 40)  # second sample unrelated
    metrics = ["PixCorr", "SSIM", "AlexNet(2)", "EffNet-B", "CLIP", "TN-CLIP-late", "TN-AlexNet-early",
               "TN-AlexNet-late", "8-way-top1"]
    kw = dict(nway_net="alexnet", nway_trials=30, seed=3)  # 8-way: alexnet logits (1000 classes)
    bank = scores(gt, recon, nets, metrics, batch_size=4, net="alexnet", trials=30, seed=3)
    for idx in (None, [0, 2, 4]):
        sel = slice(None) if idx is None else idx
        ref = reference_metrics(gt[sel], recon[sel], nets, metrics=metrics, batch_size=4, **kw)
        got = bank.summary(idx)
        assert got["n_images"] == ref["n_images"] and got["n_samples"] == 2
        for m in metrics:
            assert got[m] == pytest.approx(ref[m], abs=1e-9), m


def test_per_image_values_by_hand(nets):
    rng = np.random.default_rng(3)
    n = 6
    gt = smooth_images(rng, n, 32)
    recon = np.clip(gt.astype(int) + rng.integers(-90, 90, gt.shape), 0, 255).astype(np.uint8)
    bank = scores(gt, recon, nets, ["PixCorr", "AlexNet(2)", "EffNet-B"], batch_size=3)
    per = bank.per_image()
    # PixCorr of image i: Pearson r of the flattened RGB values (same size: no resize)
    want = [np.corrcoef(gt[i].ravel() / 255.0, recon[i].ravel() / 255.0)[0, 1] for i in range(n)]
    assert np.allclose(per["PixCorr"], want, atol=1e-10)
    # two-way of reconstruction j: fraction of GT i != j with corr(GT_i, R_j) < corr(GT_j, R_j)
    g = extract_features("alexnet", nets["alexnet"], gt, ["features.4"])["features.4"].astype(np.float64)
    r = extract_features("alexnet", nets["alexnet"], recon, ["features.4"])["features.4"].astype(np.float64)
    c = np.corrcoef(g, r)[:n, n:]
    want = [np.mean([c[i, j] < c[j, j] for i in range(n) if i != j]) for j in range(n)]
    assert np.allclose(per["AlexNet(2)"], want)
    s = bank.summary()
    for m in per:
        assert per[m].mean() == pytest.approx(s[m], abs=1e-12)


# --------------------------------------------------------------------------- exclusion lists
def test_exclusion_list_removes_exactly_those_images(world, nets):
    ids = np.array(world["test_ids"])
    rng = world["rng"]
    recon = np.clip(world["imgs"][ids].astype(int) + rng.integers(-100, 100, (len(ids), 48, 48, 3)), 0, 255)
    recon = recon.astype(np.uint8)
    rp = write_recon(world["tmp"] / "rec" / "images.h5", recon, ids)
    excl_ids = [ids[2], ids[5], ids[9], 0]  # 0 is not a test image: it changes nothing
    excl = world["tmp"] / "laion-overlap.txt"
    excl.write_text(f"# LAION overlap\n{excl_ids[0]}, {excl_ids[1]}\n{excl_ids[2]} {excl_ids[3]}\n")
    out = world["tmp"] / "out" / "subj01.csv"
    out_ex = world["tmp"] / "out" / f"subj01_{exclusion_tag(excl)}.csv"
    per = world["tmp"] / "out" / "subj01_images.csv"
    metrics = ["PixCorr", "SSIM", "AlexNet(2)", "CLIP"]
    run_stage(world, rp, out, metrics, nets, exclude=excl, excluded_csv=out_ex, per_image_csv=per)
    assert out_ex.name == "subj01_excl-laion_overlap.csv"

    full = pd.read_csv(out).iloc[0]
    ex = pd.read_csv(out_ex).iloc[0]
    assert full["n_images"] == len(ids)
    assert ex["n_images"] == len(ids) - 3 and ex["n_excluded"] == 3
    assert ex["subset"] == "excl-laion_overlap" and ex["exclusion"] == str(excl)

    # recomputed here on the remaining rows, with the GT read from the brick by the test itself
    keep = ~np.isin(ids, excl_ids)
    with h5py.File(world["brick"], "r") as f:
        gt_all = f["imgBrick"][()]
    gt = gt_all[ids]
    pix = np.mean([np.corrcoef(gt[i].ravel(), recon[i].ravel())[0, 1] for i in np.flatnonzero(keep)])
    assert ex["PixCorr"] == pytest.approx(pix, abs=1e-9)
    ref = reference_metrics(gt[keep], recon[keep], nets, metrics=metrics)
    ref_all = reference_metrics(gt, recon, nets, metrics=metrics)
    for m in metrics:
        assert ex[m] == pytest.approx(ref[m], abs=1e-9), m
        assert full[m] == pytest.approx(ref_all[m], abs=1e-9), m
    assert ex["PixCorr"] != pytest.approx(full["PixCorr"], abs=1e-6)  # the exclusion changed the number

    pi = pd.read_csv(per)
    assert pi.loc[pi["excluded"], "nsd_id"].tolist() == sorted(excl_ids[:3], key=lambda v: list(ids).index(v))


def test_exclusion_list_formats(tmp_path):
    (tmp_path / "a.csv").write_text("cocoId,nsdId\n1,7\n2,3\n3,7\n")
    (tmp_path / "b.csv").write_text("12\n4\n")
    (tmp_path / "c.txt").write_text("# comment\n5 6,7  # trailing\n\n")
    assert read_exclusion_list(tmp_path / "a.csv").tolist() == [3, 7]
    assert read_exclusion_list(tmp_path / "b.csv").tolist() == [4, 12]
    assert read_exclusion_list(tmp_path / "c.txt").tolist() == [5, 6, 7]
    (tmp_path / "bad.txt").write_text("5\nabc\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: 'abc'"):
        read_exclusion_list(tmp_path / "bad.txt")
    (tmp_path / "neg.txt").write_text("-1\n")
    with pytest.raises(ValueError, match="negative"):
        read_exclusion_list(tmp_path / "neg.txt")
    with pytest.raises(FileNotFoundError):
        read_exclusion_list(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- inputs and errors
def test_ground_truth_and_subset_reads_follow_nsd_ids(world):
    ids = [20, 4, 29, 4]
    gt = read_ground_truth(world["brick"], ids)
    assert np.array_equal(gt, world["imgs"][ids])
    rec_ids = np.array([9, 1, 23])
    imgs = world["imgs"][rec_ids]
    rp = write_recon(world["tmp"] / "r.h5", imgs, rec_ids)
    sub = read_reconstructions(rp, [23, 9])
    assert sub.nsd_ids.tolist() == [23, 9] and np.array_equal(sub.images, world["imgs"][[23, 9]])
    assert sub.seeds.tolist() == [2, 0]


def test_split_of_the_subject_average_is_the_common_test_set(tmp_path):
    a = write_stimuli(tmp_path / "a.csv", [1, 2, 3, 5], [0, 4])
    b = write_stimuli(tmp_path / "b.csv", [2, 3, 5, 8], [1, 0])
    assert split_test_ids([a, b]).tolist() == [2, 3, 5]
    assert split_test_ids(a).tolist() == [1, 2, 3, 5]


def _outputs_left(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("no_nsd_ids", KeyError, "no dataset 'nsd_ids'"),
        ("no_images", KeyError, "no dataset 'images'"),
        ("sizes", ValueError, "'images' has 5 rows but 'nsd_ids' has 4"),
        ("not_in_brick", ValueError, r"nsd_ids \[31\] are not in the stimulus brick"),
        ("train_image", ValueError, r"nsd_ids \[2\] are not test images"),
        ("float", ValueError, "'images' must be uint8"),
        ("duplicates", ValueError, r"duplicate nsd_ids \[4\]"),
        ("exclude_all", ValueError, "leaves 1 of 3 images"),
    ],
)
def test_bad_inputs_fail_clearly_and_write_nothing(world, nets, case, error, match):
    imgs = world["imgs"]
    rp = world["tmp"] / "rec" / "images.h5"
    kw = {}
    stimuli = [world["stimuli"]]
    if case == "no_nsd_ids":
        write_recon(rp, imgs[[1, 4]], None, seeds=False)
    elif case == "no_images":
        write_recon(rp, None, [1, 4])
    elif case == "sizes":
        write_recon(rp, imgs[[1, 4, 6, 9, 12]], [1, 4, 6, 9])
    elif case == "not_in_brick":
        write_recon(rp, imgs[[1, 4, 6]], [1, 4, 31])
        stimuli = None
    elif case == "train_image":
        write_recon(rp, imgs[[1, 2, 4]], [1, 2, 4])
    elif case == "float":
        write_recon(rp, imgs[[1, 4]].astype(np.float32) / 255, [1, 4])
    elif case == "duplicates":
        write_recon(rp, imgs[[1, 4, 4]], [1, 4, 4])
    elif case == "exclude_all":
        write_recon(rp, imgs[[1, 4, 6]], [1, 4, 6])
        (world["tmp"] / "ex.txt").write_text("1 4\n")
        kw = dict(exclude=world["tmp"] / "ex.txt", excluded_csv=world["tmp"] / "out" / "x_excl.csv")
    outdir = world["tmp"] / "out"
    with pytest.raises(error, match=match):
        run_stage(world, rp, outdir / "subj01.csv", ["PixCorr", "AlexNet(2)"], nets, stimuli=stimuli,
                  per_image_csv=outdir / "subj01_images.csv", **kw)
    assert _outputs_left(outdir) == []


def test_mismatched_gt_and_recon_counts_and_metric_names(nets):
    rng = np.random.default_rng(5)
    gt = smooth_images(rng, 4, 24)
    with pytest.raises(ValueError, match="gt has N = 4 images but recon has N = 3"):
        scores(gt, gt[:3], nets, ["PixCorr"])
    with pytest.raises(ValueError, match="unknown metric"):
        resolve_metrics(["PixCorr", "AlexNet(7)"])
    with pytest.raises(ValueError, match=r"need nets that were not given: \['swav'\]"):
        scores(gt, gt, nets, ["SwAV"])


# --------------------------------------------------------------------------- metric / net plumbing
def test_metric_resolution_and_net_lists():
    assert resolve_metrics(None, with_samples=False) == list(BRAINDIFFUSER_COLUMNS)
    assert resolve_metrics(None, with_samples=True) == list(BRAINDIFFUSER_COLUMNS) + list(TAKAGI_COLUMNS)
    assert resolve_metrics(["CLIP"], True, add_takagi=False, nway_n=[50]) == ["CLIP", "50-way-top1"]
    # the nets a config needs: its metrics' nets, the TN- columns' when a method has samples, the n-way net
    from brainrecon.schema import defaults

    cfg = {"nsd": {"subjects": [1]}, "methods": defaults("methods"), "evaluate": defaults("evaluate")}
    cfg["evaluate"].update(metrics=["PixCorr"], takagi_for_samples=False)
    assert nets_needed(cfg) == [] and required_nets(["SSIM", "TN-CLIP-mid"]) == ["clip"]
    cfg["evaluate"]["nway"] = {"n": [50], "net": "alexnet"}
    assert nets_needed(cfg) == ["alexnet"]
    cfg["evaluate"].update(takagi_for_samples=True, nway=None)  # takagi (default: enabled) has samples
    assert nets_needed(cfg) == ["alexnet", "inception_v3", "clip"]
    cfg["methods"]["takagi"]["enabled"] = False
    assert nets_needed(cfg) == []


def test_eval_net_files_follow_torchvision_and_swav():
    import torchvision.models as tvm

    files = eval_net_files(["alexnet", "inception_v3", "efficientnet_b1", "swav", "clip"])
    assert "clip" not in files
    assert files["alexnet"] == (tvm.AlexNet_Weights.IMAGENET1K_V1.url, "alexnet-owt-7be5be79.pth")
    assert files["efficientnet_b1"][0] == tvm.EfficientNet_B1_Weights.IMAGENET1K_V1.url
    assert files["swav"] == ("https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
                             "swav_800ep_pretrain.pth.tar")


def test_fetch_eval_nets_from_a_mirror(tmp_path):
    """SwAV file (DDP 'module.' prefix + SwAV head keys) served from a file:// mirror -> loadable folder."""
    import torchvision

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None)
    sd = {f"module.{k}": v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    sd["module.prototypes.weight"] = torch.zeros(3, 4)
    torch.save({"state_dict": sd}, mirror / "swav_800ep_pretrain.pth.tar")
    folder = tmp_path / "models" / "evalnets"
    fetch_eval_nets(folder, ["swav"], mirror=mirror.as_uri(), retries=0, progress=False)
    manifest = (folder / "evalnets.json").read_text()
    assert "swav_800ep_pretrain.pth.tar" in manifest
    net = load_eval_nets(["swav"], "pretrained", folder=folder)["swav"]
    assert torch.equal(net.state_dict()["layer4.2.conv3.weight"], trunk.state_dict()["layer4.2.conv3.weight"])

    # a torchvision file whose sha256 does not start with the digits in its name is refused; nothing is left
    (mirror / "alexnet-owt-7be5be79.pth").write_bytes(b"not the alexnet weights")
    bad = tmp_path / "models" / "evalnets2"
    with pytest.raises(ValueError, match="corrupt or changed file"):
        fetch_eval_nets(bad, ["alexnet"], mirror=mirror.as_uri(), retries=0, progress=False)
    assert not bad.exists() and sorted(p.name for p in bad.parent.iterdir()) == ["evalnets"]
