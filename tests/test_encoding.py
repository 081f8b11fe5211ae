"""Tests of brainrecon.encoding: statistics, PCA, maps, ROI tables, figures, analysis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainrecon.encoding import (
    encoding_analysis,
    fdr_bh,
    fit_pca,
    pca_scores,
    pearson_r_per_voxel,
    plot_r_by_roi,
    pvalue_null_gaussian,
    roi_summary,
    save_map_nifti,
    slice_mosaic,
    to_volume,
)

# ----------------------------------------------------------------------------- statistics


def test_pearson_r_matches_numpy_and_handles_constant_columns():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((40, 7))
    pred = 0.5 * true + rng.standard_normal((40, 7))
    pred[:, 3] = 2.0  # constant prediction: no defined correlation
    r = pearson_r_per_voxel(pred, true, chunk=2)  # several chunks
    for v in range(7):
        if v == 3:
            assert r[v] == 0.0
        else:
            assert r[v] == pytest.approx(np.corrcoef(pred[:, v], true[:, v])[0, 1], abs=1e-12)
    # scale/offset invariance and sign
    assert np.allclose(pearson_r_per_voxel(3 * pred + 1, true), r)
    assert np.allclose(pearson_r_per_voxel(-pred, true), -r)
    with pytest.raises(ValueError, match="same shape"):
        pearson_r_per_voxel(pred[:, :3], true)


def test_pvalue_null_gaussian_uniform_under_null_and_exact():
    """Correlations of independent Gaussian vectors give uniform analytic p-values.

    n = 6 is deliberately tiny: there the r distribution is far from any normal
    approximation, so only the exact (Student t, n - 2 dof) null passes the KS test.
    """
    rng = np.random.default_rng(1)
    n, draws = 6, 40000
    a = rng.standard_normal((n, draws))
    b = rng.standard_normal((n, draws))
    r = pearson_r_per_voxel(a, b)
    p = pvalue_null_gaussian(r, n)
    ks = stats.kstest(p, "uniform")
    assert ks.pvalue > 0.01, ks
    # a normal approximation r*sqrt(n) ~ N(0,1) would be detected by the same test
    p_naive = stats.norm.sf(r * np.sqrt(n))
    assert stats.kstest(p_naive, "uniform").pvalue < 1e-6
    # one-sided upper tail: positive r -> p < 0.5, negative -> p > 0.5, r = 0 -> 0.5
    assert (p[r > 0] < 0.5).all() and (p[r < 0] > 0.5).all()
    assert pvalue_null_gaussian(np.array([0.0]), 50)[0] == pytest.approx(0.5)
    assert pvalue_null_gaussian(np.array([1.0, -1.0]), 50).tolist() == [0.0, 1.0]
    # matches scipy's exact test (beta distribution of r) for n = 982
    rr = np.array([-0.3, -0.01, 0.0, 0.02, 0.06, 0.1, 0.4])
    ref = [stats.pearsonr(*_pair_with_r(x, 982), alternative="greater").pvalue for x in rr]
    assert np.allclose(pvalue_null_gaussian(rr, 982), ref, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="n >= 3"):
        pvalue_null_gaussian(rr, 2)


def _pair_with_r(r: float, n: int):
    """Two length-n vectors whose sample correlation is exactly r."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(n)
    e = rng.standard_normal(n)
    x = (x - x.mean()) / np.linalg.norm(x - x.mean())
    e = e - e.mean()
    e = e - (e @ x) * x
    e /= np.linalg.norm(e)
    return x, r * x + np.sqrt(1 - r * r) * e


def test_fdr_bh_hand_example_and_scipy():
    p = np.array([0.012, 0.038, 0.032, 0.004, 0.30])
    # m = 5, q = 0.05. Sorted: 0.004, 0.012, 0.032, 0.038, 0.30 (original idx 3, 0, 2, 1, 4)
    # thresholds k q / m:      0.01,  0.02,  0.03,  0.04,  0.05
    # passes p_(k) <= k q / m:  yes,   yes,   NO,    yes,   no  -> largest k = 4
    # step-up: reject the 4 smallest (0.032 too, although it misses its own threshold)
    sig, adj = fdr_bh(p, q=0.05)
    assert sig.tolist() == [True, True, True, True, False]
    # adjusted: p_(k) m / k = 0.02, 0.03, 0.05333, 0.0475, 0.30; running min from the end
    #   -> 0.02, 0.03, 0.0475, 0.0475, 0.30, back in original order:
    assert np.allclose(adj, [0.03, 0.0475, 0.0475, 0.02, 0.30])
    # q = 0.04: thresholds 0.008, 0.016, 0.024, 0.032, 0.04 -> largest k = 2
    sig04, _ = fdr_bh(p, q=0.04)
    assert sig04.tolist() == [True, False, False, True, False]
    # scipy's implementation on random p-values (with ties)
    rng = np.random.default_rng(2)
    pr = np.concatenate([rng.uniform(size=300), rng.uniform(0, 1e-3, 40), [0.01] * 5])
    sig, adj = fdr_bh(pr, q=0.05)
    ref = stats.false_discovery_control(pr, method="bh")
    assert np.allclose(adj, ref, rtol=1e-12)
    assert (sig == (ref <= 0.05)).all()
    with pytest.raises(ValueError, match="NaN"):
        fdr_bh(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="q"):
        fdr_bh(p, q=0.0)


# ----------------------------------------------------------------------------- PCA


def _sk_pca(X, k):
    from sklearn.decomposition import PCA

    return PCA(n_components=k, svd_solver="full").fit(X)


@pytest.mark.parametrize("shape", [(60, 25), (30, 90)], ids=["covariance", "gram"])
def test_pca_matches_sklearn_fitted_on_train_only(shape):
    rng = np.random.default_rng(3)
    n, d = shape
    mix = rng.standard_normal((d, d)) * np.linspace(3, 0.1, d)[:, None]
    train = rng.standard_normal((n, d)) @ mix + 5.0
    test = rng.standard_normal((15, d)) @ mix - 2.0
    k = 10
    model = fit_pca(train, k, dtype=np.float64)
    assert model.route == ("covariance" if d <= n else "gram")
    ref = _sk_pca(train, k)
    assert np.allclose(model.mean, train.mean(0))
    assert np.allclose(model.explained_variance, ref.explained_variance_, rtol=1e-9)
    ztr, zte = model.transform(train), model.transform(test)
    # the same subspace and coordinates up to the sign of each component
    signs = np.sign(np.sum(ztr * ref.transform(train), axis=0))
    assert np.allclose(ztr * signs, ref.transform(train), atol=1e-8)
    assert np.allclose(zte * signs, ref.transform(test), atol=1e-8)  # train mean, not test mean
    assert np.allclose(model.components @ model.components.T, np.eye(k), atol=1e-10)
    # streamed in many tiny blocks: same result
    small = fit_pca(train, k, dtype=np.float64, block_bytes=8 * max(n, d) * 3)
    assert np.allclose(small.components, model.components, atol=1e-10)
    assert np.allclose(small.transform(test, block_bytes=8 * d * 2), zte, atol=1e-10)
    # test rows never enter the fit: refitting on train after perturbing test changes nothing
    again = fit_pca(train.copy(), k, dtype=np.float64)
    assert np.array_equal(again.components, model.components)


def test_pca_capped_by_rank_with_note():
    rng = np.random.default_rng(4)
    wide = rng.standard_normal((20, 80))  # n < d: rank of centred data = n - 1 = 19
    m = fit_pca(wide, n_components=6400)
    assert m.n_components == 19 and m.components.shape == (19, 80)
    assert "6400" in m.note and "19" in m.note
    low = rng.standard_normal((100, 5)) @ rng.standard_normal((5, 30))  # rank 5
    m2 = fit_pca(low, n_components=6400, dtype=np.float64)
    assert m2.n_components == 5 and "rank" in m2.note
    # the 5 components span the data: reconstruction is exact
    z = m2.transform(low)
    assert np.allclose(z @ m2.components + m2.mean, low, atol=1e-9)
    with pytest.raises(ValueError, match="columns"):
        m2.transform(low[:, :10])
    bad = low.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(bad, 3)


def test_pca_reads_h5_dataset_in_blocks(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(6)
    X = rng.standard_normal((25, 70)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = X
    with h5py.File(tmp_path / "f.h5", "r") as f:
        m = fit_pca(f["x"], 8, dtype=np.float64, block_bytes=8 * 25 * 16)  # 16-column blocks
        z = m.transform(f["x"])
    ref = fit_pca(X.astype(np.float64), 8, dtype=np.float64)
    assert np.allclose(z, ref.transform(X), atol=1e-6)


@pytest.mark.parametrize("shape", [(60, 25), (30, 90)], ids=["covariance", "gram"])
def test_pca_scores_match_sklearn_with_row_selection(shape, tmp_path):
    """Scores without components: the same coordinates as sklearn's PCA of the selected training
    rows (up to each component's sign), read from HDF5 in column blocks, rows in any order."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(11)
    n, d = shape
    mix = rng.standard_normal((d, d)) * np.linspace(3, 0.1, d)[:, None]
    train_all = (rng.standard_normal((n + 7, d)) @ mix + 5.0).astype(np.float32)
    test_all = (rng.standard_normal((12, d)) @ mix - 2.0).astype(np.float32)
    tr_rows = rng.permutation(n + 7)[:n]  # 7 rows left out, the rest shuffled
    te_rows = np.array([5, 0, 11, 3])
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["train"], f["test"] = train_all, test_all
    k = 10
    with h5py.File(tmp_path / "f.h5", "r") as f:
        sc = pca_scores(f["train"], f["test"], k, train_rows=tr_rows, test_rows=te_rows, dtype=np.float64,
                        block_bytes=8 * (n + 7) * 16)  # 16-column blocks
    assert sc.route == ("covariance" if d <= n else "gram") and sc.n_components == k
    assert sc.train.shape == (n, k) and sc.test.shape == (4, k) and sc.train.dtype == np.float64
    sel = train_all[tr_rows].astype(np.float64)
    ref = _sk_pca(sel, k)
    rtr, rte = ref.transform(sel), ref.transform(test_all[te_rows].astype(np.float64))
    signs = np.sign(np.sum(sc.train * rtr, axis=0))
    assert np.allclose(sc.train * signs, rtr, atol=1e-6)
    assert np.allclose(sc.test * signs, rte, atol=1e-6)  # train mean and train components
    assert np.allclose(sc.explained_variance, ref.explained_variance_, rtol=1e-6)
    # deterministic signs: each component's largest-magnitude training score is positive
    if sc.route == "gram":
        assert (sc.train[np.abs(sc.train).argmax(0), np.arange(k)] > 0).all()
    # no row selection == selecting every row in order
    with h5py.File(tmp_path / "f.h5", "r") as f:
        a = pca_scores(f["train"], f["test"], k, dtype=np.float64)
        b = pca_scores(f["train"], f["test"], k, train_rows=np.arange(n + 7), test_rows=np.arange(12),
                       dtype=np.float64)
    assert np.allclose(a.train, b.train, atol=1e-9) and np.allclose(a.test, b.test, atol=1e-9)


def test_pca_scores_rank_cap_and_bad_inputs():
    rng = np.random.default_rng(12)
    wide = rng.standard_normal((20, 80))
    sc = pca_scores(wide, wide[:3], n_components=6400)
    assert sc.n_components == 19 and "6400" in sc.note and "kept 19" in sc.note
    # the training scores reproduce the centred Gram matrix (all 19 components kept)
    c = wide - wide.mean(0)
    assert np.allclose(sc.train.astype(np.float64) @ sc.train.T, c @ c.T, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="test features have 70 columns"):
        pca_scores(wide, wide[:, :70], 5)
    with pytest.raises(IndexError, match="train_rows"):
        pca_scores(wide, wide, 5, train_rows=[0, 20])
    bad = wide.copy()
    bad[2, 50] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        pca_scores(bad, wide, 5)


# ----------------------------------------------------------------------------- maps


def test_to_volume_and_nifti_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(7)
    shape = (5, 6, 7)
    flat = rng.choice(np.prod(shape), size=40, replace=False)
    ijk = np.stack(np.unravel_index(flat, shape), axis=1)
    values = rng.standard_normal(40)
    vol = to_volume(values, ijk, shape)
    assert vol.shape == shape
    for (i, j, k), v in zip(ijk, values):
        assert vol[i, j, k] == v
    outside = np.ones(shape, bool)
    outside[tuple(ijk.T)] = False
    assert (vol[outside] == 0).all()
    assert np.isnan(to_volume(values, ijk, shape, fill=np.nan)[outside]).all()

    affine = np.array([[-1.8, 0, 0, 70.0], [0, 1.8, 0, -90.0], [0, 0, 1.8, -60.0], [0, 0, 0, 1]])
    out = tmp_path / "maps" / "r.nii.gz"
    save_map_nifti(values, ijk, shape, affine, out)
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    assert np.allclose(img.affine, affine)
    data = np.asarray(img.dataobj)
    assert data.shape == shape
    assert np.allclose(data[tuple(ijk.T)], values.astype(np.float32))
    assert (data[outside] == 0).all()
    # the world position of the first voxel is where the affine puts its ijk
    xyz = nib.affines.apply_affine(img.affine, ijk[0])
    assert np.allclose(xyz, affine[:3, :3] @ ijk[0] + affine[:3, 3])
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.nii.gz"]  # no temp leftovers

    with pytest.raises(ValueError, match="outside the volume"):
        to_volume(values, ijk + np.array([5, 0, 0]), shape)
    with pytest.raises(ValueError, match="more than once"):
        to_volume(values[:2], np.array([[1, 1, 1], [1, 1, 1]]), shape)
    with pytest.raises(ValueError, match="4x4"):
        save_map_nifti(values, ijk, shape, np.eye(3), tmp_path / "x.nii.gz")


# ----------------------------------------------------------------------------- ROI table


def test_roi_summary_hand_case():
    r = np.array([0.1, 0.3, 0.5, -0.2, 0.0, 0.4])
    sig = np.array([True, False, True, False, False, True])
    rois = {
        "streams": np.array([1, 1, 5, 5, 0, -1]),  # early = {0, 1}, ventral = {2, 3}
        "prf-visualrois": np.array([7, 0, 0, 7, 7, 2]),  # hV4 = {0, 3, 4}, V1d = {5}
    }
    df = roi_summary(r, sig, rois)
    assert len(df) == 7 + 7  # every label of both tables
    row = df.set_index(["roi_file", "roi"])
    early = row.loc[("streams", "early")]
    assert early["n_voxels"] == 2 and early["mean_r"] == pytest.approx(0.2)
    assert early["frac_significant"] == pytest.approx(0.5) and early["label"] == 1
    ventral = row.loc[("streams", "ventral")]
    assert ventral["mean_r"] == pytest.approx(0.15) and ventral["frac_significant"] == pytest.approx(0.5)
    hv4 = row.loc[("prf-visualrois", "hV4")]
    assert hv4["n_voxels"] == 3 and hv4["mean_r"] == pytest.approx(-0.1 / 3)
    assert hv4["frac_significant"] == pytest.approx(1 / 3) and hv4["n_significant"] == 1
    v1d = row.loc[("prf-visualrois", "V1d")]
    assert v1d["n_voxels"] == 1 and v1d["mean_r"] == pytest.approx(0.4) and v1d["frac_significant"] == 1.0
    empty = row.loc[("streams", "parietal")]
    assert empty["n_voxels"] == 0 and np.isnan(empty["mean_r"])
    with pytest.raises(ValueError, match="does not name"):
        roi_summary(r, sig, {"floc-places": np.array([1, 2, 3, 4, 0, 0])})
    with pytest.raises(ValueError, match="no label table"):
        roi_summary(r, sig, {"made-up": np.zeros(6, int)})


# ----------------------------------------------------------------------------- figures


def _png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_slice_mosaic_draws_only_significant_voxels(tmp_path):
    rng = np.random.default_rng(8)
    shape = (12, 14, 10)
    epi = np.zeros(shape)
    epi[2:10, 2:12, 1:9] = rng.uniform(100, 200, (8, 10, 8))
    vol = np.zeros(shape)
    vol[3:9, 3:11, 2:8] = rng.uniform(0.1, 0.6, (6, 8, 6))

    def coloured(img):
        rgb = img[..., :3]
        return int((np.ptp(rgb, axis=-1) > 0.1).sum())

    a = _png(slice_mosaic(vol, epi, tmp_path / "all.png", significance=np.ones(shape, bool), n_slices=6))
    b = _png(slice_mosaic(vol, epi, tmp_path / "none.png", significance=np.zeros(shape, bool), n_slices=6))
    c = _png(slice_mosaic(vol, epi, tmp_path / "thr.png", threshold=0.5, n_slices=6))
    assert a.shape == b.shape
    # the colour bar is coloured in both; the overlay adds coloured pixels only when shown
    assert coloured(a) > coloured(b) + 200
    assert coloured(b) < coloured(c) < coloured(a)
    with pytest.raises(ValueError, match="mean EPI shape"):
        slice_mosaic(vol, epi[:-1], tmp_path / "bad.png")


def test_plot_r_by_roi_lines_and_bars(tmp_path):
    rows = []
    for subj in (1, 2):
        for feat in ("z", "zc"):
            for cond in ("0.25", "0.5", "0.75"):
                for roi in ("early", "ventral"):
                    rows.append((subj, feat, cond, roi, 0.1 * subj + (0.2 if roi == "early" else 0.05)))
    df = pd.DataFrame(rows, columns=["subject", "feature", "condition", "roi", "mean_r"])
    img = _png(plot_r_by_roi(df, tmp_path / "lines.png", title="noise levels"))
    assert img.shape[0] > 100 and img.shape[1] > 200
    single = df[df["condition"] == "0.5"].assign(condition="")
    _png(plot_r_by_roi(single, tmp_path / "bars.png"))
    with pytest.raises(ValueError, match="missing"):
        plot_r_by_roi(df.drop(columns="roi"), tmp_path / "x.png")


# ----------------------------------------------------------------------------- analysis


def _zscore(x):
    return (x - x.mean(0)) / x.std(0)


def _analyse(train_X, train_Y, test_X, test_Y, return_pred=False, progress=False, **settings):
    """encoding_analysis with the schema's encoding settings (numpy backend), ``settings`` overriding some."""
    from brainrecon.encoding.plan import FitSettings, fit_settings
    from brainrecon.schema import defaults

    base = fit_settings({"encoding": defaults("encoding"), "regression": {"backend": "numpy"}})
    alphas = settings.pop("alphas", base["alphas"])
    base["alphas"] = list(np.atleast_1d(alphas))
    return encoding_analysis(train_X, train_Y, test_X, test_Y, FitSettings(**{**base, **settings}),
                             return_pred=return_pred, progress=progress)


def _planted(seed=0, n=300, m=100, v_half=60, noise=2.0):
    """Features A (low-rank, 60-d) and B (isotropic, 60-d), independent; the first
    ``v_half`` voxels are a linear map of A plus noise, the others of B plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n + m, 20))
    A = latent @ rng.standard_normal((20, 60)) + 0.1 * rng.standard_normal((n + m, 60))
    B = rng.standard_normal((n + m, 60))
    Y = np.concatenate(
        [_zscore(A @ rng.standard_normal((60, v_half))), _zscore(B @ rng.standard_normal((60, v_half)))], 1
    )
    Y = Y + noise * rng.standard_normal(Y.shape)
    return A, B, Y.astype(np.float32), n


def test_planted_encoding_each_feature_space_predicts_its_voxels():
    A, B, Y, n = _planted()
    h = Y.shape[1] // 2
    kw = dict(alphas=np.logspace(-1, 6, 8), cv=3, n_components=30, progress=False)
    ra = _analyse(A[:n], Y[:n], A[n:], Y[n:], **kw)
    rb = _analyse(B[:n], Y[:n], B[n:], Y[n:], **kw)
    for res in (ra, rb):
        assert res["r"].shape == res["p"].shape == res["significant"].shape == (2 * h,)
        assert res["n_components_used"] == 30 and res["n_test"] == 100
        assert np.isin(res["best_alphas"], np.logspace(-1, 6, 8)).all()
    # A-voxels: better predicted by A than by B, and vice versa
    assert (ra["r"][:h] > rb["r"][:h]).mean() >= 0.9
    assert (rb["r"][h:] > ra["r"][h:]).mean() >= 0.9
    assert ra["r"][:h].mean() > 0.25 and rb["r"][h:].mean() > 0.15
    # the wrong feature space has no information: r around 0, few discoveries
    assert abs(rb["r"][:h].mean()) < 0.05 and abs(ra["r"][h:].mean()) < 0.05
    assert ra["significant"][:h].mean() > 0.9 and ra["significant"][h:].mean() <= 0.1
    # p-values and the mask are consistent with r: significant voxels have the largest r
    assert ra["r"][ra["significant"]].min() > ra["r"][~ra["significant"]].max()


def test_null_voxels_fdr_fraction_at_most_q():
    """Pure-noise voxels: the fraction declared significant after BH stays <= q.

    Under the global null (every voxel null) BH controls the family-wise error at q:
    P(at least one discovery) <= q = 0.05. So per seed the fraction is 0 with
    probability >= 0.95 and, when not, a handful of voxels out of 2000 (far below q;
    a fraction of 0.05 would be 100 false discoveries). We allow q per seed, require
    the average over seeds <= q, and require that at most 2 of 5 seeds have any
    discovery (P(>= 3 of 5) <= 10 * 0.05**3 ~ 1e-3). To be sure the p-values are not
    merely degenerate (e.g. all 1), the raw p < 0.05 fraction must be near 0.05
    (binomial sd over 2000 voxels ~ 0.005; we accept 0.025..0.075).
    """
    q = 0.05
    fractions, any_disc = [], 0
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        X = rng.standard_normal((260, 24))
        Y = rng.standard_normal((260, 2000)).astype(np.float32)
        res = _analyse(X[:200], Y[:200], X[200:], Y[200:], alphas=[1.0, 100.0, 1e4], cv=3,
                                                                                  n_components=12, q=q)
        frac = res["significant"].mean()
        assert frac <= q, (seed, frac)
        fractions.append(frac)
        any_disc += bool(res["significant"].any())
        assert 0.025 <= (res["p"] < 0.05).mean() <= 0.075
        assert stats.kstest(res["p"], "uniform").pvalue > 1e-3
    assert np.mean(fractions) <= q
    assert any_disc <= 2


def test_pca_in_analysis_uses_train_rows_only():
    A, _, Y, n = _planted(seed=3, v_half=10)
    kw = dict(alphas=[1.0, 1e3], cv=3, n_components=15, progress=False, return_pred=True)
    base = _analyse(A[:n], Y[:n], A[n:], Y[n:], **kw)
    X_te = A[n:].copy()
    X_te[50:] = 1e3 * np.random.default_rng(9).standard_normal(X_te[50:].shape)  # wild test rows
    other = _analyse(A[:n], Y[:n], X_te, Y[n:], **kw)
    # the fit (PCA + ridge) is unchanged: same alphas, same predictions of unchanged rows
    assert np.array_equal(base["best_alphas"], other["best_alphas"])
    assert np.allclose(base["pred"][:50], other["pred"][:50], rtol=1e-5, atol=1e-5)
    assert not np.allclose(base["pred"][50:], other["pred"][50:])
    # capped by the rank of the training features (d = 60, n = 300 -> 15 requested, 15 used;
    # asking for more than the centred rank min(n - 1, d) = 60 gives 60 -> no PCA needed)
    assert base["n_components_used"] == 15 and "15" in base["pca_note"]
    small = _analyse(A[:40], Y[:40], A[n:], Y[n:], alphas=[10.0], n_components=50)
    assert small["n_components_used"] == 39  # 40 training rows: centred rank 39
    with pytest.raises(ValueError, match="features"):
        _analyse(A[:n], Y[:n], A[n:, :10], Y[n:], **kw)
