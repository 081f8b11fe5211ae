"""brainrecon.regression: the shared-factorisation ridge against sklearn and by construction."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from brainrecon.regression import KernelRidgeDecoder, restandardise, ridge_predict_test, target_stats

BACKENDS = ["numpy", "torch"]
TOL = {"float64": 1e-8, "float32": 1e-4}


def _rel(ours, ref):
    """Relative error of predictions, w.r.t. their variation across rows (ignores the
    intercept, which would make any error look small)."""
    return np.linalg.norm(ours - ref) / np.linalg.norm(ref - ref.mean(0))


def _data(n, p, T=7, m=15, seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, p)
    offset = rng.normal(size=p) * 5
    X = rng.normal(size=(n, p)) * scale + offset
    Xt = rng.normal(size=(m, p)) * scale + offset
    W = rng.normal(size=(p, T)) / np.sqrt(p)
    Y = ((X - offset) / scale) @ W + 0.5 * rng.normal(size=(n, T)) + rng.normal(size=T) * 3
    return X, Y, Xt


# --------------------------------------------------------------------------- (1) sklearn
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n,p,solver", [(40, 90, "dual"), (120, 30, "primal")])
def test_equals_sklearn_ridge(backend, dtype, n, p, solver):
    X, Y, Xt = _data(n, p)
    sc = StandardScaler().fit(X)
    alpha = 10.0
    ref = Ridge(alpha=alpha, fit_intercept=True).fit(sc.transform(X), Y).predict(sc.transform(Xt))
    dec = KernelRidgeDecoder(alphas=alpha, backend=backend, dtype=dtype, progress=False)
    ours = dec.fit_predict(X, Y, Xt)
    assert dec.regime_ == solver  # auto picks the kernel form for n <= p, primal otherwise
    assert ours.shape == ref.shape and ours.dtype == np.dtype(dtype)
    assert _rel(ours, ref) <= TOL[dtype]
    # the other regime forced on the same data gives the same answer
    other = "primal" if solver == "dual" else "dual"
    forced = KernelRidgeDecoder(alphas=alpha, backend=backend, dtype=dtype, progress=False, solver=other)
    assert _rel(forced.fit_predict(X, Y, Xt), ref) <= TOL[dtype]
    # a fixed alpha is solved by Cholesky; the eigendecomposition route gives the same answer
    assert dec.factor_.solver._eig is None and dec.factor_.solver._chol
    eig = KernelRidgeDecoder(alphas=alpha, backend=backend, dtype=dtype, progress=False, factorisation="eigh")
    assert _rel(eig.fit_predict(X, Y, Xt), ref) <= TOL[dtype]
    assert eig.factor_.solver._eig is not None and not eig.factor_.solver._chol
    # in-sample predictions too (Xnew = the training rows)
    ref_in = Ridge(alpha=alpha).fit(sc.transform(X), Y).predict(sc.transform(X))
    assert _rel(dec.predict(X), ref_in) <= TOL[dtype]


def test_brain_diffuser_ddof1_and_no_intercept():
    X, Y, Xt = _data(30, 60, seed=3)
    mu, sd = X.mean(0), X.std(0, ddof=1)
    ref = Ridge(alpha=5.0).fit((X - mu) / sd, Y).predict((Xt - mu) / sd)
    ours = KernelRidgeDecoder(5.0, x_ddof=1, dtype="float64", progress=False).fit_predict(X, Y, Xt)
    assert _rel(ours, ref) <= 1e-8
    # ddof matters (the check above is not vacuous)
    ours0 = KernelRidgeDecoder(5.0, x_ddof=0, dtype="float64", progress=False).fit_predict(X, Y, Xt)
    assert _rel(ours0, ref) > 1e-6
    # fit_intercept=False, standardize_X=False == sklearn on the raw design without intercept
    ref_raw = Ridge(alpha=5.0, fit_intercept=False).fit(X, Y).predict(Xt)
    ours_raw = KernelRidgeDecoder(5.0, fit_intercept=False, standardize_X=False, dtype="float64",
                                  progress=False).fit_predict(X, Y, Xt)
    assert np.abs(ours_raw - ref_raw).max() <= 1e-8 * np.abs(ref_raw).max()


def test_zero_variance_voxel_is_guarded():
    X, Y, Xt = _data(30, 50, seed=4)
    X[:, 7] = 2.5
    Xt[:, 7] = 9.0  # a constant training voxel must not influence predictions
    keep = np.arange(50) != 7
    sc = StandardScaler().fit(X[:, keep])
    ref = Ridge(alpha=3.0).fit(sc.transform(X[:, keep]), Y).predict(sc.transform(Xt[:, keep]))
    ours = KernelRidgeDecoder(3.0, dtype="float64", progress=False).fit_predict(X, Y, Xt)
    assert np.all(np.isfinite(ours)) and _rel(ours, ref) <= 1e-8


# --------------------------------------------------------------------------- (2) batching
@pytest.mark.parametrize("alphas,cv", [(7.0, None), ([0.5, 5.0, 50.0, 500.0], 4)])
def test_batched_targets_equal_unbatched(alphas, cv):
    X, Y, Xt = _data(36, 70, T=11, seed=1)
    kw = dict(alphas=alphas, cv=cv, dtype="float64", progress=False)
    full = KernelRidgeDecoder(target_batch=10_000, **kw)
    whole = full.fit_predict(X, Y, Xt)
    batched = KernelRidgeDecoder(target_batch=3, **kw)
    parts = batched.fit_predict(X, Y, Xt)
    np.testing.assert_allclose(parts, whole, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(batched.alphas_, full.alphas_)
    # (n, tokens, dim) targets: batches align to whole tokens; same numbers as the 2-D view
    Y3 = Y[:, :10].reshape(36, 5, 2)
    dec3 = KernelRidgeDecoder(target_batch=3, **kw)
    p3 = dec3.fit_predict(X, Y3, Xt)
    assert p3.shape == (15, 5, 2)
    np.testing.assert_allclose(p3.reshape(15, 10), parts[:, :10] if cv is None else
                               KernelRidgeDecoder(target_batch=3, **kw).fit_predict(X, Y[:, :10], Xt),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dec3.y_mean_, Y3.mean(0), rtol=1e-12)
    np.testing.assert_allclose(dec3.y_std_, Y3.std(0), rtol=1e-12)


def test_h5_targets_equal_numpy(tmp_path):
    X, Y, Xt = _data(30, 45, T=12, seed=2)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["train"] = Y.reshape(30, 3, 4).astype("float32")
    with h5py.File(tmp_path / "y.h5", "r") as f:
        ours = KernelRidgeDecoder(2.0, target_batch=5, progress=False).fit_predict(X, f["train"], Xt)
        mean, std = target_stats(f["train"], target_batch=4)
    ref = KernelRidgeDecoder(2.0, progress=False).fit_predict(X, Y.astype("float32"), Xt)
    np.testing.assert_allclose(ours.reshape(15, 12), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean.reshape(-1), Y.astype("float32").mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.reshape(-1), Y.astype("float32").std(0), rtol=1e-5)


# --------------------------------------------------------------------------- (3) CV
def _brute_force_cv(X, Y, alphas, folds):
    """Per-alpha, per-fold sklearn Ridge on the once-standardised design; mean R² per target."""
    Xs = StandardScaler().fit_transform(X)
    scores = np.zeros((len(alphas), Y.shape[1]))
    for i, a in enumerate(alphas):
        for tr, va in folds:
            pred = Ridge(alpha=a).fit(Xs[tr], Y[tr]).predict(Xs[va])
            scores[i] += r2_score(Y[va], pred, multioutput="raw_values") / len(folds)
    return scores


def _cv_data(seed=5):
    rng = np.random.default_rng(seed)
    n, p, T = 60, 120, 12
    X = rng.normal(size=(n, p))
    W = rng.normal(size=(p, T))
    # targets from nearly noiseless (small alpha best) to nearly pure noise (large alpha)
    snr = np.geomspace(30, 0.02, T)
    signal = X @ W
    Y = signal / signal.std(0) * snr + rng.normal(size=(n, T)) + 1.0
    return X, Y


@pytest.mark.parametrize("backend", BACKENDS)
def test_cv_picks_brute_force_alpha(backend):
    X, Y = _cv_data()
    alphas = [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]
    folds = list(KFold(5).split(X))
    ref = _brute_force_cv(X, Y, alphas, folds)
    dec = KernelRidgeDecoder(alphas, cv=5, backend=backend, dtype="float64", target_batch=5, progress=False).fit(X, Y)
    np.testing.assert_allclose(dec.cv_scores_, ref, rtol=1e-7, atol=1e-9)
    expected = np.asarray(alphas)[np.argmax(ref, axis=0)]
    np.testing.assert_array_equal(dec.best_alphas_, expected)
    assert len(np.unique(expected)) >= 3  # the check is not trivial: targets want different alphas
    # same folds given as a splitter object and as explicit pairs
    d2 = KernelRidgeDecoder(alphas, cv=KFold(5), dtype="float64", progress=False).fit(X, Y)
    d3 = KernelRidgeDecoder(alphas, cv=folds, dtype="float64", progress=False).fit(X, Y)
    np.testing.assert_array_equal(d2.best_alphas_, expected)
    np.testing.assert_array_equal(d3.best_alphas_, expected)
    # 7 alphas > eigh_above: one eigendecomposition per fold; per-alpha Cholesky agrees
    dch = KernelRidgeDecoder(alphas, cv=5, backend=backend, dtype="float64", factorisation="cholesky",
                             progress=False).fit(X, Y)
    np.testing.assert_allclose(dch.cv_scores_, ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(dch.best_alphas_, expected)
    # float32 path chooses the same alphas here
    d32 = KernelRidgeDecoder(alphas, cv=5, dtype="float32", progress=False).fit(X, Y)
    np.testing.assert_array_equal(d32.best_alphas_, expected)
    # predictions with per-target alphas equal per-target sklearn fits at those alphas
    Xt = np.random.default_rng(9).normal(size=(10, X.shape[1]))
    sc = StandardScaler().fit(X)
    ref_pred = np.column_stack([Ridge(alpha=a).fit(sc.transform(X), Y[:, j]).predict(sc.transform(Xt))
                                for j, a in enumerate(expected)])
    assert _rel(dec.predict(Xt), ref_pred) <= 1e-8


def test_cv_global_and_grouped_alpha():
    X, Y = _cv_data(seed=6)
    alphas = [0.1, 10.0, 1e3, 1e5]
    folds = list(KFold(4).split(X))
    ref = _brute_force_cv(X, Y, alphas, folds)
    glob = KernelRidgeDecoder(alphas, cv=4, per_target_alpha=False, dtype="float64", progress=False).fit(X, Y)
    assert np.all(glob.alphas_ == alphas[int(np.argmax(ref.mean(1)))])
    grp = KernelRidgeDecoder(alphas, cv=4, target_groups=4, dtype="float64", progress=False).fit(X, Y)
    for g in range(3):
        cols = slice(4 * g, 4 * g + 4)
        assert np.all(grp.alphas_[cols] == alphas[int(np.argmax(ref[:, cols].mean(1)))])
    assert len(np.unique(grp.alphas_)) >= 2
    labels = np.repeat([2, 0, 1], 4)
    lab = KernelRidgeDecoder(alphas, cv=4, target_groups=labels, dtype="float64", progress=False).fit(X, Y)
    np.testing.assert_array_equal(lab.alphas_, grp.alphas_)


# --------------------------------------------------------------------------- (4) planted signal
def test_planted_signal_decoding():
    rng = np.random.default_rng(11)
    n, m, k, p = 200, 60, 6, 300
    Ytrue = rng.normal(size=(n + m, k))
    W = rng.normal(size=(k, p))
    X = Ytrue @ W + 2.0 * rng.normal(size=(n + m, p))
    dec = KernelRidgeDecoder([1.0, 10.0, 100.0, 1e3, 1e4], cv=5, progress=False)
    pred = dec.fit_predict(X[:n], Ytrue[:n], X[n:])

    def corr(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))

    r = corr(pred, Ytrue[n:])
    shuffled = KernelRidgeDecoder([1.0, 10.0, 100.0, 1e3, 1e4], cv=5, progress=False).fit_predict(
        X[:n], Ytrue[:n][rng.permutation(n)], X[n:])
    r0 = corr(shuffled, Ytrue[n:])
    assert r.min() > 0.8
    assert np.abs(r0).mean() < 0.3
    assert r.mean() > np.abs(r0).mean() + 0.5


# --------------------------------------------------------------------------- (5) weights, save/load
@pytest.mark.parametrize("n,p", [(35, 80), (90, 25)])
def test_predict_equals_primal_weights_and_save_load(tmp_path, n, p):
    X, Y, Xt = _data(n, p, T=9, seed=7)
    dec = KernelRidgeDecoder([0.3, 3.0, 30.0], cv=3, dtype="float64", target_batch=4, progress=False).fit(X, Y)
    W = dec.primal_weights()
    assert W.shape == (p, 9)
    manual = ((Xt - dec.x_mean_) / dec.x_scale_) @ W + dec.y_mean_
    pred = dec.predict(Xt)
    np.testing.assert_allclose(pred, manual, rtol=1e-9, atol=1e-9)
    # the weights are sklearn's coef_ on the standardised design at the chosen alphas
    sc = StandardScaler().fit(X)
    coef = np.column_stack([Ridge(alpha=a).fit(sc.transform(X), Y[:, j]).coef_ for j, a in enumerate(dec.alphas_)])
    np.testing.assert_allclose(W, coef, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(dec.primal_weights(2, 6), W[:, 2:6], rtol=1e-12)
    # save / load round trip
    path = dec.save(tmp_path / "model.h5")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.h5"]  # no temp files left
    with h5py.File(path, "r") as f:
        assert f.attrs["regime"] == dec.regime_
        assert f["coef"].shape == ((n if dec.regime_ == "dual" else p), 9)
    loaded = KernelRidgeDecoder.load(path, progress=False)
    np.testing.assert_allclose(loaded.predict(Xt), pred, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(loaded.alphas_, dec.alphas_)
    np.testing.assert_allclose(loaded.primal_weights(), W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loaded.y_mean_, Y.mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="Xnew"):
        loaded.predict(Xt[:, :-1])


def test_shared_factorisation_across_target_sets():
    X, Y, Xt = _data(40, 90, T=10, seed=8)
    a = KernelRidgeDecoder(5.0, dtype="float64", progress=False)
    pa = a.fit_predict(X, Y[:, :4], Xt)
    b = KernelRidgeDecoder(50.0, dtype="float64", progress=False)
    pb = b.fit_predict(X, Y[:, 4:], Xt, factor=a.factor_)
    assert b.factor_ is a.factor_
    sc = StandardScaler().fit(X)
    assert _rel(pa, Ridge(alpha=5.0).fit(sc.transform(X), Y[:, :4]).predict(sc.transform(Xt))) <= 1e-8
    assert _rel(pb, Ridge(alpha=50.0).fit(sc.transform(X), Y[:, 4:]).predict(sc.transform(Xt))) <= 1e-8
    with pytest.raises(ValueError, match="different X"):
        KernelRidgeDecoder(5.0, dtype="float64", progress=False).fit(X + 1.0, Y, factor=a.factor_)


# --------------------------------------------------------------------------- (6) restandardise
def test_restandardise_matches_train_stats():
    rng = np.random.default_rng(12)
    pred = rng.normal(size=(30, 3, 4)) * rng.uniform(0.01, 5, (3, 4)) + rng.normal(size=(3, 4)) * 10
    pred[:, 1, 2] = 4.0  # a constant prediction dimension
    tmean = rng.normal(size=(3, 4))
    tstd = rng.uniform(0.5, 2.0, (3, 4))
    out = restandardise(pred.astype("float32"), tmean, tstd)
    assert out.shape == pred.shape and out.dtype == np.float32
    flat, fo = pred.reshape(30, -1), out.reshape(30, -1).astype(np.float64)
    ok = np.arange(12) != 6
    np.testing.assert_allclose(fo.mean(0), tmean.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(fo.std(0)[ok], tstd.reshape(-1)[ok], rtol=1e-5)
    np.testing.assert_allclose(fo[:, 6], tmean.reshape(-1)[6], rtol=1e-6)
    # an increasing affine map per dimension: correlations with the raw predictions are 1
    for j in np.flatnonzero(ok):
        assert np.corrcoef(flat[:, j], fo[:, j])[0, 1] > 1 - 1e-6
    with pytest.raises(ValueError, match="train_std"):
        restandardise(pred, tmean, tstd[:2])
    with pytest.raises(ValueError, match="2 rows"):
        restandardise(pred[:1], tmean, tstd)


# --------------------------------------------------------------------------- (7) bad inputs
def test_bad_inputs_name_the_argument():
    X, Y, Xt = _data(20, 30, T=3, seed=13)
    dec = KernelRidgeDecoder(1.0, progress=False)
    with pytest.raises(ValueError, match=r"X has 20 rows but Y has 19"):
        dec.fit(X, Y[:19])
    Xn = X.copy()
    Xn[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN.*row 3, column 4"):
        dec.fit(Xn, Y)
    Yn = Y.copy()
    Yn[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"Y contains NaN or inf.*column 1"):
        KernelRidgeDecoder(1.0, progress=False).fit_predict(X, Yn, Xt)
    with pytest.raises(ValueError, match="backend"):
        KernelRidgeDecoder(1.0, backend="tensorflow")
    with pytest.raises(ValueError, match="alphas"):
        KernelRidgeDecoder([1.0, -2.0])
    with pytest.raises(ValueError, match="cv"):
        KernelRidgeDecoder([1.0, 2.0], cv=None, progress=False).fit(X, Y)
    with pytest.raises(ValueError, match="target_batch"):
        KernelRidgeDecoder(1.0, target_batch=0)
    with pytest.raises(ValueError, match="Xnew has 29 features"):
        KernelRidgeDecoder(1.0, progress=False).fit(X, Y).predict(Xt[:, 1:])
    with pytest.raises(RuntimeError, match="not fitted"):
        KernelRidgeDecoder(1.0).predict(Xt)
    with pytest.raises(ValueError, match="X must be 2-D"):
        dec.fit(X[0], Y)


def test_torch_cuda_missing_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    X, Y, _ = _data(10, 12, T=2)
    with pytest.raises(RuntimeError, match="torch_cuda"):
        KernelRidgeDecoder(1.0, backend="torch_cuda", progress=False).fit(X, Y)


# --------------------------------------------------------------------------- pipeline helper
def test_ridge_predict_test_writes_h5(tmp_path):
    X, Y, Xt = _data(32, 64, T=12, m=9, seed=14)
    rois = np.zeros((2, 64))
    rois[0, :10] = 1
    rois[1, 30:] = 1
    with h5py.File(tmp_path / "feat.h5", "w") as f:
        f["train"] = Y.reshape(32, 4, 3)
    out = tmp_path / "reg" / "subj01.h5"
    with h5py.File(tmp_path / "feat.h5", "r") as f:
        dec = KernelRidgeDecoder([1.0, 100.0], cv=4, target_batch=5, dtype="float64", progress=False)
        summary = ridge_predict_test(dec, X, f["train"], Xt, out, extra_X={"roi": rois},
                                     model_path=tmp_path / "model.h5", attrs={"space": "clipvision"})
    assert summary["n_test"] == 9 and summary["target_shape"] == (4, 3)
    assert sorted(x.name for x in out.parent.iterdir()) == ["subj01.h5"]
    dec = KernelRidgeDecoder([1.0, 100.0], cv=4, dtype="float64", progress=False).fit(X, Y.reshape(32, 4, 3))
    with h5py.File(out, "r") as f:
        pred = f["pred"][()]
        np.testing.assert_allclose(pred, dec.predict(Xt), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(f["extra/roi"][()], dec.predict(rois), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(f["train_mean"][()], Y.reshape(32, 4, 3).mean(0), rtol=1e-12)
        np.testing.assert_allclose(f["train_std"][()], Y.reshape(32, 4, 3).std(0), rtol=1e-12)
        np.testing.assert_allclose(f["pred_restd"][()], restandardise(pred, f["train_mean"][()], f["train_std"][()]),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(f["alphas"][()], dec.alphas_)
        assert f.attrs["space"] == "clipvision" and f.attrs["regime"] == "dual"
    loaded = KernelRidgeDecoder.load(tmp_path / "model.h5", progress=False)
    np.testing.assert_allclose(loaded.predict(Xt), pred, rtol=1e-9, atol=1e-10)
    # a failure leaves nothing under the final name
    bad = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match="test_X"):
        ridge_predict_test(KernelRidgeDecoder(1.0, cv=None, progress=False), X, Y, Xt[:, :5], bad)
    assert not bad.exists()


def test_bench_script_runs_and_agrees(capsys):
    """bench/ridge.py on a toy shape: runs, compares against the per-token sklearn reference."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "ridge.py"
    spec = importlib.util.spec_from_file_location("bench_ridge", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--n", "60", "--p", "120", "--n-test", "10", "--vdvae-dim", "1000", "--vision-tokens", "2",
                     "--text-tokens", "1", "--ref-tokens", "1", "--ref-vdvae-cols", "900", "--latent", "8"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("max relative difference"))
    assert float(line.split(":")[1].split()[0]) <= 1e-4
    assert "extrapolated" in out and "faster" in out
