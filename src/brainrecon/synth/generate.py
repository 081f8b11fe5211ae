"""Write a tiny synthetic NSD (same keys, formats, dtypes, index conventions as the real bucket)."""

from __future__ import annotations

from dataclasses import dataclass

import json
import logging
import math
import numbers
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io
from tqdm.auto import tqdm

from brainrecon.io import atomic_path, write_text_atomic
from brainrecon.nsd import layout

from . import design as dz
from . import images as im
from . import planted as pl
from . import volumes as vol

log = logging.getLogger(__name__)

#: default func1pt8mm volume shapes (X, Y, Z) per subject (they differ, as in NSD)
DEFAULT_SHAPES = {
    1: (12, 14, 10),
    2: (13, 14, 11),
    3: (12, 13, 10),
    4: (11, 14, 10),
    5: (11, 13, 10),
    6: (12, 12, 10),
    7: (12, 13, 9),
    8: (11, 13, 9),
}

_DEFINITIONS = {
    "psc": "percent signal change of a trial's beta; betas (nii.gz and hdf5) = int16(numpy.rint(300 * psc)), "
    "clipped to the int16 range, exactly 0 outside the brain mask",
    "trial_psc": "psc of voxel v on a trial showing image n = drive[n, v] + e, e ~ N(0, noise_sd_psc^2) "
    "independent per trial, voxel and repetition (every brain voxel)",
    "drive": pl.__doc__.split("Model (all in percent signal change, psc).", 1)[1].strip(),
    "snr": "std over the subject's images (each once, ddof=0) of the stimulus-driven drive of an early or "
    "ventral voxel (= amplitude_psc) divided by the trial noise std (noise_sd_psc = amplitude_psc / snr)",
    "lowlevel": "F[n, r, c, ch]: mean of RGB/255 over block (r, c) of image n on an 8x8 grid with pixel edges "
    "(arange(9) * S) // 8 (rows r from the top, columns c from the left)",
    "presence": "presence[n, k] = 1 if an object of category k is drawn in image n, else 0",
    "groups": "planted voxels = nsdgeneral | streams > 0 (the streams' anterior rim lies outside nsdgeneral); "
    "early: streams==1 (low-level drive); ventral: streams==5 (category drive); "
    "noise: random noise_fraction of the planted voxels, drive 0; weak: other planted voxels (weak mix); "
    "other brain voxels: drive 0",
    "index": "global trial t (0-based): session t // trials_per_session + 1, volume t % trials_per_session; "
    "m = masterordering[t]; nsdId = subjectim[subject-1, m-1] - 1; shared iff m <= n_shared",
}


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(t) for t in tags]])


def _save_nifti(path: Path, data: np.ndarray, aff: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        img = nib.Nifti1Image(data, aff)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_data_dtype(data.dtype)
        nib.save(img, str(tmp))


def _plain_frame(df):
    """``df`` with plain ``object`` text columns and column labels, as the real (pandas-1 era) pickle has:
    pandas >= 3 infers a ``str`` dtype that older pandas cannot unpickle."""
    import pandas as pd

    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_string_dtype(out[c].dtype) and out[c].dtype != object:
            out[c] = out[c].astype(object)
    out.columns = pd.Index([str(c) for c in out.columns], dtype=object)
    return out


def _ctab_text(name: str) -> str:
    lines = ["0 Unknown"] + [f"{v} {n}" for v, n in sorted(layout.LABEL_TABLES[name].items())]
    return "\n".join(lines) + "\n"


def _check_inputs(subjects, snr, noise_fraction, image_size, seed, shapes):
    try:
        subs = sorted({int(s) for s in subjects})
    except (TypeError, ValueError) as e:
        raise ValueError(f"synth subjects must be integers 1..8, got {subjects!r}") from e
    if not subs:
        raise ValueError("synth needs at least one subject")
    for s in subs:
        layout.subj_str(s)  # raises for subjects outside 1..8
    if isinstance(snr, bool) or not isinstance(snr, numbers.Real) or math.isnan(snr) or snr <= 0:
        raise ValueError(f"synth snr must be a positive number (drive std / noise std), got {snr!r}")
    if not 0 <= float(noise_fraction) <= 1:
        raise ValueError(f"synth noise_fraction must be within [0, 1], got {noise_fraction!r}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"synth image_size must be an integer >= 16 pixels, got {image_size!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"synth seed must be a non-negative integer, got {seed!r}")
    out = {}
    given = {int(k): v for k, v in (shapes or {}).items()}
    for s in subs:
        shp = given.get(s, DEFAULT_SHAPES[s])
        try:
            shp = tuple(int(n) for n in shp)
        except (TypeError, ValueError) as e:
            raise ValueError(f"synth shape of subject {s} must be 3 integers, got {shp!r}") from e
        if len(shp) != 3:
            raise ValueError(f"synth shape of subject {s} must be 3 integers (X, Y, Z), got {shp!r}")
        out[s] = shp
    return subs, out


@dataclass(frozen=True)
class SynthSettings:
    """What the synthetic NSD looks like (the ``synth`` config section, with ``nsd.subjects`` / ``sessions``).

    Each subject sees ``n_images`` 10k-images (the first ``n_shared`` shared by all subjects: the test set),
    each ``n_reps`` times, over ``sessions`` sessions; stimuli are ``image_size``² RGB scenes; betas carry the
    planted drive plus noise at ``snr``, a ``noise_fraction`` of voxels pure noise; deterministic in ``seed``.
    """

    subjects: tuple[int, ...]
    sessions: int
    n_images: int
    n_shared: int
    n_reps: int
    snr: float
    noise_fraction: float
    image_size: int
    seed: int

    @classmethod
    def build(cls, *, subjects, sessions, **values) -> "SynthSettings":
        """From the subjects, sessions and some ``synth`` keys, the rest the schema's defaults."""
        from ..schema import section_settings

        return cls(subjects=tuple(int(x) for x in subjects), sessions=int(sessions),
                   **section_settings("synth", values))


def generate(root, coco_root, settings: SynthSettings, *, shapes: dict | None = None, progress: bool = True) -> dict:
    """Write a synthetic NSD under ``root`` (bucket keys of :mod:`brainrecon.nsd.layout`) and
    COCO-schema captions under ``coco_root``; record the planted signal in
    ``<root>/synthetic_planted.json``.

    settings (:class:`SynthSettings`): each subject sees ``n_images`` 10k-images (the first ``n_shared``
    shared by all subjects), each ``n_reps`` times, over ``sessions`` sessions of
    ``n_images * n_reps / sessions`` trials (must be an integer). Stimuli are ``image_size``² RGB scenes.
    Betas = int16(rint(300 · psc)) with psc = planted drive + N(0, (1/snr)^2) (see
    :mod:`brainrecon.synth.planted`). ``shapes`` maps subject -> (X, Y, Z) volume shape (default
    :data:`DEFAULT_SHAPES`). Deterministic in ``seed``.

    Returns a summary dict (root, coco_root, subjects, sessions, trials_per_session, n_stimuli,
    shapes, voxel counts per subject and group, written files, seconds).
    """
    subjects, sessions, n_images, n_shared = settings.subjects, settings.sessions, settings.n_images, settings.n_shared
    n_reps, snr, noise_fraction = settings.n_reps, settings.snr, settings.noise_fraction
    image_size, seed = settings.image_size, settings.seed
    t_start = time.time()
    subs, shp = _check_inputs(subjects, snr, noise_fraction, image_size, seed, shapes)
    tps = dz.check_settings(n_images, n_shared, n_reps, sessions)
    sessions, n_images, n_shared, n_reps = int(sessions), int(n_images), int(n_shared), int(n_reps)
    image_size = int(image_size)
    root, coco_root = Path(root), Path(coco_root)
    written: list[str] = []

    def out(key: str) -> Path:
        p = root / key
        written.append(str(p))
        return p

    # ---- experiment design and stimulus info
    design = dz.make_expdesign(_rng(seed, 1), subs, n_images, n_shared, n_reps, sessions)
    n_stim = design["n_stimuli"]
    with atomic_path(out(layout.expdesign_key())) as tmp:
        scipy.io.savemat(str(tmp), dz.mat_dict(design), format="5", do_compression=False, oned_as="row")
    info = dz.stim_info(design, _rng(seed, 2), image_size, n_reps)
    with atomic_path(out(layout.stim_info_key("csv"))) as tmp:
        info.to_csv(tmp)
    with atomic_path(out(layout.stim_info_key("pkl"))) as tmp:
        _plain_frame(info).to_pickle(tmp, protocol=4)

    # ---- stimuli (one image per chunk, gzip) + low-level features
    rng_img = _rng(seed, 3)
    scenes = [im.sample_scene(rng_img) for _ in range(n_stim)]
    lowlevel = np.zeros((n_stim, im.LOWLEVEL_GRID, im.LOWLEVEL_GRID, 3))
    presence = np.zeros((n_stim, len(im.CATEGORIES)), np.int64)
    S = image_size
    with atomic_path(out(layout.stimuli_key())) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset(
                "imgBrick", shape=(n_stim, S, S, 3), dtype=np.uint8, chunks=(1, S, S, 3),
                compression="gzip", compression_opts=4,
            )
            for n in tqdm(range(n_stim), desc="synth stimuli", disable=not progress):
                img = im.draw_scene(scenes[n], S)
                ds[n] = img
                lowlevel[n] = im.lowlevel_features(img)
                for o in scenes[n]["objects"]:
                    presence[n, im.CATEGORIES.index(o["category"])] = 1

    # ---- COCO-schema captions
    rng_cap = _rng(seed, 4)
    caps = [im.captions(sc, rng_cap) for sc in scenes]
    width = int(round(S * 4 / 3))
    ann_id = 1
    for split, rel in zip(("train2017", "val2017"), layout.COCO_CAPTION_FILES):
        rows = info.index[info["cocoSplit"] == split]
        doc = {
            "info": {
                "description": "brainrecon synthetic NSD captions (COCO schema; not COCO data)",
                "url": "", "version": "1.0", "year": 2017, "contributor": "brainrecon.synth",
                "date_created": "2017/09/01",
            },
            "licenses": [{"url": "", "id": 1, "name": "synthetic data, no restrictions"}],
            "images": [],
            "annotations": [],
        }
        for n in rows:
            cid = int(info.at[n, "cocoId"])
            doc["images"].append({
                "license": 1, "file_name": f"{cid:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/{split}/{cid:012d}.jpg",
                "height": S, "width": width, "date_captured": "2013-11-14 16:28:13",
                "flickr_url": "", "id": cid,
            })
            for c in caps[n]:
                doc["annotations"].append({"image_id": cid, "id": ann_id, "caption": c})
                ann_id += 1
        p = coco_root / rel
        written.append(str(p))
        write_text_atomic(p, json.dumps(doc))

    # ---- subjects
    planted = {
        "format": "brainrecon-synthetic-nsd/1",
        "seed": int(seed), "snr": float(snr) if math.isfinite(snr) else "inf",
        "noise_fraction": float(noise_fraction),
        "amplitude_psc": pl.AMPLITUDE, "weak_amplitude_psc": pl.WEAK_AMPLITUDE,
        "noise_sd_psc": pl.AMPLITUDE / float(snr),
        "beta_scale": 300.0,
        "subjects": subs, "sessions": sessions, "trials_per_session": tps,
        "n_images": n_images, "n_shared": n_shared, "n_reps": n_reps,
        "n_stimuli": n_stim, "image_size": S,
        "definitions": _DEFINITIONS,
        "categories": list(im.CATEGORIES),
        "images": {
            "nsd_id": list(range(n_stim)),
            "categories": [[o["category"] for o in sc["objects"]] for sc in scenes],
            "presence": presence.tolist(),
            "scene": scenes,
            "lowlevel": lowlevel.tolist(),
        },
        "per_subject": {},
    }
    geoms = {}
    for s in subs:
        geom = vol.geometry(shp[s], _rng(seed, 10, s), subject=s)
        geoms[s] = geom
        ids = dz.subject_image_ids(design, s)
        vox = pl.build_subject(geom, ids, lowlevel, presence, float(noise_fraction), _rng(seed, 11, s))
        planted["per_subject"][str(s)] = {
            "shape": list(shp[s]),
            "affine": vol.affine(shp[s]).tolist(),
            "nsd_ids": ids.tolist(),
            "n_brain_voxels": int(geom["brain"].sum()),
            "counts": {g: vox["group"].count(g) for g in ("early", "ventral", "weak", "noise")},
            "voxels": vox,
        }
    # round-trip through JSON so the drive used below is exactly what planted_drive() recomputes
    planted_text = json.dumps(planted)
    planted = json.loads(planted_text)

    noise_sd = pl.AMPLITUDE / float(snr)
    counts = {}
    bar = tqdm(total=len(subs) * sessions, desc="synth subjects x sessions", disable=not progress)
    for s in subs:
        geom = geoms[s]
        aff = vol.affine(shp[s])
        brain = geom["brain"]
        for name in layout.ROI_NAMES:
            _save_nifti(out(layout.roi_key(s, name)), geom["rois"][name], aff)
            write_text_atomic(out(layout.ctab_key(s, name)), _ctab_text(name))
            if s == subs[0]:  # real NSD also has the fsaverage copies (what nsd_access reads)
                write_text_atomic(out(layout.fsaverage_ctab_key(name)), _ctab_text(name))
        for name, arr in vol.anatomy(brain, _rng(seed, 12, s)).items():
            _save_nifti(out(layout.anatomy_key(s, name)), arr, aff)
        resp = dz.responses(design, s, sessions, _rng(seed, 13, s))
        with atomic_path(out(layout.responses_key(s))) as tmp:
            resp.to_csv(tmp, sep="\t", index=False, na_rep="NaN")

        nsd_ids, drive, vox = pl.drive_all(planted, s)
        lookup = np.full(brain.shape, -1, np.int64)
        lookup[brain] = np.arange(int(brain.sum()))
        cols = lookup[tuple(np.asarray(vox["ijk"], np.int64).T)]
        drive_brain = np.zeros((len(nsd_ids), int(brain.sum())))
        drive_brain[:, cols] = drive
        trial_rows = np.searchsorted(nsd_ids, dz.trial_nsd_ids(design, s))
        counts[s] = planted["per_subject"][str(s)]["counts"]
        for ses in range(1, sessions + 1):
            rows = trial_rows[(ses - 1) * tps : ses * tps]
            noise = _rng(seed, 14, s, ses).standard_normal((tps, drive_brain.shape[1])) * noise_sd
            psc = drive_brain[rows] + noise
            vals = np.clip(np.rint(300.0 * psc), -32768, 32767).astype(np.int16)
            betas = np.zeros((*shp[s], tps), np.int16)
            betas[brain] = vals.T
            _save_nifti(out(layout.betas_key(s, ses, "nii.gz")), betas, aff)
            with atomic_path(out(layout.betas_key(s, ses, "hdf5"))) as tmp:
                with h5py.File(tmp, "w") as f:
                    tz = np.ascontiguousarray(betas.transpose(3, 2, 1, 0))
                    f.create_dataset("betas", data=tz, chunks=(1, *tz.shape[1:]))
            bar.update(1)
    bar.close()

    p = root / pl.PLANTED_FILE
    written.append(str(p))
    write_text_atomic(p, planted_text)
    summary = {
        "root": str(root),
        "coco_root": str(coco_root),
        "subjects": subs,
        "sessions": sessions,
        "trials_per_session": tps,
        "n_stimuli": n_stim,
        "shapes": {s: shp[s] for s in subs},
        "voxel_counts": counts,
        "planted": str(p),
        "files": written,
        "seconds": round(time.time() - t_start, 3),
    }
    log.info("synthetic NSD: %d subjects, %d stimuli, %d files in %.1f s under %s",
             len(subs), n_stim, len(written), summary["seconds"], root)
    return summary
