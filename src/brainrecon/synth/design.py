"""Synthetic NSD experiment design, stimulus-info table and behavioural responses.

Conventions (as in NSD, SPEC §1): ``masterordering`` holds 1-based 10k-ids per global trial (the
same for every subject); ``subjectim[s-1, m-1]`` is the 1-based 73k-id of subject s's 10k-image m;
10k-ids ``<= n_shared`` are the shared images (``sharedix``, 1-based 73k-ids, ascending, equal to
the first ``n_shared`` columns of every row of ``subjectim``). Global trial t (0-based) is in
session ``t // trials_per_session + 1`` at position ``t % trials_per_session`` of that session.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: number of runs per session when the session has enough trials (NSD: 12)
MAX_RUNS = 3
#: blank trial slots per run around the stimulus trials (1 before, 2 after)
BLANKS_BEFORE, BLANKS_AFTER = 1, 2


def check_settings(n_images, n_shared, n_reps, sessions) -> int:
    """Validate the design settings; return trials per session (an int). Raises ValueError."""
    for name, v in (("n_images", n_images), ("n_shared", n_shared), ("n_reps", n_reps), ("sessions", sessions)):
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"synth setting {name} must be an integer, got {v!r}")
    if n_images < 2:
        raise ValueError(f"synth setting n_images must be >= 2, got {n_images}")
    if not 1 <= n_shared < n_images:
        raise ValueError(
            f"synth setting n_shared must satisfy 1 <= n_shared < n_images, got n_shared={n_shared}, "
            f"n_images={n_images}"
        )
    if n_reps < 1:
        raise ValueError(f"synth setting n_reps must be >= 1, got {n_reps}")
    if not 1 <= sessions <= 40:
        raise ValueError(f"synth setting sessions must be 1..40 (NSD has 40), got {sessions}")
    total = n_images * n_reps
    if total % sessions:
        raise ValueError(
            f"n_images * n_reps = {n_images} * {n_reps} = {total} trials cannot be split into "
            f"{sessions} sessions of equal size (trials per session must be an integer)"
        )
    return total // sessions


def run_layout(trials_per_session: int) -> tuple[int, int, list[int]]:
    """Runs per session R, slots per run V and stimulus trials in each run (sum = trials)."""
    n_runs = max(1, min(MAX_RUNS, trials_per_session // 10))
    per_run = [trials_per_session // n_runs + (r < trials_per_session % n_runs) for r in range(n_runs)]
    return n_runs, max(per_run) + BLANKS_BEFORE + BLANKS_AFTER, per_run


def make_expdesign(
    rng: np.random.Generator,
    gen_subjects: list[int],
    n_images: int,
    n_shared: int,
    n_reps: int,
    sessions: int,
) -> dict:
    """Draw the design. Returns dict with int arrays (0-dim conventions as in the .mat, 1-based):

    ``masterordering`` (T_total,), ``subjectim`` (8, n_images), ``sharedix`` (n_shared,),
    ``stimpattern`` (sessions, R, V) 0/1, ``basiccnt`` (3, sessions), ``n_stimuli`` N (73k-ids
    are 1..N), ``trials_per_session``, ``per_run`` (stimulus trials per run).

    Generated subjects get ``n_images - n_shared`` unique images each; the other rows of
    ``subjectim`` (subjects not generated) reuse a permutation of a generated subject's images.
    """
    tps = check_settings(n_images, n_shared, n_reps, sessions)
    n_uni = n_images - n_shared
    n_stim = n_shared + len(gen_subjects) * n_uni
    ids73 = rng.permutation(n_stim) + 1  # pool item -> 1-based 73k-id
    shared = np.sort(ids73[:n_shared])
    uniques = {s: rng.permutation(ids73[n_shared + g * n_uni : n_shared + (g + 1) * n_uni])
               for g, s in enumerate(gen_subjects)}
    subjectim = np.zeros((8, n_images), np.int64)
    for row in range(8):
        s = row + 1
        if s in uniques:
            uni = uniques[s]
        else:
            donor = gen_subjects[row % len(gen_subjects)]
            uni = rng.permutation(uniques[donor])
        subjectim[row, :n_shared] = shared
        subjectim[row, n_shared:] = uni
    masterordering = rng.permutation(np.repeat(np.arange(1, n_images + 1), n_reps))

    n_runs, slots, per_run = run_layout(tps)
    stimpattern = np.zeros((sessions, n_runs, slots), np.int64)
    for r, n in enumerate(per_run):
        stimpattern[:, r, BLANKS_BEFORE : BLANKS_BEFORE + n] = 1
    # basiccnt[p-1, q] = number of distinct images shown exactly p times in session q (p = 1..3)
    basiccnt = np.zeros((3, sessions), np.int64)
    for q in range(sessions):
        _, counts = np.unique(masterordering[q * tps : (q + 1) * tps], return_counts=True)
        for p in range(1, 4):
            basiccnt[p - 1, q] = int((counts == p).sum())
    return {
        "masterordering": masterordering,
        "subjectim": subjectim,
        "sharedix": shared,
        "stimpattern": stimpattern,
        "basiccnt": basiccnt,
        "n_stimuli": n_stim,
        "trials_per_session": tps,
        "per_run": per_run,
    }


def mat_dict(design: dict) -> dict:
    """The .mat variables as MATLAB would store them: float64, row vectors (1, n)."""
    return {
        "masterordering": design["masterordering"].astype(np.float64)[None, :],
        "subjectim": design["subjectim"].astype(np.float64),
        "sharedix": design["sharedix"].astype(np.float64)[None, :],
        "stimpattern": design["stimpattern"].astype(np.float64),
        "basiccnt": design["basiccnt"].astype(np.float64),
    }


def stim_info(design: dict, rng: np.random.Generator, image_size: int, n_reps: int) -> pd.DataFrame:
    """The ``nsd_stim_info_merged`` table: one row per 73k image (row i has nsdId i).

    ``subjectN_repK`` (K = 0..max(3, n_reps)-1) is the 1-based global trial number of the K-th
    presentation of that image to subject N, 0 if none.
    """
    n = design["n_stimuli"]
    mo = design["masterordering"]
    sim = design["subjectim"]
    coco_ids = rng.choice(np.arange(1, 600_000), size=n, replace=False)
    split = np.where(rng.random(n) < 0.25, "val2017", "train2017")
    if n >= 2:  # make sure both caption files have images
        if not (split == "val2017").any():
            split[0] = "val2017"
        if not (split == "train2017").any():
            split[0] = "train2017"
    width = int(round(image_size * 4 / 3))
    crop_total = 1 - image_size / width
    crops = []
    for f in rng.random(n):
        left = round(float(f * crop_total), 6)
        crops.append(str((0, 0, left, round(crop_total - left, 6))))
    shared = np.isin(np.arange(1, n + 1), design["sharedix"])
    df = pd.DataFrame(
        {
            "cocoId": coco_ids.astype(np.int64),
            "cocoSplit": split.astype(object),
            "cropBox": crops,
            "loss": np.round(rng.uniform(0, 0.1, n), 6),
            "nsdId": np.arange(n, dtype=np.int64),
            "flagged": rng.random(n) < 0.02,
            "BOLD5000": rng.random(n) < 0.05,
            "shared1000": shared,
        }
    )
    for s in range(1, 9):
        df[f"subject{s}"] = np.isin(np.arange(1, n + 1), sim[s - 1]).astype(np.int64)
    n_k = max(3, n_reps)
    trials_of = {m: np.nonzero(mo == m)[0] + 1 for m in np.unique(mo)}  # 10k-id -> 1-based trials
    for s in range(1, 9):
        reps = np.zeros((n, n_k), np.int64)
        for col, id73 in enumerate(sim[s - 1]):
            t = trials_of.get(col + 1, np.zeros(0, np.int64))
            reps[id73 - 1, : len(t)] = t
        for kk in range(n_k):
            df[f"subject{s}_rep{kk}"] = reps[:, kk]
    return df


RESPONSE_COLUMNS = (
    "SUBJECT SESSION RUN TRIAL 73KID 10KID TIME ISOLD ISCORRECT RT CHANGEMIND MEMORYRECENT "
    "MEMORYFIRST ISOLDCURRENT ISCORRECTCURRENT TOTAL1 TOTAL2 BUTTON MISSINGDATA"
).split()


def responses(design: dict, subject: int, sessions: int, rng: np.random.Generator) -> pd.DataFrame:
    """Behavioural table of one subject: one row per trial of sessions 1..sessions.

    RUN is 1-based within the session, TRIAL the 1-based stimulus trial within the run; 73KID and
    10KID are 1-based. BUTTON 2 = "old", 1 = "new" answer (ISCORRECT compares with ISOLD);
    MEMORYRECENT / MEMORYFIRST are trials since the most recent / first presentation (NaN if new).
    TIME is a MATLAB datenum.
    """
    tps = design["trials_per_session"]
    per_run = design["per_run"]
    mo = design["masterordering"]
    rows = []
    first_seen: dict[int, int] = {}
    last_seen: dict[int, int] = {}
    for ses in range(1, sessions + 1):
        seen_this_session: set[int] = set()
        t0 = (ses - 1) * tps
        day = 737800.0 + 7 * (ses - 1)
        k = 0
        for run, n_trials in enumerate(per_run, start=1):
            for trial in range(1, n_trials + 1):
                t = t0 + k
                m = int(mo[t])
                is_old = int(m in first_seen)
                is_old_cur = int(m in seen_this_session)
                correct = rng.random() < 0.8
                said_old = is_old if correct else 1 - is_old
                button = 2 if said_old else 1
                rows.append(
                    {
                        "SUBJECT": subject,
                        "SESSION": ses,
                        "RUN": run,
                        "TRIAL": trial,
                        "73KID": int(design["subjectim"][subject - 1, m - 1]),
                        "10KID": m,
                        "TIME": day + (run - 1) * 0.004 + trial * 4.0 / 86400.0,
                        "ISOLD": is_old,
                        "ISCORRECT": int(said_old == is_old),
                        "RT": round(float(rng.uniform(500, 1500)), 3),
                        "CHANGEMIND": int(rng.random() < 0.03),
                        "MEMORYRECENT": float(t - last_seen[m]) if m in last_seen else np.nan,
                        "MEMORYFIRST": float(t - first_seen[m]) if m in first_seen else np.nan,
                        "ISOLDCURRENT": is_old_cur,
                        "ISCORRECTCURRENT": int(said_old == is_old_cur),
                        "TOTAL1": int(button == 1),
                        "TOTAL2": int(button == 2),
                        "BUTTON": button,
                        "MISSINGDATA": 0,
                    }
                )
                first_seen.setdefault(m, t)
                last_seen[m] = t
                seen_this_session.add(m)
                k += 1
    return pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))


def subject_image_ids(design: dict, subject: int) -> np.ndarray:
    """0-based nsdIds the subject saw, ascending (N_s,)."""
    return np.sort(design["subjectim"][subject - 1] - 1)


def trial_nsd_ids(design: dict, subject: int) -> np.ndarray:
    """0-based nsdId of every global trial of the subject (T_total,), via SPEC §1 arithmetic."""
    return design["subjectim"][subject - 1, design["masterordering"] - 1] - 1


__all__ = [
    "check_settings",
    "make_expdesign",
    "mat_dict",
    "stim_info",
    "responses",
    "run_layout",
    "subject_image_ids",
    "trial_nsd_ids",
]
