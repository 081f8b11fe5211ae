"""End to end on the synthetic NSD: prepare → regression decodes the planted signal.

The synthetic NSD plants a linear response of "early" voxels to low-level image content (8×8 colour block means)
and of "ventral" voxels to object categories (brainrecon.synth). Decoding those image features from the prepared
betas with the project's ridge stage must beat the shuffled-label baseline by a wide margin on held-out test images.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from brainrecon.nsd import layout
from brainrecon.nsd.plan import PrepareSettings
from brainrecon.nsd.prepare import prepare_subject, write_stimulus_index
from brainrecon.nsd.readers import ImageBrick
from brainrecon.regression.plan import SpaceFit
from brainrecon.regression.stage import fit_space

SUBJECT = 1
SESSIONS = 2


def _block_means(images: np.ndarray, blocks: int = 8) -> np.ndarray:
    """(n, S, S, 3) uint8 → (n, blocks·blocks·3) mean colour of each block (the low-level content)."""
    n, s = images.shape[:2]
    b = s // blocks
    x = images[:, : b * blocks, : b * blocks].astype(np.float64) / 255.0
    return x.reshape(n, blocks, b, blocks, b, 3).mean((2, 4)).reshape(n, -1)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    from brainrecon.synth import SynthSettings, generate

    tmp = tmp_path_factory.mktemp("decode")
    root, coco = tmp / "nsd", tmp / "coco"
    generate(root, coco, SynthSettings.build(subjects=(SUBJECT,), sessions=SESSIONS, n_images=80, n_shared=16, n_reps=3, snr=2.0, noise_fraction=0.2, image_size=64, seed=3), progress=False)
    prep = tmp / "prep.h5"
    prepare_subject(
        {"expdesign": root / layout.expdesign_key(),
         "betas": [root / layout.betas_key(SUBJECT, s) for s in range(1, SESSIONS + 1)],
         "rois": {n: root / layout.roi_key(SUBJECT, n) for n in layout.ROI_NAMES},
         "ctabs": {n: root / layout.ctab_key(SUBJECT, n) for n in layout.ROI_NAMES},
         "brainmask": root / layout.anatomy_key(SUBJECT, "brainmask")},
        prep, SUBJECT, PrepareSettings.build(), progress=False,
    )
    stim = write_stimulus_index(root / layout.expdesign_key(), root / layout.stim_info_key(), SUBJECT, SESSIONS,
                                tmp / "stim.csv")
    feats = {}
    with ImageBrick(root / layout.stimuli_key()) as brick:
        for split in ("train", "test"):
            ids = stim.loc[stim["split"] == split, "nsdId"].to_numpy()
            feats[split] = (ids, _block_means(brick.read(ids)))

    def write(path, permute):
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            for split, (ids, x) in feats.items():
                f[f"{split}/features"] = x.astype(np.float32)
                f[f"{split}/nsd_ids"] = rng.permutation(ids) if permute and split == "train" else ids
            f.attrs["feature_shape"] = np.asarray([x.shape[1]])
            f.attrs["space"] = "lowlevel"

    write(tmp / "feat.h5", permute=False)
    write(tmp / "feat_shuffled.h5", permute=True)  # training labels shuffled: the baseline
    out = {}
    for name in ("feat", "feat_shuffled"):
        fit_space(prep, tmp / f"{name}.h5", tmp / f"{name}_pred.h5",
                  SpaceFit.build(alphas=[1.0, 10.0, 100.0, 1000.0], cv=4, voxels={"streams": ["early"]},
                                 restandardise=True), progress=False)
        with h5py.File(tmp / f"{name}_pred.h5", "r") as f:
            out[name] = (f["nsd_ids"][:], f["pred_restd"][:])
    return feats, out


def _per_image_r(pred, true):
    p = pred - pred.mean(1, keepdims=True)
    t = true - true.mean(1, keepdims=True)
    return (p * t).sum(1) / np.sqrt((p * p).sum(1) * (t * t).sum(1))


def _per_feature_r(pred, true):
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    return (p * t).sum(0) / np.sqrt((p * p).sum(0) * (t * t).sum(0) + 1e-12)


def test_ridge_decodes_planted_low_level_content_far_above_shuffled_baseline(decoded):
    feats, out = decoded
    test_ids, true = feats["test"]
    ids, pred = out["feat"]
    np.testing.assert_array_equal(ids, test_ids)
    ids_s, pred_s = out["feat_shuffled"]
    # across test images, each decoded feature follows the true one
    r = np.nanmedian(_per_feature_r(pred, true))
    r_shuf = np.nanmedian(_per_feature_r(pred_s, true))
    assert r > 0.5, r
    assert r > r_shuf + 0.4, (r, r_shuf)
    # two-way identification of test images from the decoded features
    cc = np.corrcoef(pred, true)[: len(true), len(true):]
    ident = np.mean([(cc[:, j] < cc[j, j]).sum() / (len(true) - 1) for j in range(len(true))])
    cc_s = np.corrcoef(pred_s, true)[: len(true), len(true):]
    ident_s = np.mean([(cc_s[:, j] < cc_s[j, j]).sum() / (len(true) - 1) for j in range(len(true))])
    assert ident > 0.7 and ident > ident_s + 0.2, (ident, ident_s)
