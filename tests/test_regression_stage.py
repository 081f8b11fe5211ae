"""Regression stage glue: row alignment by nsdId, voxel selection, single trials, subject average."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from brainrecon.regression.plan import SpaceFit
from brainrecon.regression.stage import H5Rows, average_subjects, fit_space, select_voxels


def _write_prepared(path, rng, n_train=60, n_test=12, V=40, reps=2, W=None, feat_fn=None):
    ids_train = np.sort(rng.choice(np.arange(1000), n_train, replace=False))
    ids_test = np.sort(rng.choice(np.setdiff1d(np.arange(1000), ids_train), n_test, replace=False))
    streams = np.where(np.arange(V) < V // 2, 1, 5).astype(np.int16)  # first half "early", rest "ventral"
    with h5py.File(path, "w") as f:
        def betas(ids, noise):
            F = feat_fn(ids)
            return (F @ W + noise * rng.standard_normal((ids.size, V))).astype(np.float32)

        f["train/betas"] = betas(ids_train, 0.3)
        f["train/nsd_ids"] = ids_train
        trial_ids = np.repeat(ids_train, reps)
        f["trials/betas"] = betas(trial_ids, 0.6)
        f["trials/nsd_ids"] = trial_ids
        f["test/betas"] = betas(ids_test, 0.3)
        f["test/nsd_ids"] = ids_test
        f["voxels/ijk"] = np.stack([np.arange(V), np.zeros(V), np.zeros(V)], 1).astype(np.int64)
        f["rois/streams"] = streams
    return ids_train, ids_test


def _write_features(path, ids_by_split, feat_fn, shape):
    with h5py.File(path, "w") as f:
        for split, ids in ids_by_split.items():
            perm = np.random.default_rng(1).permutation(ids.size)  # stored out of order on purpose
            f[f"{split}/features"] = feat_fn(ids[perm]).reshape(ids.size, -1).astype(np.float32)
            f[f"{split}/nsd_ids"] = ids[perm]
        f.attrs["feature_shape"] = np.asarray(shape)
        f.attrs["space"] = "toy"


@pytest.fixture
def toy(tmp_path):
    rng = np.random.default_rng(0)
    shape = (3, 4)
    D = int(np.prod(shape))
    table = rng.standard_normal((1000, D))  # features of every nsdId
    feat_fn = lambda ids: table[ids]  # noqa: E731
    W = rng.standard_normal((D, 40))
    prep = tmp_path / "prep.h5"
    ids_train, ids_test = _write_prepared(prep, rng, W=W, feat_fn=feat_fn)
    feats = tmp_path / "feat.h5"
    _write_features(feats, {"train": ids_train, "test": ids_test}, feat_fn, shape)
    return dict(prep=prep, feats=feats, table=table, ids_test=ids_test, shape=shape, tmp=tmp_path)


def _corr_rows(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@pytest.mark.parametrize("train_on", ["averaged", "single_trial"])
def test_fit_space_aligns_rows_by_nsd_id_and_decodes(toy, train_on):
    out = toy["tmp"] / f"out_{train_on}.h5"
    fit_space(toy["prep"], toy["feats"], out, SpaceFit.build(alphas=[1.0, 10.0, 100.0], cv=3, train_on=train_on,
                                                             restandardise=True), progress=False)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["nsd_ids"][:], toy["ids_test"])
        pred = f["pred"][:]
        assert pred.shape == (toy["ids_test"].size, *toy["shape"])
        assert "pred_restd" in f and f["voxel_mask"][:].all()
    true = toy["table"][toy["ids_test"]]
    r = _corr_rows(pred.reshape(len(true), -1), true)
    assert np.median(r) > 0.8, r
    # the same fit with the feature rows shuffled against the betas decodes nothing
    bad = toy["tmp"] / "shuffled.h5"
    with h5py.File(toy["feats"], "r") as f, h5py.File(bad, "w") as g:
        for k in ("train", "test"):
            g[f"{k}/features"] = f[f"{k}/features"][:]
            g[f"{k}/nsd_ids"] = np.random.default_rng(5).permutation(f[f"{k}/nsd_ids"][:])
        g.attrs["feature_shape"] = f.attrs["feature_shape"]
    fit_space(toy["prep"], bad, toy["tmp"] / "o2.h5", SpaceFit.build(alphas=[10.0], cv=3, train_on=train_on),
              progress=False)
    with h5py.File(toy["tmp"] / "o2.h5", "r") as f:
        r_shuf = _corr_rows(f["pred"][:].reshape(len(true), -1), true)
    assert np.median(r) > np.median(r_shuf) + 0.5


def test_h5rows_matches_direct_indexing(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((10, 2 * 3 * 4)).astype(np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["d"] = data
    rows = np.array([4, 1, 1, 9, 0])
    with h5py.File(tmp_path / "x.h5", "r") as f:
        v = H5Rows(f["d"], rows, (2, 3, 4))
        assert v.shape == (5, 2, 3, 4)
        np.testing.assert_array_equal(v[:, 0:2], data[rows].reshape(5, 2, 3, 4))
        np.testing.assert_array_equal(v[:, 1:2], data[rows].reshape(5, 2, 3, 4)[:, 1:2])
        with pytest.raises(ValueError, match="feature_shape"):
            H5Rows(f["d"], rows, (5, 5))


def test_select_voxels_by_roi_labels(toy):
    with h5py.File(toy["prep"], "r") as f:
        m = select_voxels(f, {"streams": ["early"]})
        np.testing.assert_array_equal(m, f["rois/streams"][:] == 1)
        assert select_voxels(f, "all").all()
        with pytest.raises(ValueError, match="no label 'V9'"):
            select_voxels(f, {"streams": ["V9"]})
        with pytest.raises(KeyError, match="floc-faces"):
            select_voxels(f, {"floc-faces": ["FFA-1"]})
    out = toy["tmp"] / "early.h5"
    fit_space(toy["prep"], toy["feats"], out, SpaceFit.build(alphas=[10.0], voxels={"streams": ["early"]}),
              progress=False)
    with h5py.File(out, "r") as f:
        assert f["voxel_mask"][:].sum() == 20
        assert f.attrs["n_features"] == 20


def test_missing_features_for_an_image_is_a_clear_error(toy):
    with h5py.File(toy["feats"], "a") as f:
        ids = f["train/nsd_ids"][:]
        del f["train/nsd_ids"]
        ids[0] = 5000
        f["train/nsd_ids"] = ids
    out = toy["tmp"] / "none.h5"
    with pytest.raises(KeyError, match="no features for nsdId"):
        fit_space(toy["prep"], toy["feats"], out, SpaceFit.build(alphas=[1.0]), progress=False)
    assert not out.exists()


def test_average_subjects_over_common_images(tmp_path):
    rng = np.random.default_rng(7)
    paths, preds = [], []
    for s, ids in enumerate([np.array([1, 3, 5, 7]), np.array([3, 5, 7, 9]), np.array([0, 3, 5, 7])]):
        p = tmp_path / f"s{s}.h5"
        pred = rng.standard_normal((4, 2, 3)).astype(np.float32)
        with h5py.File(p, "w") as f:
            f["nsd_ids"] = ids
            f["pred"] = pred
            f["pred_restd"] = pred * 2
            f["extra/roi_V1"] = pred[:1]
        paths.append(p)
        preds.append(dict(zip(ids.tolist(), pred)))
    average_subjects(paths, tmp_path / "avg.h5")
    with h5py.File(tmp_path / "avg.h5", "r") as f:
        np.testing.assert_array_equal(f["nsd_ids"][:], [3, 5, 7])
        for row, i in enumerate([3, 5, 7]):
            expect = np.mean([d[i] for d in preds], axis=0)
            np.testing.assert_allclose(f["pred"][row], expect, rtol=1e-6)
            np.testing.assert_allclose(f["pred_restd"][row], 2 * expect, rtol=1e-6)
        assert f["extra/roi_V1"].shape == (1, 2, 3)


# ----------------------------------------------------------------------------- Takagi's reference fit
def _takagi_toy(tmp_path, mean=3.0):
    """Features with a non-zero mean (so an intercept matters), three single trials per training image."""
    rng = np.random.default_rng(7)
    shape = (2, 5)
    D = int(np.prod(shape))
    table = rng.standard_normal((1000, D)) * rng.uniform(0.5, 2.0, D) + mean
    # half of the features drive the voxels strongly, half not at all: CV picks different alphas per target
    W = rng.standard_normal((D, 40)) * np.r_[np.full(D // 2, 3.0), np.zeros(D - D // 2)][:, None]
    prep = tmp_path / "prep.h5"
    ids_train, ids_test = _write_prepared(prep, rng, n_train=50, n_test=10, reps=3, W=W, feat_fn=lambda i: table[i])
    with h5py.File(prep, "a") as f:  # voxels 0..14 inside nsdgeneral, the rest outside
        f["rois/nsdgeneral"] = (np.arange(40) < 15).astype(np.int16)
    feats = tmp_path / "feat.h5"
    _write_features(feats, {"train": ids_train, "test": ids_test}, lambda i: table[i], shape)
    return prep, feats, table, shape


@pytest.mark.parametrize("cv_score", ["l2_neg_loss"])
def test_takagi_fit_equals_himalaya_ridgecv_without_intercept(tmp_path, cv_score):
    """The reference (codes/utils/ridge.py), computed independently: StandardScaler on the single-trial X,
    himalaya RidgeCV(alphas) with its defaults (fit_intercept=False, cv=5 unshuffled folds, l2_neg_loss,
    one alpha per target), predicting the averaged test betas. Our fit with fit_intercept false equals it."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prep, feats, table, shape = _takagi_toy(tmp_path)
    alphas = [1e-2, 1.0, 1e2, 1e4]
    out = tmp_path / "ours.h5"
    fit_space(prep, feats, out, SpaceFit.build(alphas=alphas, cv=5, cv_score=cv_score, train_on="single_trial",
                                               voxels={"streams": ["early"]}, restandardise=False,
                                               fit_intercept=False), progress=False)
    with h5py.File(prep, "r") as f:
        early = f["rois/streams"][()] == 1
        X, trial_ids = f["trials/betas"][()][:, early].astype(np.float64), f["trials/nsd_ids"][()]
        Xt = f["test/betas"][()][:, early].astype(np.float64)
    Y = table[trial_ids]  # the image's features repeated per trial, in trial order
    set_backend("numpy", on_error="raise")
    ref = make_pipeline(StandardScaler(with_mean=True, with_std=True), RidgeCV(alphas=alphas)).fit(X, Y)
    expect = ref.predict(Xt)
    assert not ref[-1].fit_intercept and ref[-1].cv == 5  # the defaults the reference relied on
    with h5py.File(out, "r") as f:
        pred = f["pred"][()].reshape(len(Xt), -1)
        got_alphas = f["alphas"][()].reshape(-1)
        assert not f.attrs["fit_intercept"]
    np.testing.assert_allclose(got_alphas, np.asarray(ref[-1].best_alphas_), rtol=1e-9)
    assert len(set(got_alphas.tolist())) > 1  # the toy exercises the per-target choice
    np.testing.assert_allclose(pred, expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
    # no training mean: the prediction of the mean test pattern is ~0, not the features' mean of 3
    assert abs(pred.mean()) < 1.0 < abs(table.mean())


def test_fit_intercept_adds_the_training_mean_back(tmp_path):
    prep, feats, table, shape = _takagi_toy(tmp_path)
    preds = {}
    for fi in (False, True):
        out = tmp_path / f"fi{fi}.h5"
        fit_space(prep, feats, out, SpaceFit.build(alphas=[1e6], train_on="single_trial", restandardise=False,
                                                   fit_intercept=fi), progress=False)
        with h5py.File(out, "r") as f:
            preds[fi] = f["pred"][()]
    # a huge alpha shrinks the weights to 0: the prediction is the intercept (train mean) or 0
    with h5py.File(prep, "r") as f:
        train_mean = table[f["trials/nsd_ids"][()]].mean(0)
    np.testing.assert_allclose(preds[True].mean(0).reshape(-1), train_mean, rtol=1e-3)
    assert np.abs(preds[False]).max() < 1e-2


def test_fit_logs_and_records_voxels_inside_and_outside_nsdgeneral(tmp_path, caplog):
    import json
    import logging

    prep, feats, _, _ = _takagi_toy(tmp_path)
    out = tmp_path / "o.h5"
    with caplog.at_level(logging.INFO, logger="brainrecon.regression.stage"):
        fit_space(prep, feats, out, SpaceFit.build(alphas=[1.0], train_on="single_trial", restandardise=False,
                                                   voxels={"streams": ["early", "ventral"]}), progress=False)
    with h5py.File(out, "r") as f:
        counts = json.loads(f.attrs["voxel_counts"])
    # early = voxels 0..19, ventral = 20..39; nsdgeneral = 0..14
    assert counts == {"streams:early": {"inside": 15, "outside": 5}, "streams:ventral": {"inside": 0, "outside": 20}}
    assert "voxels streams:early" in caplog.text and "15 inside nsdgeneral, 5 outside" in caplog.text
