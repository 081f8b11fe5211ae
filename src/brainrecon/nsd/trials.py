"""NSD index arithmetic: which image each trial showed, where its beta lives, the split.

SPEC.md §1, with ``t`` the 0-based global trial number of a subject:

* ``session = t // tps + 1`` and ``k = t % tps`` — the trial's index along the 4th axis
  of that session's betas file (``tps`` = trials per session, read from the
  experiment design's ``stimpattern``, never hard-coded; when sessions differ in length
  the session boundaries are the cumulative sums of their counts);
* ``m = masterordering[t]`` — the 10k-id (1-based);
* ``nsd_id = subjectim[subject - 1, m - 1] - 1`` — the 73k-id (0-based = ``imgBrick`` row);
* the trial is *shared* (test) iff ``m <= len(sharedix)`` (⇔ ``nsd_id + 1 ∈ sharedix``).

Standard split: test = the shared images seen in the chosen sessions, train = every
other image the subject saw in those sessions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def normalise_sessions(sessions) -> list[int]:
    """``37`` -> ``[1, ..., 37]``; an iterable of session numbers -> sorted unique list."""
    if isinstance(sessions, (int, np.integer)):
        n = int(sessions)
        if n < 1:
            raise ValueError(f"number of sessions must be >= 1, got {n}")
        return list(range(1, n + 1))
    if isinstance(sessions, str):
        raise ValueError(f"sessions must be an int or a list of ints, got {sessions!r}")
    out = sorted({int(s) for s in sessions})
    if not out:
        raise ValueError("no sessions given")
    if out[0] < 1:
        raise ValueError(f"sessions are 1-based, got {out[0]}")
    return out


def session_trial_counts(expdesign: dict) -> np.ndarray:
    """Stimulus trials of every session in the design, (n_sessions,) int — stimpattern ones."""
    sp = np.asarray(expdesign["stimpattern"])
    if sp.ndim == 2:
        sp = sp[None]
    return (sp != 0).reshape(sp.shape[0], -1).sum(axis=1).astype(np.int64)


def trials_per_session(expdesign: dict, sessions) -> dict[int, int]:
    """``{session: number of trials}`` for the given sessions, from ``stimpattern``.

    Raises ValueError if the design has fewer sessions than asked for or its
    ``masterordering`` is shorter than the trials of those sessions.
    """
    sess = normalise_sessions(sessions)
    counts = session_trial_counts(expdesign)
    if sess[-1] > counts.size:
        raise ValueError(
            f"experiment design describes {counts.size} sessions (stimpattern) but session "
            f"{sess[-1]} was asked for"
        )
    n_needed = int(counts[: sess[-1]].sum())
    n_mo = int(np.asarray(expdesign["masterordering"]).size)
    if n_needed > n_mo:
        raise ValueError(
            f"experiment design: sessions 1..{sess[-1]} have {n_needed} trials (stimpattern) "
            f"but masterordering has only {n_mo} entries"
        )
    return {s: int(counts[s - 1]) for s in sess}


def trial_table(expdesign: dict, subject: int | str, sessions) -> pd.DataFrame:
    """One row per trial of ``subject`` in ``sessions`` (int N -> sessions 1..N, or a list).

    Columns (all int64 unless noted):
      ``trial``   0-based global trial number t;
      ``session`` 1-based session;
      ``k``       index of the trial in that session's betas (4th NIfTI axis / 1st HDF5 axis);
      ``m``       10k-id, 1-based (``masterordering[t]``);
      ``nsd_id``  73k-id, 0-based (``subjectim[subject-1, m-1] - 1``);
      ``shared``  bool, ``m <= len(sharedix)``;
      ``rep``     occurrence index of the image among the table's trials (0, 1, 2, ...).
    Rows are in ascending ``trial`` order. Raises ValueError if the design is
    inconsistent (``m <= len(sharedix)`` disagreeing with ``nsd_id + 1 ∈ sharedix``).
    """
    subj = int(subject)
    mo = np.asarray(expdesign["masterordering"], dtype=np.int64).ravel()
    subjectim = np.asarray(expdesign["subjectim"], dtype=np.int64)
    sharedix = np.asarray(expdesign["sharedix"], dtype=np.int64).ravel()
    if not 1 <= subj <= subjectim.shape[0]:
        raise ValueError(f"subject {subject!r} not in subjectim (it has {subjectim.shape[0]} rows)")
    tps = trials_per_session(expdesign, sessions)
    counts = session_trial_counts(expdesign)
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts_t, parts_s, parts_k = [], [], []
    for s, n in tps.items():
        t = np.arange(starts[s - 1], starts[s - 1] + n, dtype=np.int64)
        parts_t.append(t)
        parts_s.append(np.full(n, s, dtype=np.int64))
        parts_k.append(t - starts[s - 1])
    t = np.concatenate(parts_t)
    m = mo[t]
    if m.size and (m.min() < 1 or m.max() > subjectim.shape[1]):
        raise ValueError(f"masterordering values out of range [1, {subjectim.shape[1]}]")
    nsd_id = subjectim[subj - 1, m - 1] - 1
    if nsd_id.size and nsd_id.min() < 0:
        raise ValueError(f"subjectim row {subj} has ids < 1 for trials shown in these sessions")
    shared = m <= sharedix.size
    in_sharedix = np.isin(nsd_id + 1, sharedix)
    if not np.array_equal(shared, in_sharedix):
        bad = int(np.flatnonzero(shared != in_sharedix)[0])
        raise ValueError(
            f"experiment design inconsistent: trial {int(t[bad])} has m={int(m[bad])} "
            f"(len(sharedix)={sharedix.size}) but nsdId+1={int(nsd_id[bad]) + 1} "
            f"{'is' if in_sharedix[bad] else 'is not'} in sharedix"
        )
    df = pd.DataFrame(
        {
            "trial": t,
            "session": np.concatenate(parts_s),
            "k": np.concatenate(parts_k),
            "m": m,
            "nsd_id": nsd_id,
            "shared": shared,
        }
    )
    df["rep"] = df.groupby("nsd_id").cumcount().astype(np.int64)
    return df


def split_images(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(train_nsd_ids, test_nsd_ids)``: sorted unique 0-based ids.

    test = shared images seen in the table's trials; train = all other images seen.
    """
    ids = table["nsd_id"].to_numpy()
    shared = table["shared"].to_numpy(bool)
    test = np.unique(ids[shared])
    train = np.unique(ids[~shared])
    return train.astype(np.int64), test.astype(np.int64)


def repetition_counts(table: pd.DataFrame, nsd_ids: Iterable[int]) -> np.ndarray:
    """Number of trials of each of ``nsd_ids`` in the table, (n,) int64."""
    counts = table["nsd_id"].value_counts()
    return np.asarray([int(counts.get(int(i), 0)) for i in nsd_ids], dtype=np.int64)
