"""Tests of brainrecon.evaluate: metric definitions, nets/layers, preprocessing, the suite.

Expected values are derived by hand in the comments (identification) or computed the
reference way with numpy / scikit-image / scipy / torchvision (pixel metrics, distances,
preprocessing), never copied from the implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainrecon.evaluate import (
    BRAINDIFFUSER_COLUMNS,
    TAKAGI_COLUMNS,
    EvalSettings,
    build_eval_net,
    compute_scores,
    corr_matrix,
    correlation_distance,
    extract_features,
    identification_over_samples,
    load_swav_state_dict,
    nway_top1,
    pixcorr,
    preprocess,
    ssim_score,
    two_way_identification,
    write_metrics_csv,
)

from brainrecon.evaluate.plan import metric_spec

torch.set_num_threads(1)


def evaluate(gt, recon, nets, convention="braindiffuser", metrics=None, nway_trials=100, takagi_convention=None):
    """The engine's summary of one evaluation (compute_scores -> ScoreBank.summary); the TN- columns take
    ``convention`` too unless ``takagi_convention`` is given."""
    from brainrecon.models.plan import Runtime

    settings = EvalSettings(convention=convention, takagi_convention=takagi_convention or convention, metrics=(),
                            takagi_for_samples=True, nway_n=(), nway_trials=nway_trials, nway_net="inception_v3",
                            seed=0)
    return compute_scores(gt, recon, nets, settings, metrics=metrics, runtime=Runtime("cpu", "float32", 32)).summary()


@pytest.fixture(scope="module")
def nets():
    return {
        name: build_eval_net(name, "tiny", seed=0)
        for name in ("alexnet", "inception_v3", "efficientnet_b1", "swav", "clip")
    }


def _imgs(rng, n, h, w=None):
    return rng.integers(0, 256, (n, h, w or h, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- pixel metrics
def test_identical_images_give_pixcorr_and_ssim_one():
    gt = _imgs(np.random.default_rng(0), 4, 40)
    assert pixcorr(gt, gt.copy()) == pytest.approx(1.0, abs=1e-12)
    assert ssim_score(gt, gt.copy()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("rec_size", [40, 57, 23])  # same size, downsample, upsample
def test_pixcorr_and_ssim_match_reference(rec_size):
    import torchvision.transforms.functional as TF
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    # smooth GT (low-frequency noise + a little pixel noise) so that resized copies stay correlated
    low = torch.from_numpy(rng.uniform(0, 255, (3, 3, 6, 6)))
    gt = torch.nn.functional.interpolate(low, size=(40, 40), mode="bicubic", align_corners=False)
    gt = (gt + torch.from_numpy(rng.normal(0, 20, gt.shape))).round().clamp(0, 255)
    gt = gt.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    # correlated recon so r is far from 0: smooth noise + a blurred copy of gt, at rec_size
    base = torch.from_numpy(gt).permute(0, 3, 1, 2).float()
    rec = torch.nn.functional.interpolate(base, size=(rec_size, rec_size), mode="nearest")
    rec = (0.6 * rec + 0.4 * torch.from_numpy(rng.uniform(0, 255, rec.shape)).float()).round().clamp(0, 255)
    rec = rec.to(torch.uint8).permute(0, 2, 3, 1).numpy()

    ref_pix, ref_ssim = [], []
    for g, r in zip(gt, rec):
        g = g.astype(np.float64) / 255.0
        rt = torch.from_numpy(r).permute(2, 0, 1).to(torch.float64) / 255.0
        if rec_size != 40:  # MindEye: transforms.Resize(425, BILINEAR) on tensors (antialiased)
            rt = TF.resize(rt, [40, 40], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        r = rt.permute(1, 2, 0).numpy()
        ref_pix.append(np.corrcoef(g.reshape(1, -1), r.reshape(1, -1))[0, 1])
        ref_ssim.append(
            structural_similarity(
                rgb2gray(r), rgb2gray(g), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
            )
        )
    assert 0.2 < np.mean(ref_pix) < 0.99  # non-trivial case
    assert pixcorr(gt, rec) == pytest.approx(np.mean(ref_pix), abs=1e-6)
    assert ssim_score(gt, rec) == pytest.approx(np.mean(ref_ssim), abs=1e-6)


# --------------------------------------------------------------------------- identification
def test_identical_features_identify_perfectly():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(20, 30))
    assert two_way_identification(g, g.copy()) == 1.0
    rec = np.stack([g, 2.0 * g + 1.0, g], axis=1)  # (N, 3, D): positive affine copies, r = 1
    assert identification_over_samples(g, rec) == 1.0
    assert correlation_distance(g, g.copy()) == pytest.approx(0.0, abs=1e-12)


def test_reversed_pairing_gives_zero():
    # GT features come in antipodal pairs: gt[N-1-i] = -gt[i] (N even, vectors distinct).
    # Pairing recon j with gt[N-1-j] (reverse order) makes rec_j = -gt_j, so
    # r[j, j] = corr(gt_j, -gt_j) = -1 while every other r[i, j] = corr(gt_i, -gt_j) > -1:
    # no GT i != j has r[i, j] < r[j, j]  ->  two-way = 0 exactly.
    # Takagi: m[i, i] = mean_s corr(gt_i, a_s * -gt_i + b_s) = -1 < m[i, j], none is ">"  ->  0.
    rng = np.random.default_rng(3)
    half = rng.normal(size=(6, 16))
    gt = np.concatenate([half, -half[::-1]])  # gt[11 - i] = -gt[i]
    rec = gt[::-1].copy()
    np.testing.assert_allclose(rec, -gt)
    assert two_way_identification(gt, rec) == 0.0
    rec_s = np.stack([rec, 3.0 * rec - 2.0], axis=1)
    assert identification_over_samples(gt, rec_s) == 0.0


def test_reversed_images_n2_give_zero(nets):
    # With N = 2 and recon = gt reversed: r[0, 1] = corr(gt_0, gt_0) = 1 > r[1, 1] = corr(gt_1, gt_0)
    # (distinct images), likewise for column 0, so every identification is 0 by definition.
    gt = _imgs(np.random.default_rng(4), 2, 32)
    rec = gt[::-1].copy()
    res = evaluate(
        gt,
        np.stack([rec, rec], axis=1),
        {"alexnet": nets["alexnet"], "clip": nets["clip"]},
        metrics=["AlexNet(2)", "CLIP", "TN-AlexNet-late", "TN-CLIP-early"],
    )
    assert res["AlexNet(2)"] == 0.0 and res["CLIP"] == 0.0
    assert res["TN-AlexNet-late"] == 0.0 and res["TN-CLIP-early"] == 0.0


def test_random_pairing_is_near_chance():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(300, 40))
    assert two_way_identification(g, rng.normal(size=(300, 40))) == pytest.approx(0.5, abs=0.04)
    assert identification_over_samples(g, rng.normal(size=(300, 3, 40))) == pytest.approx(0.5, abs=0.04)


def _basis():
    # orthonormal, zero-mean vectors of length 4: Pearson r between combinations of them
    # equals the cosine of their coefficient vectors.
    e1 = np.array([1, -1, 0, 0]) / np.sqrt(2)
    e2 = np.array([0, 0, 1, -1]) / np.sqrt(2)
    e3 = np.array([1, 1, -1, -1]) / 2
    return np.stack([e1, e2, e3])


def test_two_way_hand_case_3x3():
    E = _basis()
    gt = E + 5.0  # an offset does not change Pearson r
    coef = np.array([[2, 1, -2], [2, 1, 2], [4, 0, 3]], dtype=float)  # |rows| = 3, 3, 5
    rec = coef @ E
    # r[i, j] = corr(GT_i, rec_j) = coef[j, i] / |coef[j]|:
    #            rec0    rec1    rec2
    #   GT0  [  2/3,    2/3,    4/5 ]
    #   GT1  [  1/3,    1/3,    0   ]
    #   GT2  [ -2/3,    2/3,    3/5 ]
    r_expected = np.array([[2 / 3, 2 / 3, 0.8], [1 / 3, 1 / 3, 0.0], [-2 / 3, 2 / 3, 0.6]])
    np.testing.assert_allclose(np.corrcoef(gt, rec)[:3, 3:], r_expected, atol=1e-12)
    np.testing.assert_allclose(corr_matrix(gt, rec).numpy(), r_expected, atol=1e-12)
    # column j: count GT i != j with r[i, j] < r[j, j] (strict), / 2
    #   j=0: r00 = 2/3; 1/3 < 2/3 yes, -2/3 < 2/3 yes      -> 2/2 = 1
    #   j=1: r11 = 1/3; 2/3 < 1/3 no,  2/3 < 1/3 no        -> 0/2 = 0
    #   j=2: r22 = 3/5; 4/5 < 3/5 no,  0 < 3/5 yes         -> 1/2
    # mean = (1 + 0 + 0.5) / 3 = 0.5
    assert two_way_identification(gt, rec) == pytest.approx(0.5, abs=1e-12)
    # a tie counts as a failure: rec1 -> (2, 2, 1) gives r01 = r11 = 2/3
    #   j=1: 2/3 < 2/3 no, r21 = 1/3 < 2/3 yes -> 1/2; mean = (1 + 0.5 + 0.5) / 3 = 2/3
    rec_tie = np.array([[2, 1, -2], [2, 2, 1], [4, 0, 3]], dtype=float) @ E
    assert two_way_identification(gt, rec_tie) == pytest.approx(2 / 3, abs=1e-12)


def test_takagi_hand_case_3x2():
    E = _basis()
    gt = E
    coef = np.array(
        [
            [[1, 0, 0], [0, 0, 1]],  # gen_{0,0}, gen_{0,1}
            [[2, 1, 2], [2, 2, 1]],  # gen_{1,s}, |.| = 3
            [[3, 0, 4], [0, 0, 1]],  # gen_{2,0} |.| = 5
        ],
        dtype=float,
    )
    rec = np.einsum("jsk,kd->jsd", coef, E) + 1.0  # (3, 2, 4); offset irrelevant
    # corr(GT_i, gen_{j,s}) = coef[j, s, i] / |coef[j, s]|:
    #   s=0:      gen0   gen1   gen2          s=1:      gen0   gen1   gen2
    #   GT0   [   1,     2/3,   3/5 ]         GT0   [   0,     2/3,   0 ]
    #   GT1   [   0,     1/3,   0   ]         GT1   [   0,     2/3,   0 ]
    #   GT2   [   0,     2/3,   4/5 ]         GT2   [   1,     1/3,   1 ]
    # m = mean over s:
    #   GT0   [  1/2,    2/3,   3/10 ]
    #   GT1   [  0,      1/2,   0    ]
    #   GT2   [  1/2,    1/2,   9/10 ]
    # per GT row i: count j != i with m[i, i] > m[i, j], / 2
    #   i=0: 1/2 > 2/3 no, 1/2 > 3/10 yes -> 1/2
    #   i=1: 1/2 > 0 yes, 1/2 > 0 yes     -> 1
    #   i=2: 9/10 > 1/2 yes, yes          -> 1
    # mean = 2.5 / 3 = 5/6. (Column-wise, the two-way orientation, would give 1/2.)
    c = np.corrcoef(gt, rec.reshape(6, 4))[:3, 3:].reshape(3, 3, 2)
    m_expected = np.array([[0.5, 2 / 3, 0.3], [0.0, 0.5, 0.0], [0.5, 0.5, 0.9]])
    np.testing.assert_allclose(c.mean(2), m_expected, atol=1e-12)
    assert identification_over_samples(gt, rec) == pytest.approx(5 / 6, abs=1e-12)


def test_correlation_distance_matches_scipy():
    from scipy.spatial.distance import correlation

    rng = np.random.default_rng(6)
    g = rng.normal(size=(7, 25))
    r = g + rng.normal(size=(7, 25))
    ref = np.mean([correlation(g[i], r[i]) for i in range(7)])
    assert correlation_distance(g, r) == pytest.approx(ref, abs=1e-10)
    rs = np.stack([r, rng.normal(size=(7, 25))], axis=1)
    ref_s = np.mean([correlation(g[i], rs[i, s]) for i in range(7) for s in range(2)])
    assert correlation_distance(g, rs) == pytest.approx(ref_s, abs=1e-10)


# --------------------------------------------------------------------------- n-way
def test_nway_top1():
    rng = np.random.default_rng(7)
    cls = rng.integers(0, 100, 20)
    onehot = np.eye(100)[cls]
    assert nway_top1(cls, onehot, n=50, trials=20) == 1.0
    assert nway_top1(onehot, -onehot, n=50, trials=20) == 0.0  # GT class scored lowest
    # n = C: success iff the GT class is the reconstruction's argmax
    scores = np.array([[0.1, 0.5, 0.3, 0.2]] * 2)
    assert nway_top1(np.array([1, 2]), scores, n=4, trials=5) == 0.5
    # n = 2: P(success) = fraction of other classes scored below the GT class;
    # GT class 2 (0.3) beats 0.1 and 0.2 but not 0.5 -> 2/3
    assert nway_top1(np.array([2]), scores[:1], n=2, trials=6000, seed=1) == pytest.approx(2 / 3, abs=0.03)
    # general case: with k_i of the C-1 other classes scored below the GT class, a trial succeeds
    # iff all n-1 distinct distractors come from those k_i: P_i = comb(k_i, n-1) / comb(C-1, n-1)
    from math import comb

    scores = rng.normal(size=(20, 100))
    k = (scores < scores[np.arange(20), cls][:, None]).sum(1)
    expected = np.mean([comb(int(ki), 9) / comb(99, 9) for ki in k])
    assert nway_top1(cls, scores, n=10, trials=3000) == pytest.approx(expected, abs=0.01)


# --------------------------------------------------------------------------- nets and layers
def test_layer_names_map_to_the_named_torchvision_modules(nets):
    from torch import nn

    alex = nets["alexnet"]
    mods = dict(alex.named_modules())
    convs_before = lambda k: sum(isinstance(m, nn.Conv2d) for m in alex.features[:k])  # noqa: E731
    # AlexNet(2) = features.4: the ReLU right after conv2 (64 -> 192, 5x5)
    assert isinstance(mods["features.4"], nn.ReLU) and convs_before(4) == 2
    assert isinstance(alex.features[3], nn.Conv2d) and alex.features[3].out_channels == 192
    # AlexNet(5) = features.11: the ReLU after conv5 (256 -> 256, 3x3)
    assert isinstance(mods["features.11"], nn.ReLU) and convs_before(11) == 5
    assert alex.features[10].in_channels == 256 and alex.features[10].out_channels == 256
    # Takagi early / mid / late: max-pools after conv2 and conv5, ReLU after fc7 (4096 -> 4096)
    assert isinstance(mods["features.5"], nn.MaxPool2d) and convs_before(5) == 2
    assert isinstance(mods["features.12"], nn.MaxPool2d) and convs_before(12) == 5
    assert isinstance(mods["classifier.5"], nn.ReLU)
    assert isinstance(alex.classifier[4], nn.Linear) and alex.classifier[4].out_features == 4096
    import torchvision.models as tvm

    assert type(nets["inception_v3"]) is tvm.Inception3 and nets["inception_v3"].transform_input
    assert isinstance(dict(nets["inception_v3"].named_modules())["avgpool"], nn.AdaptiveAvgPool2d)
    assert type(nets["efficientnet_b1"]) is tvm.EfficientNet
    assert isinstance(nets["efficientnet_b1"].avgpool, nn.AdaptiveAvgPool2d)
    assert type(nets["swav"]) is tvm.ResNet and isinstance(nets["swav"].layer4[0], tvm.resnet.Bottleneck)
    assert [len(nets["swav"].layer1), len(nets["swav"].layer2), len(nets["swav"].layer3), len(nets["swav"].layer4)] == [
        3,
        4,
        6,
        3,
    ]
    from transformers import CLIPVisionModelWithProjection

    assert isinstance(nets["clip"], CLIPVisionModelWithProjection)


# (net, convention, layer, expected D). AlexNet at 224: conv1 (224+4-11)//4+1 = 55, pool -> 27,
# conv2 keeps 27 (192 ch), pool -> 13, conv3-5 keep 13 (256 ch), pool -> 6. At 256 (mindeye):
# conv1 (256+4-11)//4+1 = 63, pool -> 31, pool -> 15, pool -> 7 (then adaptive pool to 6x6).
SHAPES = [
    ("alexnet", "braindiffuser", "features.4", 192 * 27 * 27),
    ("alexnet", "braindiffuser", "features.11", 256 * 13 * 13),
    ("alexnet", "braindiffuser", "features.5", 192 * 13 * 13),
    ("alexnet", "braindiffuser", "features.12", 256 * 6 * 6),
    ("alexnet", "braindiffuser", "classifier.5", 4096),
    ("alexnet", "mindeye", "features.4", 192 * 31 * 31),
    ("alexnet", "mindeye", "features.11", 256 * 15 * 15),
    ("alexnet", "mindeye", "features.12", 256 * 7 * 7),
    ("inception_v3", "braindiffuser", "avgpool", 2048),
    ("inception_v3", "mindeye", "fc", 1000),
    ("efficientnet_b1", "mindeye", "avgpool", 1280),
    ("swav", "braindiffuser", "avgpool", 2048),
    ("clip", "mindeye", "image_embeds", 16),  # tiny projection_dim
    ("clip", "braindiffuser", "hidden_states.6", (224 // 14) ** 2 * 32 + 32),  # 257 tokens x 32
    ("clip", "braindiffuser", "hidden_states.12", 257 * 32),
]


def test_feature_shapes_per_net_and_layer(nets):
    imgs = _imgs(np.random.default_rng(8), 3, 30)
    groups = {}
    for net, conv, layer, d in SHAPES:
        groups.setdefault((net, conv), []).append((layer, d))
    for (net, conv), items in groups.items():
        feats = extract_features(net, nets[net], imgs, [l for l, _ in items], conv, batch_size=2)
        assert set(feats) == {l for l, _ in items}
        for layer, d in items:
            assert feats[layer].shape == (3, d), (net, conv, layer)
            assert feats[layer].dtype == np.float32 and np.isfinite(feats[layer]).all()


def test_hooks_capture_values_before_inplace_ops(nets):
    alex = nets["alexnet"]
    imgs = _imgs(np.random.default_rng(9), 3, 24)
    # features.3 is a conv followed by ReLU(inplace=True): an uncopied hook output would be rectified
    feats = extract_features(
        "alexnet", alex, imgs, ["features.3", "features.4", "classifier.5"], "braindiffuser", batch_size=2
    )
    x = preprocess(imgs, "alexnet", "braindiffuser")
    with torch.no_grad():
        conv2 = alex.features[:4](x)
        ref3 = conv2.flatten(1).numpy().copy()
        ref4 = torch.relu(conv2).flatten(1).numpy()
        ref_fc7 = alex.classifier[:6](torch.flatten(alex.avgpool(alex.features(x)), 1)).numpy()
    assert (ref3 < 0).any()
    np.testing.assert_allclose(feats["features.3"], ref3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats["features.4"], ref4, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats["classifier.5"], ref_fc7, rtol=1e-5, atol=1e-5)
    # CLIP layers are the model's own outputs
    feats = extract_features("clip", nets["clip"], imgs, ["image_embeds", "hidden_states.6"], "braindiffuser")
    with torch.no_grad():
        out = nets["clip"](pixel_values=preprocess(imgs, "clip", "braindiffuser"), output_hidden_states=True)
    np.testing.assert_allclose(feats["image_embeds"], out.image_embeds.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["hidden_states.6"], out.hidden_states[6].flatten(1).numpy(), rtol=1e-5, atol=1e-6)


def test_preprocess_conventions_match_torchvision_transforms():
    import torchvision.transforms.functional as TF

    imgs = _imgs(np.random.default_rng(10), 2, 60)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    clipstats = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    cases = [
        ("alexnet", "braindiffuser", [224, 224], imagenet),
        ("clip", "braindiffuser", [224, 224], clipstats),
        ("alexnet", "mindeye", 256, imagenet),
        ("inception_v3", "mindeye", 342, imagenet),
        ("efficientnet_b1", "mindeye", 255, imagenet),
        ("swav", "mindeye", 224, imagenet),
        ("clip", "mindeye", 224, clipstats),
    ]
    for net, conv, size, (mean, std) in cases:
        ref = TF.resize(x, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        ref = TF.normalize(ref, mean, std)
        got = preprocess(imgs, net, conv)
        assert got.shape == ref.shape, (net, conv)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # mindeye keeps the aspect ratio (shorter edge), braindiffuser squashes to 224 x 224
    wide = _imgs(np.random.default_rng(11), 1, 40, 80)
    assert preprocess(wide, "alexnet", "mindeye").shape == (1, 3, 256, 512)
    assert preprocess(wide, "alexnet", "braindiffuser").shape == (1, 3, 224, 224)


def test_published_and_takagi_preprocessing_equal_the_reference_transforms():
    """braindiffuser_published nets = torchvision functional.resize(PIL image, (224, 224)) + to_tensor +
    normalize (eval_extract_features.py); takagi AlexNet / Inception = Compose([Resize(299), CenterCrop(299),
    ToTensor(), Normalize]) on PIL images, takagi CLIP = the PIL CLIPImageProcessor (img2feat_decoded.py)."""
    from PIL import Image
    from torchvision import transforms as T
    import torchvision.transforms.functional as TF
    from transformers import CLIPImageProcessorPil

    imagenet = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    clip = T.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])
    takagi = T.Compose([T.Resize(299), T.CenterCrop(299), T.ToTensor(), imagenet])
    for shape in ((425, 425), (512, 512), (60, 80), (90, 70)):  # NSD GT, reconstructions, and non-square
        imgs = _imgs(np.random.default_rng(sum(shape)), 2, *shape)
        pil = [Image.fromarray(a) for a in imgs]
        for net in ("alexnet", "inception_v3", "efficientnet_b1", "swav", "clip"):
            norm = clip if net == "clip" else imagenet
            ref = torch.stack([norm(TF.to_tensor(TF.resize(p, (224, 224)))) for p in pil])
            torch.testing.assert_close(preprocess(imgs, net, "braindiffuser_published"), ref, rtol=0, atol=1e-6)
        for net in ("alexnet", "inception_v3"):
            ref = torch.stack([takagi(p) for p in pil])
            torch.testing.assert_close(preprocess(imgs, net, "takagi"), ref, rtol=0, atol=1e-6)
        ref = torch.from_numpy(CLIPImageProcessorPil()(images=list(imgs), return_tensors="np").pixel_values)
        torch.testing.assert_close(preprocess(imgs, "clip", "takagi"), ref, rtol=0, atol=1e-6)
    assert preprocess(_imgs(np.random.default_rng(1), 1, 60, 80), "alexnet", "takagi").shape == (1, 3, 299, 299)


def test_ssim_columns_is_the_mean_of_per_column_1d_ssims():
    """scikit-image 0.17.2 with multichannel=True on a 2-D grey image took each column as a channel: the mean
    of the columns' 1-D SSIMs. Computed here column by column with today's scikit-image on 1-D arrays."""
    from skimage.metrics import structural_similarity

    from brainrecon.evaluate.metrics import SSIM_KWARGS, ssim_columns, ssim_pair

    rng = np.random.default_rng(21)
    g = rng.random((64, 48))
    r = np.clip(g + 0.3 * rng.standard_normal(g.shape), 0, 1)
    ref = np.mean([structural_similarity(g[:, c], r[:, c], **SSIM_KWARGS) for c in range(g.shape[1])])
    assert ssim_columns(g, r) == pytest.approx(ref, abs=1e-12)
    assert ssim_pair(g, r, "columns_1d") == pytest.approx(ref, abs=1e-12)
    assert abs(ssim_pair(g, r, "2d") - ref) > 1e-3  # not the 2-D SSIM
    assert ssim_columns(g, g) == pytest.approx(1.0)


def test_published_pixcorr_and_ssim_follow_evaluate_reconstruction_py():
    """Brain-Diffuser's script: recon PIL .resize((425, 425)) (default = bicubic), /255; PixCorr = corrcoef of
    the RGB arrays; SSIM on rgb2gray of both, multichannel=True (= per-column 1-D SSIM). The engine with the
    braindiffuser_published convention gives exactly these."""
    from PIL import Image
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    from brainrecon.evaluate.metrics import SSIM_KWARGS

    rng = np.random.default_rng(22)
    gt = _imgs(rng, 3, 42)
    rec = np.clip(np.repeat(np.repeat(gt, 2, 1), 2, 2).astype(int) + rng.integers(-40, 40, (3, 84, 84, 3)), 0,
                  255).astype(np.uint8)  # 84 px reconstructions of the 42 px GT, noisy
    pix, ss = [], []
    for g, r in zip(gt, rec):
        r = np.array(Image.fromarray(r).resize((42, 42))) / 255.0
        g = g / 255.0
        pix.append(np.corrcoef(g.reshape(1, -1), r.reshape(1, -1))[0, 1])
        gg, rg = rgb2gray(g), rgb2gray(r)
        ss.append(np.mean([structural_similarity(rg[:, c], gg[:, c], **SSIM_KWARGS) for c in range(42)]))
    res = evaluate(gt, rec, {}, convention="braindiffuser_published", metrics=["PixCorr", "SSIM"])
    assert res["PixCorr"] == pytest.approx(np.mean(pix), abs=1e-12)
    assert res["SSIM"] == pytest.approx(np.mean(ss), abs=1e-12)
    assert pixcorr(gt, rec, resize="pil_bicubic") == pytest.approx(np.mean(pix), abs=1e-12)
    assert ssim_score(gt, rec, resize="pil_bicubic", kind="columns_1d") == pytest.approx(np.mean(ss), abs=1e-12)
    mod = evaluate(gt, rec, {}, convention="braindiffuser", metrics=["PixCorr", "SSIM"])
    assert mod["SSIM"] != pytest.approx(res["SSIM"], abs=1e-4)  # the modern 2-D SSIM is another number


def test_tn_columns_take_their_own_convention(nets):
    """BD columns with braindiffuser_published, TN- columns with takagi (299 px, CLIPProcessor): each group
    equals a one-convention computation of its columns (the reference path, tests/metric_reference.py)."""
    from metric_reference import reference_metrics

    rng = np.random.default_rng(23)
    gt = _imgs(rng, 4, 40)
    rec = np.stack([np.clip(gt.astype(int) + rng.integers(-60, 60, gt.shape), 0, 255).astype(np.uint8)
                    for _ in range(2)], 1)
    sub = {k: nets[k] for k in ("alexnet", "inception_v3", "clip")}
    cols = ["AlexNet(2)", "Inception", "CLIP", *TAKAGI_COLUMNS]
    res = evaluate(gt, rec, sub, convention="braindiffuser_published", takagi_convention="takagi", metrics=cols)
    assert res["convention"] == "braindiffuser_published" and res["tn_convention"] == "takagi"
    bd = reference_metrics(gt, rec, sub, "braindiffuser_published", metrics=cols[:3])
    tn = reference_metrics(gt, rec, sub, "takagi", metrics=list(TAKAGI_COLUMNS))
    for c in cols[:3]:
        assert res[c] == pytest.approx(bd[c], abs=1e-9), c
    for c in TAKAGI_COLUMNS:
        assert res[c] == pytest.approx(tn[c], abs=1e-9), c
    # the convention matters: the TN correlations differ from the same columns computed the BD way
    from brainrecon.models.plan import Runtime

    def bank(tn_conv):
        st = EvalSettings.build(convention="braindiffuser_published", takagi_convention=tn_conv)
        return compute_scores(gt, rec, sub, st, metrics=list(TAKAGI_COLUMNS), runtime=Runtime("cpu", "float32", 8))

    a, b = bank("takagi"), bank("braindiffuser_published")
    assert set(a.corr) == {(n, lay, "takagi") for n, lay in {(metric_spec(c).net, metric_spec(c).layer)
                                                             for c in TAKAGI_COLUMNS}}
    ka, kb = ("clip", "image_embeds", "takagi"), ("clip", "image_embeds", "braindiffuser_published")
    assert not np.allclose(a.corr[ka], b.corr[kb], atol=1e-4)


def test_conventions_name_their_weights_and_defaults():
    from brainrecon.evaluate.plan import CONVENTIONS, PIXEL_CONVENTIONS
    from brainrecon.evaluate.stage import eval_net_files
    from brainrecon.schema import defaults

    ev = defaults("evaluate")
    assert (ev["convention"], ev["takagi_convention"]) == ("braindiffuser_published", "takagi")
    assert set(PIXEL_CONVENTIONS) == {"braindiffuser_published", "braindiffuser", "mindeye"}
    assert CONVENTIONS["mindeye"].weights == {"efficientnet_b1": "IMAGENET1K_V2"}
    s = EvalSettings.build(convention="mindeye")
    assert s.net_weights() == {"efficientnet_b1": "IMAGENET1K_V2"} and EvalSettings.build().net_weights() == {}
    import torchvision.models as tvm

    v2 = eval_net_files(["efficientnet_b1"], s.net_weights())["efficientnet_b1"][0]
    assert v2 == tvm.EfficientNet_B1_Weights.IMAGENET1K_V2.url != tvm.EfficientNet_B1_Weights.IMAGENET1K_V1.url
    assert s.convention_of("TN-CLIP-late") == "takagi" and s.convention_of("SSIM") == "mindeye"


# --------------------------------------------------------------------------- building / weights
def test_tiny_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_eval_net("efficientnet_b1", "tiny", seed=1)
    after = torch.rand(3)
    b = build_eval_net("efficientnet_b1", "tiny", seed=1)
    c = build_eval_net("efficientnet_b1", "tiny", seed=2)
    assert torch.equal(before, after)
    pa, pb, pc = (next(m.features.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_pretrained_weights_from_cache_or_clear_error(tmp_path, monkeypatch):
    import torchvision.models as tvm

    with pytest.raises(FileNotFoundError, match=r"efficientnet_b1_rwightman.*not cached.*download\.pytorch\.org"):
        build_eval_net("efficientnet_b1", "pretrained", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="alexnet-owt"):
        build_eval_net("alexnet", "pretrained", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no member 'BOGUS'"):
        build_eval_net("efficientnet_b1", "torchvision:BOGUS", cache_dir=tmp_path)
    # a cached file (same name as the weights URL) is found and loaded strictly
    src = build_eval_net("efficientnet_b1", "tiny", seed=5)
    url = tvm.EfficientNet_B1_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(src.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    got = build_eval_net("efficientnet_b1", "pretrained", seed=0, cache_dir=tmp_path)
    for (k, v), (k2, v2) in zip(src.state_dict().items(), got.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # the same file by path; a file for another architecture is refused with the path named
    got2 = build_eval_net("efficientnet_b1", tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    assert torch.equal(next(got2.parameters()), next(src.parameters()))
    with pytest.raises(ValueError, match="do not fit"):
        build_eval_net("inception_v3", tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    with pytest.raises(FileNotFoundError, match="neither"):
        build_eval_net("alexnet", tmp_path / "nope.pth")
    # CLIP: not in the (empty) HF cache -> clear error; a save_pretrained folder loads
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        build_eval_net("clip", "pretrained", cache_dir=tmp_path / "hf")
    tiny = build_eval_net("clip", "tiny", seed=3)
    tiny.save_pretrained(tmp_path / "clip_tiny")
    loaded = build_eval_net("clip", tmp_path / "clip_tiny")
    assert torch.equal(loaded.visual_projection.weight, tiny.visual_projection.weight)
    # a full CLIPModel folder (openai repo layout, models registry 'clip'): the vision tower and
    # its projection are taken, projection_dim from the top-level config
    from transformers import CLIPConfig, CLIPModel

    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=12, num_attention_heads=4, patch_size=14)
    text = dict(hidden_size=24, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=99)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    full.save_pretrained(tmp_path / "clip_full")
    loaded = build_eval_net("clip", tmp_path / "clip_full")
    assert loaded.visual_projection.weight.shape == (16, 32)
    assert torch.equal(loaded.visual_projection.weight, full.visual_projection.weight)
    assert torch.equal(
        loaded.vision_model.encoder.layers[11].mlp.fc2.weight, full.vision_model.encoder.layers[11].mlp.fc2.weight
    )


def _fake_swav_checkpoint(seed):
    """A SwAV-like checkpoint: ResNet-50 trunk with 'module.' prefix, SwAV head, no fc."""
    trunk = build_eval_net("swav", "tiny", seed=seed)
    sd = {f"module.{k}": v.clone() for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    sd["module.prototypes.weight"] = torch.zeros(3000, 128)
    return trunk, sd


def test_swav_state_dict_loading(tmp_path):
    trunk, sd = _fake_swav_checkpoint(seed=7)
    model = build_eval_net("swav", "tiny", seed=0)
    fc_before = model.fc.weight.clone()
    load_swav_state_dict(model, dict(sd))
    for k, v in trunk.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(model.fc.weight, fc_before)  # fc is the only key left as initialised
    # a checkpoint missing trunk weights, or with foreign keys, is refused
    broken = {k: v for k, v in sd.items() if k != "module.layer3.0.conv1.weight"}
    with pytest.raises(ValueError, match="layer3.0.conv1.weight"):
        load_swav_state_dict(model, broken)
    with pytest.raises(ValueError, match="decoder.x"):
        load_swav_state_dict(model, {**sd, "module.decoder.x": torch.zeros(1)})
    # from a file: "pretrained" looks for the hub file name in cache_dir
    torch.save(sd, tmp_path / "swav_800ep_pretrain.pth.tar")
    got = build_eval_net("swav", "pretrained", cache_dir=tmp_path)
    assert torch.equal(got.layer4[2].conv3.weight, trunk.layer4[2].conv3.weight)
    with pytest.raises(FileNotFoundError, match="swav_800ep_pretrain"):
        build_eval_net("swav", "pretrained", cache_dir=tmp_path / "empty")


# --------------------------------------------------------------------------- the suite
def test_evaluate_all_identical_images(nets, tmp_path):
    gt = _imgs(np.random.default_rng(12), 3, 36)
    res = evaluate(gt, gt.copy(), nets, convention="braindiffuser")
    assert res["convention"] == "braindiffuser" and res["n_images"] == 3 and res["n_samples"] == 1
    # a single-sample method's settings carry no TN- convention (the rule leaves it out): same numbers
    from brainrecon.models.plan import Runtime

    st = EvalSettings.build(convention="braindiffuser").for_method(multi_sample=False)
    assert st.takagi_convention is None
    assert compute_scores(gt, gt.copy(), nets, st, runtime=Runtime("cpu", "float32", 8)).summary() == res
    with pytest.raises(ValueError, match="takagi_convention"):
        st.columns(with_samples=True)
    assert "tn_convention" not in res  # no TN- column computed
    assert list(res)[3:] == list(BRAINDIFFUSER_COLUMNS)
    for col in ("PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "Inception", "CLIP"):
        assert res[col] == pytest.approx(1.0, abs=1e-9), col
    assert res["EffNet-B"] == pytest.approx(0.0, abs=1e-6) and res["SwAV"] == pytest.approx(0.0, abs=1e-6)
    # several samples: Takagi columns added by default
    res_s = evaluate(
        gt,
        np.stack([gt, gt], 1),
        {k: nets[k] for k in ("alexnet", "clip", "inception_v3")},
        convention="mindeye",
        metrics=list(TAKAGI_COLUMNS) + ["PixCorr", "AlexNet(5)"],
    )
    assert res_s["convention"] == "mindeye" and res_s["n_samples"] == 2
    assert all(res_s[c] == 1.0 for c in TAKAGI_COLUMNS)
    write_metrics_csv(tmp_path / "m.csv", [{"method": "x", **res_s}])
    header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert header == ["method", "convention", "tn_convention", "n_images", "n_samples", "PixCorr", "AlexNet(5)",
                      *TAKAGI_COLUMNS]


def test_evaluate_all_nway(nets):
    gt = _imgs(np.random.default_rng(13), 3, 32)
    res = evaluate(gt, gt.copy(), {"inception_v3": nets["inception_v3"]}, metrics=["50-way-top1"], nway_trials=10)
    assert res["50-way-top1"] == 1.0  # identical logits: the GT class is the argmax


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors(nets):
    rng = np.random.default_rng(14)
    gt = _imgs(rng, 3, 32)
    with pytest.raises(ValueError, match="N = 3.*N = 2"):
        pixcorr(gt, gt[:2])
    with pytest.raises(ValueError, match="N = 3.*N = 2"):
        evaluate(gt, gt[:2], nets, metrics=["PixCorr"])
    with pytest.raises(ValueError, match="N = 4.*N = 3"):
        two_way_identification(rng.normal(size=(4, 5)), rng.normal(size=(3, 5)))
    with pytest.raises(ValueError, match="D = 5.*D = 6"):
        two_way_identification(rng.normal(size=(4, 5)), rng.normal(size=(4, 6)))
    with pytest.raises(TypeError, match="uint8.*float32"):
        ssim_score(gt, gt.astype(np.float32) / 255)
    too_bright = gt.astype(np.int64)
    too_bright[0, 0, 0, 0] = 300
    with pytest.raises(ValueError, match=r"0\.\.255, got range \[\d+, 300\]"):
        pixcorr(gt, too_bright)
    assert pixcorr(gt, gt.astype(np.int64)) == pytest.approx(1.0)  # in-range integers are accepted
    with pytest.raises(ValueError, match="channels-first"):
        pixcorr(gt, gt.transpose(0, 3, 1, 2).copy())
    with pytest.raises(ValueError, match="constant"):
        two_way_identification(np.ones((3, 4)), rng.normal(size=(3, 4)))
    with pytest.raises(ValueError, match="constant"):
        pixcorr(gt, np.zeros_like(gt))
    with pytest.raises(ValueError, match="unknown evaluation net 'vgg'"):
        build_eval_net("vgg")
    with pytest.raises(ValueError, match="unknown layer 'features.99'"):
        extract_features("alexnet", nets["alexnet"], gt, ["features.99"])
    with pytest.raises(ValueError, match=r"hidden_states\.K' for K in 0\.\.12"):
        extract_features("clip", nets["clip"], gt, ["hidden_states.13"])
    with pytest.raises(ValueError, match="unknown preprocessing convention 'kamitani'"):
        extract_features("alexnet", nets["alexnet"], gt, ["features.4"], convention="kamitani")
    with pytest.raises(ValueError, match="evaluate.convention 'kamitani'"):
        evaluate(gt, gt, nets, convention="kamitani")
    with pytest.raises(ValueError, match="'takagi' is not a convention of the Brain-Diffuser columns"):
        evaluate(gt, gt, nets, convention="takagi")  # it defines no pixel metrics
    with pytest.raises(ValueError, match="takagi.*defines no preprocessing for swav"):
        extract_features("swav", nets["swav"], gt, ["avgpool"], convention="takagi")
    with pytest.raises(ValueError, match="unknown metric 'FID'"):
        evaluate(gt, gt, nets, metrics=["FID"])
    with pytest.raises(ValueError, match="not given.*SwAV"):
        evaluate(gt, gt, {"alexnet": nets["alexnet"]}, metrics=["AlexNet(2)", "SwAV"])
    with pytest.raises(ValueError, match="2..C"):
        nway_top1(np.array([0, 1]), rng.normal(size=(2, 10)), n=11)
