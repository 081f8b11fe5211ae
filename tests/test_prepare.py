"""Per-subject preparation on the synthetic NSD: shapes, split, averaging, voxel/ROI mapping,
normalisations, planted-signal recovery, format equivalence, bad inputs, stimulus tables."""

from __future__ import annotations

import shutil

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from brainrecon.nsd import layout
from brainrecon.nsd.plan import PrepareSettings
from brainrecon.nsd.prepare import (
    captions_table,
    prepare_subject,
    stimulus_index,
    write_captions_table,
    write_stimulus_index,
)
from brainrecon.nsd.readers import (
    ImageBrick,
    NSDFileError,
    load_expdesign,
    load_session_betas,
    read_ctab,
)
from brainrecon.nsd.trials import trial_table

SUBJECT = 5
SESSIONS = 2


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from brainrecon.synth import SynthSettings, generate

    root = tmp_path_factory.mktemp("nsd")
    coco = tmp_path_factory.mktemp("coco")
    generate(root, coco, SynthSettings.build(subjects=(1, SUBJECT), sessions=SESSIONS, n_images=40, n_shared=8, n_reps=3, snr=2.0, noise_fraction=0.2, image_size=32, seed=0), progress=False)
    return root, coco


def raw_paths(root, subject=SUBJECT, fmt="nii.gz", sessions=SESSIONS):
    """The raw files prepare_subject reads (the keys of brainrecon.nsd.plan.subject_raw_inputs)."""
    return dict(
        expdesign=root / layout.expdesign_key(),
        betas=[root / layout.betas_key(subject, s, fmt) for s in range(1, sessions + 1)],
        rois={n: root / layout.roi_key(subject, n) for n in layout.ROI_NAMES},
        ctabs={n: root / layout.ctab_key(subject, n) for n in layout.ROI_NAMES},
        brainmask=root / layout.anatomy_key(subject, "brainmask"),
    )


def prepare(paths, out, progress=False, block_bytes=None, mem_block_mb=256.0, **settings):
    """prepare_subject of SUBJECT with settings over the schema's defaults."""
    kw = {"block_bytes": block_bytes} if block_bytes is not None else {}
    return prepare_subject(paths, out, SUBJECT, PrepareSettings.build(**settings), progress=progress,
                           mem_block_mb=mem_block_mb, **kw)


def run_prepare(root, out, fmt="nii.gz", **kw):
    return prepare(raw_paths(root, fmt=fmt), out, **kw)


def read_all(path) -> dict:
    """Every dataset by name, plus ``attrs`` (file) and ``dsattrs`` ({dataset: attrs})."""
    out, dsattrs = {}, {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]
            if obj.attrs:
                dsattrs[name] = dict(obj.attrs)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        out["attrs"] = dict(f.attrs)
    out["dsattrs"] = dsattrs
    return out


META = ("attrs", "dsattrs")


@pytest.fixture(scope="module")
def prepared(synth, tmp_path_factory):
    """normalise -> contents of the prepared file (nii.gz input)."""
    root, _ = synth
    d = tmp_path_factory.mktemp("prep")
    return {
        norm: read_all(run_prepare(root, d / f"{norm}.h5", normalise=norm))
        for norm in ("none", "train_zscore", "session_zscore")
    }


# --------------------------------------------------------------------------- structure


def test_shapes_and_split(synth, prepared):
    root, _ = synth
    p = prepared["none"]
    design = load_expdesign(root / layout.expdesign_key())
    V = p["voxels/ijk"].shape[0]
    # expected images, derived from the raw design without the trial table
    n_trials = int((design["stimpattern"][:SESSIONS] != 0).sum())
    m = design["masterordering"][:n_trials]
    ids = design["subjectim"][SUBJECT - 1, m - 1] - 1
    shared_ids = np.intersect1d(ids, design["sharedix"] - 1)
    assert p["test/nsd_ids"].tolist() == shared_ids.tolist()
    assert len(shared_ids) == 8
    assert p["train/nsd_ids"].tolist() == np.setdiff1d(ids, shared_ids).tolist()
    assert set(p["train/nsd_ids"]).isdisjoint(p["test/nsd_ids"])
    assert p["train/betas"].shape == (32, V) and p["test/betas"].shape == (8, V)
    assert p["train/betas"].dtype == np.float32
    assert (p["train/n_reps"] == 3).all() and (p["test/n_reps"] == 3).all()
    assert p["trials/betas"].shape == (96, V)
    assert set(p["trials/nsd_ids"]) == set(p["train/nsd_ids"])
    assert p["test_trials/betas"].shape == (24, V)
    assert sorted(set(p["trials/session"])) == [1, 2]
    a = p["attrs"]
    assert a["subject"] == SUBJECT and a["voxels"] == "nsdgeneral" and a["normalise"] == "none"
    assert a["sessions"].tolist() == [1, 2] and a["trials_per_session"].tolist() == [60, 60]
    assert tuple(a["volume_shape"]) == nib.load(root / layout.roi_key(SUBJECT, "nsdgeneral")).shape
    np.testing.assert_allclose(a["affine"], nib.load(root / layout.roi_key(SUBJECT, "nsdgeneral")).affine)


def test_voxels_map_back_to_volume(synth, prepared):
    """betas[trial, v] == raw volume[ijk_v, k] / 300, and every voxel is in nsdgeneral."""
    root, _ = synth
    p = prepared["none"]
    ijk = p["voxels/ijk"]
    gen = np.asanyarray(nib.load(root / layout.roi_key(SUBJECT, "nsdgeneral")).dataobj)
    assert (gen[tuple(ijk.T)] > 0).all()
    assert len(ijk) == int((gen > 0).sum())
    for s in (1, 2):
        vol = np.asanyarray(nib.load(root / layout.betas_key(SUBJECT, s, "nii.gz")).dataobj)
        for grp in ("trials", "test_trials"):
            rows = np.flatnonzero(p[f"{grp}/session"] == s)
            ks = p[f"{grp}/k"][rows]
            expect = vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]][:, ks].T / 300.0
            np.testing.assert_allclose(p[f"{grp}/betas"][rows], expect, rtol=1e-6, atol=1e-7)
            # the recorded image of each trial is the one the design says
    table = trial_table(load_expdesign(root / layout.expdesign_key()), SUBJECT, SESSIONS)
    tr = table[~table["shared"]]
    assert p["trials/nsd_ids"].tolist() == tr["nsd_id"].tolist()
    assert p["trials/k"].tolist() == tr["k"].tolist()


def test_roi_labels_match_volumes(synth, prepared):
    root, _ = synth
    p = prepared["none"]
    ijk = p["voxels/ijk"]
    for name in layout.ROI_NAMES:
        vol = np.asanyarray(nib.load(root / layout.roi_key(SUBJECT, name)).dataobj)
        np.testing.assert_array_equal(p[f"rois/{name}"], vol[tuple(ijk.T)])
    # label names come from the ctab files
    for name in layout.ROI_NAMES:
        at = p["dsattrs"][f"rois/{name}"]
        names = dict(zip(at["label_values"].tolist(), [str(x) for x in at["label_names"]]))
        for v, n in layout.LABEL_TABLES[name].items():
            assert names[v] == n, (name, v)


# --------------------------------------------------------------------------- averaging / normalisation


@pytest.mark.parametrize("norm", ["none", "train_zscore", "session_zscore"])
def test_averages_equal_mean_of_trials(prepared, norm):
    p = prepared[norm]
    for split, grp in (("train", "trials"), ("test", "test_trials")):
        for i, nid in enumerate(p[f"{split}/nsd_ids"]):
            rows = p[f"{grp}/nsd_ids"] == nid
            assert rows.sum() == p[f"{split}/n_reps"][i]
            np.testing.assert_allclose(p[f"{split}/betas"][i], p[f"{grp}/betas"][rows].mean(0), atol=2e-5)


def test_train_zscore_uses_train_average_statistics(prepared):
    raw, z = prepared["none"], prepared["train_zscore"]
    mu = raw["train/betas"].astype(np.float64).mean(0)
    sd = raw["train/betas"].astype(np.float64).std(0)
    np.testing.assert_allclose(z["norm/mean"], mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(z["norm/std"], sd, rtol=1e-5)
    np.testing.assert_allclose(z["train/betas"].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z["train/betas"].std(0), 1, atol=1e-4)
    # test and single trials normalised with the *train* statistics
    np.testing.assert_allclose(z["test/betas"], (raw["test/betas"] - mu) / sd, atol=1e-4)
    np.testing.assert_allclose(z["trials/betas"], (raw["trials/betas"] - mu) / sd, atol=1e-4)


def test_session_zscore_per_session(prepared):
    raw, z = prepared["none"], prepared["session_zscore"]
    for s in (1, 2):
        parts_z, parts_r = [], []
        for grp in ("trials", "test_trials"):
            rows = z[f"{grp}/session"] == s
            parts_z.append(z[f"{grp}/betas"][rows])
            parts_r.append(raw[f"{grp}/betas"][rows])
        allz, allr = np.concatenate(parts_z), np.concatenate(parts_r).astype(np.float64)
        np.testing.assert_allclose(allz.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(allz.std(0), 1, atol=1e-4)
        np.testing.assert_allclose(allz, (allr - allr.mean(0)) / allr.std(0), atol=1e-4)
        np.testing.assert_allclose(z["norm/session_mean"][s - 1], allr.mean(0), atol=1e-6)


def test_zero_std_voxel_is_guarded(synth, tmp_path):
    """A voxel constant over every trial gets std 1 (zeros after centring), never NaN."""
    root, _ = synth
    paths = raw_paths(root, fmt="hdf5")
    gen = np.asanyarray(nib.load(paths["rois"]["nsdgeneral"]).dataobj)
    x, y, z = np.argwhere(gen > 0)[0]
    new = []
    for p in paths["betas"]:
        q = tmp_path / p.name
        shutil.copy(p, q)
        with h5py.File(q, "r+") as f:
            f["betas"][:, z, y, x] = 77
        new.append(q)
    paths["betas"] = new
    for norm in ("train_zscore", "session_zscore"):
        out = prepare(paths, tmp_path / f"{norm}.h5", normalise=norm)
        d = read_all(out)
        v = int(np.flatnonzero((d["voxels/ijk"] == [x, y, z]).all(1))[0])
        for k in ("train/betas", "test/betas", "trials/betas"):
            assert np.isfinite(d[k]).all()
            np.testing.assert_allclose(d[k][:, v], 0, atol=1e-6)


def test_blocked_streaming_matches_one_block(synth, prepared, tmp_path):
    """Tiny read blocks (1 trial) and a tiny voxel-block budget give the same file."""
    root, _ = synth
    out = run_prepare(root, tmp_path / "b.h5", normalise="train_zscore", block_bytes=1, mem_block_mb=1e-6)
    d = read_all(out)
    for k, v in prepared["train_zscore"].items():
        if k not in META:
            np.testing.assert_allclose(d[k], v, atol=1e-6, err_msg=k)


def test_load_session_betas_formats_agree(synth):
    root, _ = synth
    gen = np.asanyarray(nib.load(root / layout.roi_key(SUBJECT, "nsdgeneral")).dataobj) > 0
    a = load_session_betas(root / layout.betas_key(SUBJECT, 2, "nii.gz"), gen, block_bytes=5000)
    b = load_session_betas(root / layout.betas_key(SUBJECT, 2, "hdf5"), np.argwhere(gen))
    assert a.dtype == np.int16 and a.shape == (60, gen.sum())
    np.testing.assert_array_equal(a, b)


def test_both_input_formats_identical(synth, prepared, tmp_path):
    root, _ = synth
    d = read_all(run_prepare(root, tmp_path / "h.h5", fmt="hdf5", normalise="train_zscore"))
    ref = prepared["train_zscore"]
    assert set(d) == set(ref)
    for k in ref:
        if k == "attrs":
            assert set(d[k]) == set(ref[k])
            for a in ref[k]:
                np.testing.assert_array_equal(d[k][a], ref[k][a], err_msg=a)
        elif k == "dsattrs":
            assert set(d[k]) == set(ref[k])
            for ds in ref[k]:
                for a in ref[k][ds]:
                    np.testing.assert_array_equal(d[k][ds][a], ref[k][ds][a], err_msg=f"{ds}:{a}")
        else:
            np.testing.assert_array_equal(d[k], ref[k], err_msg=k)


# --------------------------------------------------------------------------- planted signal


def test_planted_signal_recovered(synth, prepared):
    from brainrecon.synth import planted_drive

    root, _ = synth
    p = prepared["train_zscore"]
    ijk0, group, ids, drive = planted_drive(root, SUBJECT)
    lut = {tuple(v): i for i, v in enumerate(p["voxels/ijk"].tolist())}
    inside = np.array([tuple(v) in lut for v in ijk0.tolist()])  # planted voxels of this (nsdgeneral) set
    assert 0 < inside.sum() < len(inside)  # the streams' rim beyond nsdgeneral is planted too
    ijk0, group, drive = ijk0[inside], group[inside], drive[:, inside]
    cols = np.array([lut[tuple(v)] for v in ijk0.tolist()])
    rows = np.searchsorted(ids, p["test/nsd_ids"])
    assert (ids[rows] == p["test/nsd_ids"]).all()

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    for g in ("early", "ventral"):
        sel = np.flatnonzero(group == g)
        assert sel.size > 10
        r = np.array([corr(p["test/betas"][:, cols[j]], drive[rows, j]) for j in sel])
        assert np.median(r) > 0.7, (g, np.median(r))
        assert np.mean(r > 0.5) > 0.8, (g, r)
    # noise voxels: no relation to any planted drive (all 40 images; each noise voxel is
    # paired with planted voxels' drives, which the planted voxels themselves do track)
    all_ids = np.concatenate([p["train/nsd_ids"], p["test/nsd_ids"]])
    all_b = np.concatenate([p["train/betas"], p["test/betas"]])
    arow = np.searchsorted(ids, all_ids)
    noise = np.flatnonzero(group == "noise")
    planted = np.flatnonzero(np.isin(group, ["early", "ventral"]))
    assert noise.size > 10
    rn = np.array([[corr(all_b[:, cols[i]], drive[arow, j]) for j in planted[::7]] for i in noise])
    assert np.abs(rn).mean() < 0.25, np.abs(rn).mean()
    rs = np.array([corr(all_b[:, cols[j]], drive[arow, j]) for j in planted])
    assert rs.mean() > 0.7


# --------------------------------------------------------------------------- bad inputs


def _no_leftovers(d):
    return [p.name for p in d.iterdir()] == []


def test_corrupt_nifti_names_file_and_leaves_nothing(synth, tmp_path):
    root, _ = synth
    paths = raw_paths(root)
    good = paths["betas"][1]
    bad = tmp_path / "in" / good.name
    bad.parent.mkdir()
    raw = good.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])  # truncated gzip stream
    paths["betas"] = [paths["betas"][0], bad]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(NSDFileError) as e:
        prepare(paths, out_dir / "x.h5")
    assert str(bad) in str(e.value)
    assert _no_leftovers(out_dir)

    # garbage bytes in the middle of the compressed stream
    data = bytearray(raw)
    mid = len(data) // 2
    data[mid : mid + 200] = bytes(200)
    bad.write_bytes(bytes(data))
    with pytest.raises(NSDFileError) as e:
        prepare(paths, out_dir / "x.h5")
    assert str(bad) in str(e.value)
    assert _no_leftovers(out_dir)

    # not gzip at all
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(NSDFileError, match=str(bad)):
        prepare(paths, out_dir / "x.h5")
    assert _no_leftovers(out_dir)


def test_wrong_number_of_trials(synth, tmp_path):
    root, _ = synth
    paths = raw_paths(root)
    img = nib.load(paths["betas"][1])
    short = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., :59], img.affine)
    bad = tmp_path / "betas_session02.nii.gz"
    nib.save(short, bad)
    paths["betas"][1] = bad
    with pytest.raises(NSDFileError) as e:
        prepare(paths, tmp_path / "out" / "x.h5")
    assert str(bad) in str(e.value) and "59" in str(e.value) and "60" in str(e.value)
    assert not (tmp_path / "out" / "x.h5").exists()
    assert not list((tmp_path / "out").glob("*"))


def test_expdesign_missing_key(synth, tmp_path):
    root, _ = synth
    paths = raw_paths(root)
    mat = scipy.io.loadmat(paths["expdesign"])
    mat = {k: v for k, v in mat.items() if not k.startswith("__") and k != "stimpattern"}
    bad = tmp_path / "nsd_expdesign.mat"
    scipy.io.savemat(bad, mat)
    paths["expdesign"] = bad
    with pytest.raises(NSDFileError) as e:
        prepare(paths, tmp_path / "out" / "x.h5")
    assert str(bad) in str(e.value) and "'stimpattern'" in str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*"))


def test_bad_arguments(synth, tmp_path):
    root, _ = synth
    with pytest.raises(ValueError, match="normalise"):
        run_prepare(root, tmp_path / "x.h5", normalise="zscore")
    with pytest.raises(ValueError, match="voxels"):
        run_prepare(root, tmp_path / "x.h5", voxels="cortex")
    with pytest.raises(ValueError, match="2 betas files given for 3 sessions"):
        run_prepare(root, tmp_path / "x.h5", sessions=3)
    assert not (tmp_path / "x.h5").exists()


def test_brainmask_voxel_set(synth, prepared, tmp_path):
    root, _ = synth
    d = read_all(run_prepare(root, tmp_path / "bm.h5", voxels="brainmask", normalise="none"))
    bm = np.asanyarray(nib.load(root / layout.anatomy_key(SUBJECT, "brainmask")).dataobj)
    assert len(d["voxels/ijk"]) == int((bm > 0).sum())
    assert d["attrs"]["voxels"] == "brainmask"
    # nsdgeneral voxels are a subset and have the same betas
    ref = prepared["none"]
    lut = {tuple(v): i for i, v in enumerate(d["voxels/ijk"].tolist())}
    cols = [lut[tuple(v)] for v in ref["voxels/ijk"].tolist()]
    np.testing.assert_array_equal(d["train/betas"][:, cols], ref["train/betas"])


def test_streams_voxel_set_is_the_whole_volume_streams(synth, prepared, tmp_path):
    """voxels="streams": every voxel with a streams label, also outside nsdgeneral (Takagi's make_subjmri.py
    takes the labels over the whole volume); rois/nsdgeneral tells which are inside."""
    root, _ = synth
    d = read_all(run_prepare(root, tmp_path / "st.h5", voxels="streams", normalise="none"))
    st = np.asanyarray(nib.load(root / layout.roi_key(SUBJECT, "streams")).dataobj)
    ng = np.asanyarray(nib.load(root / layout.roi_key(SUBJECT, "nsdgeneral")).dataobj)
    np.testing.assert_array_equal(d["voxels/ijk"], np.argwhere(st > 0))
    assert d["attrs"]["voxels"] == "streams"
    np.testing.assert_array_equal(d["rois/nsdgeneral"], ng[tuple(np.argwhere(st > 0).T)])
    assert (d["rois/nsdgeneral"] == 0).sum() > 0 and (d["rois/nsdgeneral"] == 1).sum() > 0
    # the voxels shared with the nsdgeneral set have the same betas
    ref = prepared["none"]
    lut = {tuple(v): i for i, v in enumerate(ref["voxels/ijk"].tolist())}
    both = [(i, lut[tuple(v)]) for i, v in enumerate(d["voxels/ijk"].tolist()) if tuple(v) in lut]
    np.testing.assert_array_equal(d["train/betas"][:, [a for a, _ in both]], ref["train/betas"][:, [b for _, b in both]])


# --------------------------------------------------------------------------- readers


def test_image_brick_reads_rows_in_order(synth):
    root, _ = synth
    p = root / layout.stimuli_key()
    with h5py.File(p, "r") as f:
        direct = {i: f["imgBrick"][i] for i in (2, 5)}
    with ImageBrick(p) as brick:
        imgs = brick.read([5, 2, 5])
        assert imgs.dtype == np.uint8 and imgs.shape == (3, 32, 32, 3)
        with pytest.raises(NSDFileError, match="out of range"):
            brick.read([len(brick)])
    np.testing.assert_array_equal(imgs[0], direct[5])
    np.testing.assert_array_equal(imgs[1], direct[2])
    np.testing.assert_array_equal(imgs[2], direct[5])


def test_read_ctab_tolerant(tmp_path):
    p = tmp_path / "x.mgz.ctab"
    p.write_text("# comment\n\n  0  Unknown   0 0 0 0\r\n1 V1v 255 0 0 0\nnot a line\n7\thV4\n")
    assert read_ctab(p) == {0: "Unknown", 1: "V1v", 7: "hV4"}
    p.write_text("nothing here\n")
    with pytest.raises(NSDFileError, match="x.mgz.ctab"):
        read_ctab(p)


# --------------------------------------------------------------------------- stimuli tables


def test_stimulus_index_and_captions(synth, prepared, tmp_path):
    root, coco = synth
    caps_paths = [coco / f for f in layout.COCO_CAPTION_FILES]
    out = tmp_path / "stim.csv"
    df = write_stimulus_index(root / layout.expdesign_key(), root / layout.stim_info_key("csv"),
                              SUBJECT, SESSIONS, out)
    back = pd.read_csv(out)
    assert back["nsdId"].tolist() == df["nsdId"].tolist()
    p = prepared["none"]
    assert sorted(back.loc[back["split"] == "test", "nsdId"]) == p["test/nsd_ids"].tolist()
    assert sorted(back.loc[back["split"] == "train", "nsdId"]) == p["train/nsd_ids"].tolist()
    assert (back["brick_row"] == back["nsdId"]).all() and (back["n_reps"] == 3).all()
    info = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0).set_index("nsdId")
    assert back["cocoId"].tolist() == info.loc[back["nsdId"], "cocoId"].tolist()

    caps = write_captions_table(back, caps_paths, tmp_path / "caps.csv")
    caps_back = pd.read_csv(tmp_path / "caps.csv")
    assert len(caps_back) == len(caps) and set(caps_back["nsdId"]) == set(back["nsdId"])
    # every caption is one of the COCO annotations of that image
    import json

    anns = {}
    for f in caps_paths:
        for a in json.loads(f.read_text())["annotations"]:
            anns.setdefault(a["image_id"], set()).add(" ".join(a["caption"].split()))
    for row in caps_back.itertuples():
        assert row.caption in anns[row.cocoId]
    assert (caps_back.groupby("nsdId")["caption_idx"].min() == 0).all()
    assert caps_back.groupby("nsdId").size().tolist() == [len(anns[c]) for c in back["cocoId"]]

    # an image without captions -> clear error, no file
    lacking = back.copy()
    lacking.loc[0, "cocoId"] = 999999999
    with pytest.raises(NSDFileError, match="no caption"):
        write_captions_table(lacking, caps_paths, tmp_path / "caps2.csv")
    assert not (tmp_path / "caps2.csv").exists()


def test_stimulus_index_unknown_nsdid(synth, tmp_path):
    root, _ = synth
    info = pd.read_csv(root / layout.stim_info_key("csv"), index_col=0)
    first = stimulus_index(root / layout.expdesign_key(), root / layout.stim_info_key("csv"), SUBJECT, SESSIONS)
    info = info[info["nsdId"] != first["nsdId"].iloc[0]]
    p = tmp_path / "info.csv"
    info.to_csv(p)
    with pytest.raises(NSDFileError, match="info.csv"):
        stimulus_index(root / layout.expdesign_key(), p, SUBJECT, SESSIONS)
    with pytest.raises(ValueError, match="cocoId"):
        captions_table(first.drop(columns="cocoId"), [])
