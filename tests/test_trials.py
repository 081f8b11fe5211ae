"""NSD index arithmetic (SPEC.md §1) on tiny hand-built designs with hand-derived answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from brainrecon.nsd.readers import NSDFileError, load_expdesign
from brainrecon.nsd.trials import (
    normalise_sessions,
    repetition_counts,
    split_images,
    trial_table,
    trials_per_session,
)


def tiny_design():
    """2 sessions × 4 trials (stimpattern: 2 runs × 3 slots, 2 ones per run), 5 10k-images.

    10k-ids 1..2 are shared (sharedix has 2 entries).
    subject 1 (row 0): 10k-id m -> 73k-id (1-based) 11, 12, 20, 30, 40
    subject 2 (row 1): 10k-id m -> 73k-id (1-based) 12, 11, 50, 60, 70
    (both shared 73k-ids 11 and 12 are in sharedix, as in NSD where every subject saw
    the shared 1000 in a subject-specific 10k order).
    """
    stimpattern = np.array(
        [
            [[1, 0, 1], [0, 1, 1]],  # session 1: 4 trials
            [[1, 1, 0], [1, 0, 1]],  # session 2: 4 trials
        ]
    )
    subjectim = np.zeros((8, 5), dtype=np.int64)
    subjectim[0] = [11, 12, 20, 30, 40]
    subjectim[1] = [12, 11, 50, 60, 70]
    return {
        # t:               0  1  2  3 | 4  5  6  7
        "masterordering": np.array([3, 1, 3, 4, 1, 5, 2, 1]),
        "subjectim": subjectim,
        "sharedix": np.array([11, 12]),
        "stimpattern": stimpattern,
    }


def test_trials_per_session_from_stimpattern():
    d = tiny_design()
    assert trials_per_session(d, 2) == {1: 4, 2: 4}
    assert trials_per_session(d, [2]) == {2: 4}
    with pytest.raises(ValueError, match="2 sessions"):
        trials_per_session(d, 3)


def test_trial_table_hand_checked_subject1():
    df = trial_table(tiny_design(), subject=1, sessions=2)
    # t, session, k, m, nsd_id (0-based), shared, rep -- derived by hand:
    # t=0: s1 k0 m3 -> 20-1=19, not shared, first 19
    # t=1: s1 k1 m1 -> 11-1=10, shared, first 10
    # t=2: s1 k2 m3 -> 19, second 19
    # t=3: s1 k3 m4 -> 29
    # t=4: s2 k0 m1 -> 10, second 10
    # t=5: s2 k1 m5 -> 39
    # t=6: s2 k2 m2 -> 11, shared
    # t=7: s2 k3 m1 -> 10, third 10
    expected = [
        (0, 1, 0, 3, 19, False, 0),
        (1, 1, 1, 1, 10, True, 0),
        (2, 1, 2, 3, 19, False, 1),
        (3, 1, 3, 4, 29, False, 0),
        (4, 2, 0, 1, 10, True, 1),
        (5, 2, 1, 5, 39, False, 0),
        (6, 2, 2, 2, 11, True, 0),
        (7, 2, 3, 1, 10, True, 2),
    ]
    got = list(df[["trial", "session", "k", "m", "nsd_id", "shared", "rep"]].itertuples(index=False, name=None))
    assert got == expected


def test_trial_table_other_subject_uses_its_row():
    df = trial_table(tiny_design(), subject=2, sessions=2)
    # m: 3 1 3 4 1 5 2 1 -> subject 2's 73k-ids 50 12 50 60 12 70 11 12 (1-based)
    assert df["nsd_id"].tolist() == [49, 11, 49, 59, 11, 69, 10, 11]
    assert df["shared"].tolist() == [False, True, False, False, True, False, True, True]


def test_session_subset_and_split():
    d = tiny_design()
    only2 = trial_table(d, 1, [2])
    assert only2["trial"].tolist() == [4, 5, 6, 7]
    assert only2["k"].tolist() == [0, 1, 2, 3]
    assert only2["session"].tolist() == [2, 2, 2, 2]
    # reps count within the chosen sessions only
    assert only2["rep"].tolist() == [0, 0, 0, 1]
    train, test = split_images(only2)
    assert train.tolist() == [39]
    assert test.tolist() == [10, 11]

    train, test = split_images(trial_table(d, 1, 1))
    assert train.tolist() == [19, 29]
    assert test.tolist() == [10]  # image 11 (10k-id 2) only appears in session 2

    full = trial_table(d, 1, 2)
    train, test = split_images(full)
    assert train.tolist() == [19, 29, 39] and test.tolist() == [10, 11]
    assert set(train).isdisjoint(test)
    assert repetition_counts(full, test).tolist() == [3, 1]
    assert repetition_counts(full, train).tolist() == [2, 1, 1]


def test_unequal_sessions_use_cumulative_boundaries():
    d = tiny_design()
    d["stimpattern"] = np.array([[[1, 1, 1], [0, 1, 1]], [[1, 0, 0], [1, 0, 1]]])  # 5 then 3 trials
    df = trial_table(d, 1, 2)
    assert df["session"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2]
    assert df["k"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_inconsistent_sharedix_raises():
    d = tiny_design()
    d["sharedix"] = np.array([11, 99])  # 10k-id 2 -> 73k 12 of subject 1 is "shared" but not in sharedix
    with pytest.raises(ValueError, match="sharedix"):
        trial_table(d, 1, 2)


def test_masterordering_too_short_raises():
    d = tiny_design()
    d["masterordering"] = d["masterordering"][:6]
    with pytest.raises(ValueError, match="masterordering has only 6"):
        trial_table(d, 1, 2)


def test_normalise_sessions():
    assert normalise_sessions(3) == [1, 2, 3]
    assert normalise_sessions([3, 1, 1]) == [1, 3]
    with pytest.raises(ValueError):
        normalise_sessions(0)
    with pytest.raises(ValueError):
        normalise_sessions([0, 1])


def test_load_expdesign_roundtrip_and_missing_key(tmp_path):
    d = tiny_design()
    # MATLAB stores doubles and row vectors
    mat = {
        "masterordering": d["masterordering"][None].astype(float),
        "subjectim": d["subjectim"].astype(float),
        "sharedix": d["sharedix"][None].astype(float),
        "stimpattern": d["stimpattern"].astype(float),
    }
    p = tmp_path / "nsd_expdesign.mat"
    scipy.io.savemat(p, mat)
    got = load_expdesign(p)
    assert got["masterordering"].shape == (8,) and got["masterordering"].dtype == np.int64
    assert got["sharedix"].tolist() == [11, 12]
    assert got["subjectim"].shape == (8, 5)
    assert got["stimpattern"].shape == (2, 2, 3)
    assert trial_table(got, 1, 2)["nsd_id"].tolist() == trial_table(d, 1, 2)["nsd_id"].tolist()

    del mat["sharedix"]
    bad = tmp_path / "bad_expdesign.mat"
    scipy.io.savemat(bad, mat)
    with pytest.raises(NSDFileError) as e:
        load_expdesign(bad)
    assert "bad_expdesign.mat" in str(e.value) and "'sharedix'" in str(e.value)

    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(NSDFileError, match="junk.mat"):
        load_expdesign(junk)
