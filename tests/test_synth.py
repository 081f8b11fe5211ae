"""Synthetic NSD: layout, formats, index conventions, determinism and the planted signal."""

from __future__ import annotations

import ast
import pickle
import json
import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict

from brainrecon.nsd import layout
from brainrecon.synth import CATEGORIES, DEFAULT_SHAPES, SynthSettings, generate, load_planted, planted_drive

SMALL = dict(subjects=(1, 2), sessions=2, n_images=20, n_shared=4, n_reps=3, image_size=64)


def _gen(base: Path, shapes=None, **kw):
    args = {**SMALL, **kw}
    s = generate(base / "nsd", base / "coco", SynthSettings.build(**args), shapes=shapes, progress=False)
    return base / "nsd", base / "coco", s


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp("synth_a"), seed=0)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One subject, many images (more images than low-level features), two reps."""
    base = tmp_path_factory.mktemp("synth_big")
    s = generate(base / "nsd", base / "coco", SynthSettings.build(subjects=(5,), sessions=2, n_images=240, n_shared=10, n_reps=2, snr=2.0, noise_fraction=0.2, image_size=32, seed=3), progress=False)
    return base / "nsd", base / "coco", s


def _design(root):
    return scipy.io.loadmat(root / layout.expdesign_key())


def _nii(root, key):
    return np.asanyarray(nib.load(root / key).dataobj)


def _key_arrays(root, coco):
    """Arrays that define the dataset's content (not file bytes: gzip/HDF5 headers hold times)."""
    d = _design(root)
    out = {k: d[k] for k in ("masterordering", "subjectim", "sharedix", "stimpattern", "basiccnt")}
    with h5py.File(root / layout.stimuli_key()) as f:
        out["imgBrick"] = f["imgBrick"][:]
    for s in SMALL["subjects"]:
        out[f"betas{s}"] = _nii(root, layout.betas_key(s, 1))
        out[f"streams{s}"] = _nii(root, layout.roi_key(s, "streams"))
    out["stiminfo"] = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0).to_numpy().astype(str)
    out["captions"] = np.array([(coco / f).read_text() for f in layout.COCO_CAPTION_FILES])
    return out


def _trial_table(root, subject):
    """Per global trial t (0-based): session, volume, 10k-id, nsdId (SPEC §1 arithmetic)."""
    d = _design(root)
    mo = d["masterordering"].ravel().astype(int)
    tps = int(d["stimpattern"][0].sum())
    t = np.arange(mo.size)
    nsd = d["subjectim"][subject - 1, mo - 1].astype(int) - 1
    return pd.DataFrame({"session": t // tps + 1, "volume": t % tps, "m": mo, "nsd": nsd})


# --------------------------------------------------------------------------- determinism, layout


def test_same_seed_same_arrays_different_seed_differs(small, tmp_path):
    root, coco, _ = small
    ref = _key_arrays(root, coco)
    r2, c2, _ = _gen(tmp_path / "again", seed=0)
    again = _key_arrays(r2, c2)
    for k in ref:
        assert ref[k].dtype == again[k].dtype and np.array_equal(ref[k], again[k]), k
    assert json.loads((root / "synthetic_planted.json").read_text()) == json.loads(
        (r2 / "synthetic_planted.json").read_text()
    )
    r3, c3, _ = _gen(tmp_path / "other", seed=1)
    other = _key_arrays(r3, c3)
    for k in ("masterordering", "imgBrick", "betas1", "betas2", "captions"):
        assert not np.array_equal(ref[k], other[k]), k


def test_every_layout_key_exists_and_nothing_half_written(small):
    root, coco, summary = small
    sessions = range(1, SMALL["sessions"] + 1)
    keys = layout.shared_keys() + [layout.stim_info_key("pkl")] + [layout.fsaverage_ctab_key(n) for n in layout.ROI_NAMES]
    for s in SMALL["subjects"]:
        keys += layout.subject_keys(s, sessions, "nii.gz") + layout.subject_keys(s, sessions, "hdf5")
    missing = [k for k in keys if not (root / k).is_file()]
    assert not missing
    for f in layout.COCO_CAPTION_FILES:
        assert (coco / f).is_file()
    assert (root / "synthetic_planted.json").is_file()
    leftovers = [p for p in list(root.rglob("*")) + list(coco.rglob("*")) if ".tmp" in p.name]
    assert not leftovers
    assert all(Path(p).is_file() for p in summary["files"])
    # subjects not asked for get no subject files
    assert not (root / layout.responses_key(5)).exists()


def test_failure_leaves_no_final_or_temporary_file(tmp_path, monkeypatch):
    from brainrecon.synth import images

    calls = {"n": 0}
    real = images.draw_scene

    def flaky(scene, size):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return real(scene, size)

    monkeypatch.setattr(images, "draw_scene", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        _gen(tmp_path, seed=0)
    stim_dir = (tmp_path / "nsd" / layout.stimuli_key()).parent
    assert stim_dir.is_dir() and list(stim_dir.iterdir()) == []


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(n_images=10, n_shared=10), "n_shared"),
        (dict(n_images=10, n_shared=12), "n_shared"),
        (dict(n_images=7, n_reps=3, sessions=2), "integer"),
        (dict(subjects=(9,)), "subject"),
        (dict(snr=0.0), "snr"),
        (dict(noise_fraction=1.5), "noise_fraction"),
        (dict(shapes={1: (10, 10)}), "shape"),
    ],
)
def test_impossible_settings_raise_clear_errors(tmp_path, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _gen(tmp_path, **kw)
    assert not (tmp_path / "nsd").exists()


# --------------------------------------------------------------------------- design + stim info


def test_expdesign_shapes_ranges_and_conventions(small):
    root, _, summary = small
    d = _design(root)
    n_img, n_sh, reps, ses = SMALL["n_images"], SMALL["n_shared"], SMALL["n_reps"], SMALL["sessions"]
    tps = n_img * reps // ses
    mo, sim, shx = d["masterordering"], d["subjectim"], d["sharedix"]
    for k in ("masterordering", "subjectim", "sharedix", "stimpattern", "basiccnt"):
        assert d[k].dtype == np.float64, k
    assert mo.shape == (1, ses * tps) and sim.shape == (8, n_img) and shx.shape == (1, n_sh)
    assert d["stimpattern"].ndim == 3 and d["stimpattern"].shape[0] == ses
    assert set(np.unique(d["stimpattern"])) <= {0.0, 1.0}
    assert (d["stimpattern"].sum(axis=(1, 2)) == tps).all()
    assert d["basiccnt"].shape == (3, ses)
    # basiccnt[p-1, q]: distinct images shown p times in session q -> sum_p p*count = trials
    assert ((np.arange(1, 4)[:, None] * d["basiccnt"]).sum(0) == tps).all()
    counts = np.bincount(mo.ravel().astype(int), minlength=n_img + 1)
    assert counts[0] == 0 and (counts[1:] == reps).all()  # 1-based, every image n_reps times
    n_stim = summary["n_stimuli"]
    assert sim.min() >= 1 and sim.max() <= n_stim
    assert (sim[:, :n_sh] == sim[0, :n_sh]).all()
    assert sorted(sim[0, :n_sh]) == sorted(shx.ravel())
    for row in sim:
        assert len(set(row)) == n_img
    u1, u2 = set(sim[0, n_sh:]), set(sim[1, n_sh:])
    assert not (u1 & u2) and not (u1 & set(shx.ravel()))
    # shared trials <=> m <= n_shared <=> 73k-id in sharedix, for every subject row
    for s in (1, 2):
        tt = _trial_table(root, s)
        assert np.array_equal(tt["m"] <= n_sh, np.isin(tt["nsd"] + 1, shx.ravel()))


def test_stim_info_consistent_with_design(small):
    root, _, summary = small
    d = _design(root)
    n_stim = summary["n_stimuli"]
    df = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0)
    header = (root / layout.stim_info_key("csv")).read_text().splitlines()[0]
    assert header.startswith(",cocoId,cocoSplit,cropBox,loss,nsdId,flagged,BOLD5000,shared1000,subject1")
    assert len(df) == n_stim and (df["nsdId"].to_numpy() == np.arange(n_stim)).all()
    assert (df.index.to_numpy() == np.arange(n_stim)).all()
    assert set(df["cocoSplit"]) == {"train2017", "val2017"} and df["cocoId"].is_unique
    for box in df["cropBox"]:
        t = ast.literal_eval(box)
        assert len(t) == 4 and all(0 <= v < 1 for v in t)
    assert df["shared1000"].dtype == bool
    assert np.array_equal(df["shared1000"].to_numpy(), np.isin(np.arange(n_stim) + 1, d["sharedix"].ravel()))
    mo = d["masterordering"].ravel().astype(int)
    for s in range(1, 9):
        assert np.array_equal(df[f"subject{s}"].to_numpy(), np.isin(np.arange(n_stim) + 1, d["subjectim"][s - 1]))
        # independent SPEC §1 arithmetic: global trial t (0-based) shows nsdId subjectim[s-1, m-1] - 1
        expect = {}
        for t, m in enumerate(mo):
            expect.setdefault(int(d["subjectim"][s - 1, m - 1]) - 1, []).append(t + 1)
        for n in range(n_stim):
            got = [int(df.at[n, f"subject{s}_rep{k}"]) for k in range(3)]
            assert got == (expect.get(n, []) + [0, 0, 0])[:3], (s, n)
    pkl = pd.read_pickle(root / layout.stim_info_key("pkl"))
    pd.testing.assert_frame_equal(pkl, df, check_dtype=False, check_column_type=False)


class _Pandas2Unpickler(pickle.Unpickler):
    """What an older pandas (no ``str`` dtype, no string arrays) can resolve: refuse every string-dtype class."""

    def find_class(self, module, name):
        if "string" in module.lower() or "arrow" in module.lower() or name in ("StringDtype", "ArrowDtype"):
            raise pickle.UnpicklingError(f"pandas-3 only class {module}.{name}")
        return super().find_class(module, name)


def test_stim_info_pickle_has_plain_object_columns(small):
    """The pickle opens without pandas' string dtype (real NSD's pickle predates it; the reference repos
    run pandas 1/2) and holds object text columns and labels."""
    root, _, _ = small
    with open(root / layout.stim_info_key("pkl"), "rb") as fh:
        pkl = _Pandas2Unpickler(fh).load()
    assert pkl["cocoSplit"].dtype == object and pkl["cropBox"].dtype == object
    assert pkl.columns.dtype == object and all(type(c) is str for c in pkl.columns)
    assert all(type(v) is str for v in pkl["cropBox"])
    df = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0)
    pd.testing.assert_frame_equal(pkl, df, check_dtype=False, check_column_type=False)


def test_responses_one_row_per_trial(small):
    root, _, _ = small
    d = _design(root)
    runs = d["stimpattern"].sum(axis=2)  # (sessions, R) stimulus trials per run
    for s in SMALL["subjects"]:
        r = pd.read_csv(root / layout.responses_key(s), sep="\t")
        assert list(r.columns) == (
            "SUBJECT SESSION RUN TRIAL 73KID 10KID TIME ISOLD ISCORRECT RT CHANGEMIND MEMORYRECENT "
            "MEMORYFIRST ISOLDCURRENT ISCORRECTCURRENT TOTAL1 TOTAL2 BUTTON MISSINGDATA"
        ).split()
        tt = _trial_table(root, s)
        assert len(r) == len(tt) and (r["SUBJECT"] == s).all()
        assert np.array_equal(r["SESSION"], tt["session"]) and np.array_equal(r["10KID"], tt["m"])
        assert np.array_equal(r["73KID"], tt["nsd"] + 1)
        per_run = r.groupby(["SESSION", "RUN"])["TRIAL"].max().unstack().to_numpy()
        assert np.array_equal(per_run, runs)
        first = ~tt["m"].duplicated()
        assert np.array_equal(r["ISOLD"].to_numpy(), (~first).astype(int).to_numpy())
        assert r.loc[first.to_numpy(), "MEMORYFIRST"].isna().all()


# --------------------------------------------------------------------------- stimuli + captions


def test_stimuli_and_captions(small):
    root, coco, summary = small
    P = load_planted(root)
    S = SMALL["image_size"]
    df = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0)
    with h5py.File(root / layout.stimuli_key()) as f:
        ds = f["imgBrick"]
        assert ds.shape == (summary["n_stimuli"], S, S, 3) and ds.dtype == np.uint8
        assert ds.chunks == (1, S, S, 3) and ds.compression == "gzip"
        imgs = ds[:]
    assert len({im.tobytes() for im in imgs}) == len(imgs)
    from brainrecon.synth.images import OBJECT_COLOURS

    for n, scene in enumerate(P["images"]["scene"]):
        top = scene["objects"][-1]  # drawn last: fully visible
        assert (imgs[n] == np.array(OBJECT_COLOURS[top["colour"]], np.uint8)).all(-1).sum() > 10
    docs = {f: json.loads((coco / f).read_text()) for f in layout.COCO_CAPTION_FILES}
    by_split = {}
    for f, doc in docs.items():
        assert {"info", "licenses", "images", "annotations"} <= set(doc)
        split = "train2017" if "train" in f else "val2017"
        by_split[split] = {im["id"] for im in doc["images"]}
        assert all({"id", "file_name", "width", "height"} <= set(im) for im in doc["images"])
    caps = {}
    for doc in docs.values():
        for a in doc["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"])
    ann_ids = [a["id"] for doc in docs.values() for a in doc["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for n, row in df.iterrows():
        assert row["cocoId"] in by_split[row["cocoSplit"]]
        c = caps[row["cocoId"]]
        assert len(c) >= 5
        drawn = P["images"]["categories"][n]
        for cat in CATEGORIES:
            mentioned = [re.search(rf"\b{cat}\b", x) is not None for x in c]
            assert all(mentioned) if cat in drawn else not any(mentioned), (n, cat, c)


# --------------------------------------------------------------------------- volumes


def test_volumes_rois_ctabs_anatomy(small):
    root, _, _ = small
    tps = SMALL["n_images"] * SMALL["n_reps"] // SMALL["sessions"]
    shapes = set()
    for s in SMALL["subjects"]:
        shape = DEFAULT_SHAPES[s]
        shapes.add(shape)
        mask_img = nib.load(root / layout.anatomy_key(s, "brainmask"))
        brain = np.asanyarray(mask_img.dataobj) == 1
        assert set(np.unique(np.asanyarray(mask_img.dataobj))) == {0, 1}
        for ses in range(1, SMALL["sessions"] + 1):
            img = nib.load(root / layout.betas_key(s, ses))
            assert img.get_data_dtype() == np.int16
            b = np.asanyarray(img.dataobj)
            assert b.dtype == np.int16 and b.shape == (*shape, tps)
            assert np.allclose(img.affine[:3, :3], np.diag([1.8] * 3))
            assert np.allclose(nib.affines.voxel_sizes(img.affine), 1.8)
            assert (b[~brain] == 0).all() and (b[brain] != 0).mean() > 0.95
            with h5py.File(root / layout.betas_key(s, ses, "hdf5")) as f:
                h = f["betas"][:]
            assert h.dtype == np.int16 and h.shape == (tps, shape[2], shape[1], shape[0])
            assert np.array_equal(h, b.transpose(3, 2, 1, 0))
        rois = {n: _nii(root, layout.roi_key(s, n)) for n in layout.ROI_NAMES}
        ng = rois["nsdgeneral"] == 1
        st = rois["streams"]
        for name, r in rois.items():
            assert r.shape == shape
            assert np.array_equal(r == -1, ~brain), name
            labels = set(np.unique(r[r > 0]).astype(int))
            assert labels and labels <= set(layout.LABEL_TABLES[name]), name
            ctab = (root / layout.ctab_key(s, name)).read_text().split("\n")
            table = {int(x.split()[0]): x.split()[1] for x in ctab if x.strip()}
            table.pop(0, None)
            assert table == layout.LABEL_TABLES[name]
            # the fsaverage copy, read as tknapen/nsd_access does (space-delimited, value -> name)
            mapp = pd.read_csv(root / layout.fsaverage_ctab_key(name), delimiter=" ", header=None, index_col=0)
            assert {int(k): v for k, v in mapp.to_dict()[1].items() if int(k) != 0} == layout.LABEL_TABLES[name]
        assert {1, 5} <= set(np.unique(st[ng]).astype(int))
        # the higher streams reach beyond nsdgeneral (an anterior rim), early visual cortex does not
        assert (st[~ng] > 0).any() and set(np.unique(st[~ng & (st > 0)])) <= {5, 6, 7}
        assert ng[st == 1].all()
        assert ng[brain].mean() < 0.8 and ng.sum() > 50
        early = st == 1
        assert (early[rois["prf-visualrois"] > 0]).all() and (early[rois["prf-eccrois"] > 0]).all()
        ecc = rois["prf-eccrois"]
        assert set(np.unique(ecc[ecc > 0]).astype(int)) == {1, 2, 3, 4, 5}  # every band, as in real NSD
        for name in ("floc-faces", "floc-words", "floc-places", "floc-bodies"):
            assert np.isin(st[rois[name] > 0], [5, 6]).all()
        mean = nib.load(root / layout.anatomy_key(s, "mean"))
        t1 = nib.load(root / layout.anatomy_key(s, "T1_to_func1pt8mm"))
        assert mean.get_data_dtype() == np.float32 and mean.shape == shape and t1.shape == shape
    assert len(shapes) == len(SMALL["subjects"])


def test_shapes_override(tmp_path):
    root, _, summary = _gen(tmp_path, subjects=(7,), n_images=8, n_shared=2, n_reps=1, image_size=32,
                            shapes={7: (9, 11, 8)})
    b = np.asanyarray(nib.load(root / layout.betas_key(7, 1)).dataobj)
    assert b.shape == (9, 11, 8, 4)
    ijk, group, ids, drive = planted_drive(root, 7)
    assert ijk.max(0).tolist() <= [8, 10, 7] and drive.shape == (8, len(ijk))


# --------------------------------------------------------------------------- planted signal


def test_noise_free_betas_equal_planted_drive(tmp_path):
    """snr = inf: betas are exactly rint(300 * drive) of the image shown on each trial."""
    root, _, _ = _gen(tmp_path, subjects=(2,), snr=float("inf"), seed=5)
    ijk, group, ids, drive = planted_drive(root, 2)
    assert set(group) == {"early", "ventral", "noise"}
    tt = _trial_table(root, 2)
    rows = np.searchsorted(ids, tt["nsd"])
    assert np.array_equal(ids[rows], tt["nsd"])
    for ses in (1, 2):
        b = _nii(root, layout.betas_key(2, ses))
        sel = tt["session"].to_numpy() == ses
        vols = tt["volume"].to_numpy()[sel]
        got = b[ijk[:, 0], ijk[:, 1], ijk[:, 2]][:, vols].T
        assert np.array_equal(got, np.rint(300 * drive[rows[sel]]).astype(np.int16))
    assert (drive[:, group == "noise"] == 0).all()


def _betas_by_trial(root, subject, ijk):
    tt = _trial_table(root, subject)
    out = np.zeros((len(tt), len(ijk)))
    for ses in sorted(tt["session"].unique()):
        b = _nii(root, layout.betas_key(subject, ses))
        sel = (tt["session"] == ses).to_numpy()
        out[sel] = b[ijk[:, 0], ijk[:, 1], ijk[:, 2]][:, tt["volume"].to_numpy()[sel]].T
    return tt, out / 300.0


def _colcorr(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def test_planted_signal_in_noisy_betas(big):
    root, _, _ = big
    P = load_planted(root)
    ijk, group, ids, drive = planted_drive(root, 5)
    rois = {n: _nii(root, layout.roi_key(5, n)) for n in ("nsdgeneral", "streams")}
    st = rois["streams"][tuple(ijk.T)]
    visual = (rois["nsdgeneral"] == 1) | (rois["streams"] > 0)  # planted: nsdgeneral and the whole streams
    assert visual[tuple(ijk.T)].all()
    outside = rois["nsdgeneral"][tuple(ijk.T)] != 1
    assert ((group == "ventral") & outside).any()  # the streams' rim beyond nsdgeneral carries signal too
    assert (st[group == "early"] == 1).all() and (st[group == "ventral"] == 5).all()
    n_vis = int(visual.sum())
    assert (group == "noise").sum() == round(0.2 * n_vis)
    assert P["per_subject"]["5"]["counts"]["noise"] == round(0.2 * n_vis)

    tt, y = _betas_by_trial(root, 5, ijk)
    d_trial = drive[np.searchsorted(ids, tt["nsd"])]
    for g in ("early", "ventral"):
        sel = group == g
        # SNR definition: drive std over the subject's images = 1 psc, noise std = 1 / snr
        assert np.allclose(drive[:, sel].std(0), 1.0)
        r = _colcorr(y[:, sel], d_trial[:, sel])
        assert np.median(r) > 0.8 and r.min() > 0.6, (g, np.median(r), r.min())
        resid = (y[:, sel] - d_trial[:, sel]).std(0)
        assert abs(np.median(resid) - 0.5) < 0.05
    noise = group == "noise"
    assert (drive[:, noise] == 0).all()
    mean_drive = d_trial[:, group == "early"].mean(1, keepdims=True)
    r_noise = _colcorr(y[:, noise], np.repeat(mean_drive, noise.sum(), 1))
    assert abs(np.median(r_noise)) < 0.1

    # repetition reliability: independent noise per repetition, signal only where planted
    first = ~tt["nsd"].duplicated().to_numpy()
    rep0 = pd.Series(np.arange(len(tt))[first], index=tt["nsd"][first])
    rep1 = pd.Series(np.arange(len(tt))[~first], index=tt["nsd"][~first])
    common = rep0.index.intersection(rep1.index)
    a, b = y[rep0[common].to_numpy()], y[rep1[common].to_numpy()]
    rel = _colcorr(a, b)
    for g in ("early", "ventral"):
        assert 0.6 < np.median(rel[group == g]) < 0.95, g  # expected snr^2/(1+snr^2) = 0.8
    assert abs(np.median(rel[noise])) < 0.1


def _cv_r2(X, Y):
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-6, 3, 10)), X, Y, cv=5)
    return 1 - ((Y - pred) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)


def test_early_and_ventral_drives_are_distinguishable(big):
    root, coco, _ = big
    ijk, group, ids, drive = planted_drive(root, 5)
    # low-level content computed here from the stimuli: 8x8 block means of RGB / 255
    with h5py.File(root / layout.stimuli_key()) as f:
        imgs = f["imgBrick"][np.sort(ids)].astype(float) / 255
    S = imgs.shape[1]
    e = (np.arange(9) * S) // 8
    low = np.stack(
        [imgs[:, e[i] : e[i + 1], e[j] : e[j + 1]].mean(axis=(1, 2)) for i in range(8) for j in range(8)], 1
    ).reshape(len(ids), -1)
    # semantics from the captions: which category words describe the image
    df = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0)
    text = {}
    for f in layout.COCO_CAPTION_FILES:
        for a in json.loads((coco / f).read_text())["annotations"]:
            text[a["image_id"]] = text.get(a["image_id"], "") + " " + a["caption"]
    cats = np.array(
        [[bool(re.search(rf"\b{c}\b", text[df.at[n, "cocoId"]])) for c in CATEGORIES] for n in ids], float
    )
    assert len(ids) > low.shape[1] + 10  # more images than low-level features: a real test
    early, ventral = drive[:, group == "early"], drive[:, group == "ventral"]
    assert np.median(_cv_r2(low, early)) > 0.95
    assert np.median(_cv_r2(cats, early)) < 0.15
    assert np.median(_cv_r2(cats, ventral)) > 0.95
    assert np.median(_cv_r2(low, ventral)) < 0.3
