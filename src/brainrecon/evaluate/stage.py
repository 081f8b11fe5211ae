"""The evaluation stage: one (method, variant, subject)'s reconstructions -> metric CSVs.

What the workflow's ``evaluate_recon`` rule runs (:func:`evaluate_reconstruction`), built on
the metric suite (:mod:`.metrics`, :mod:`.nets`, :mod:`.suite`):

1. :func:`read_reconstructions` reads ``images.h5`` (``images`` uint8 (n, S, S, 3) or
   (n, samples, S, S, 3), ``nsd_ids`` (n,), ``seeds``) and checks it;
2. :func:`read_ground_truth` reads only those rows of the NSD ``imgBrick`` (row = nsdId,
   uint8 425 x 425 x 3), in the images.h5 order;
3. :func:`~.suite.compute_scores` (the one metric engine) extracts every net's features once and
   keeps what every metric needs; its :meth:`~.suite.ScoreBank.summary` gives the values on all test
   images and on all but an exclusion list, :meth:`~.suite.ScoreBank.per_image` the per-image values;
4. one-row CSVs (ids + ``convention`` + ``n_images`` + metric columns) are written atomically,
   after everything was computed (a failure leaves no output).

Evaluation nets (:func:`load_eval_nets`): ``weights="tiny"`` builds seeded random nets
(nothing on disk); ``"pretrained"`` reads the torchvision / SwAV files from an ``evalnets``
folder written by :func:`fetch_eval_nets` (file names = the URLs' basenames, as
:func:`~.nets.build_eval_net` looks them up) and CLIP from the models registry's ``clip`` role
folder (a ``CLIPModel`` ``save_pretrained`` folder).

Exclusion lists (:func:`read_exclusion_list`): a CSV with an ``nsdId`` (or ``nsd_id``) column,
or a one-column CSV / TXT of integers (``#`` comments, commas or whitespace). Values are
0-based NSD ids (``nsdId`` of ``nsd_stim_info_merged.csv``, = imgBrick row) - the Takagi &
Nishimoto follow-up's control analysis (test images also found in LAION-5B).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_dir, atomic_path
from ..models.plan import Runtime
from .nets import SWAV_URL, _TV_WEIGHTS, build_eval_net
from .plan import EVAL_WEIGHTS, NET_NAMES, TORCHVISION_NETS, EvalSettings, exclusion_tag, required_nets
from .suite import compute_scores, metrics_table

log = logging.getLogger(__name__)

EVALNETS_MANIFEST = "evalnets.json"

__all__ = [
    "EVALNETS_MANIFEST",
    "Reconstructions",
    "eval_net_files",
    "fetch_eval_nets",
    "load_eval_nets",
    "read_reconstructions",
    "read_ground_truth",
    "read_exclusion_list",
    "exclusion_tag",
    "split_test_ids",
    "evaluate_reconstruction",
]

# --------------------------------------------------------------------------- evaluation nets
def eval_net_files(nets=TORCHVISION_NETS, members=None) -> dict[str, tuple[str, str]]:
    """``{net: (url, file name)}`` of the pretrained weight files of the torchvision-based nets.

    URLs come from torchvision's weight enums (``AlexNet_Weights.IMAGENET1K_V1`` ..., or the member
    ``members[net]`` a convention asks for, e.g. MindEye's EffNet-B1 ``IMAGENET1K_V2``) and, for
    SwAV, :data:`~.nets.SWAV_URL`; the file name is the URL's basename (what
    :func:`~.nets.build_eval_net` looks for in ``cache_dir``). ``clip`` is not a file here (it is
    the models registry's ``clip`` folder) and is skipped.
    """
    members = dict(members or {})
    import torchvision.models as tvm

    out = {}
    for name in nets:
        if name not in NET_NAMES:
            raise ValueError(f"unknown evaluation net {name!r}; known: {', '.join(NET_NAMES)}")
        if name == "clip":
            continue
        if name == "swav":
            url = SWAV_URL
        else:
            enum_name, member = _TV_WEIGHTS[name]
            url = getattr(tvm, enum_name)[members.get(name, member)].url
        out[name] = (url, url.rsplit("/", 1)[-1])
    return out


_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_eval_nets(folder, nets=TORCHVISION_NETS, *, members=None, retries: int = 5, backoff_s: float = 2.0,
                    timeout_s: float = 60.0, check_load: bool = True, progress: bool = True,
                    mirror: str | None = None) -> Path:
    """Download the pretrained weight files of ``nets`` into ``folder`` (all or nothing).

    Each file goes through :func:`brainrecon.fetch.download_file` (retries, size checks,
    atomic rename); torchvision files carry the first hex digits of their sha256 in their name
    (``alexnet-owt-7be5be79.pth``), which is checked as torch.hub does. With ``check_load`` every
    net is then built from the folder (:func:`~.nets.build_eval_net`, strict state-dict load), so
    a truncated or wrong file fails here, not in a GPU job. ``folder/evalnets.json`` lists
    ``{net: {url, file, sha256}}``. Needs internet: run once (local rule ``evaluate_fetch_nets``).
    mirror: optional base URL (``https://``, ``file://``) holding the same file names, used instead
    of the original hosts.
    """
    from ..fetch import download_file

    folder = Path(folder)
    members = dict(members or {})
    files = eval_net_files(nets, members)
    manifest = {}
    with atomic_dir(folder) as tmp:
        for name, (url, fname) in files.items():
            if mirror:
                url = mirror.rstrip("/") + "/" + fname
            dest = download_file(url, tmp / fname, key=fname, retries=retries, backoff_s=backoff_s,
                                 timeout_s=timeout_s, progress=progress)
            digest = _sha256(dest)
            m = _HASH_PREFIX.search(fname)
            if name != "swav" and m and not digest.startswith(m.group(1)):
                raise ValueError(f"{name}: {url} downloaded with sha256 {digest[:16]}..., its name says "
                                 f"{m.group(1)}...: corrupt or changed file")
            manifest[name] = {"url": url, "file": fname, "sha256": digest}
        if check_load:
            for name in files:
                build_eval_net(name, _named_weights(name, members), cache_dir=tmp)
        (tmp / EVALNETS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _named_weights(name: str, members) -> str:
    return f"torchvision:{members[name]}" if name in (members or {}) else "pretrained"


def load_eval_nets(names, weights: str = "tiny", folder=None, clip_folder=None, seed: int = 0,
                   members=None) -> dict:
    """``{net: model}`` for the evaluation nets ``names`` (CPU, eval mode).

    weights: ``"tiny"`` (seeded random weights, the same architecture classes; ``folder`` and
    ``clip_folder`` unused) or ``"pretrained"``: torchvision / SwAV nets from ``folder`` (written by
    :func:`fetch_eval_nets`; ``members``: ``{net: torchvision weights member}`` other than the default,
    e.g. MindEye's EffNet-B1 V2), CLIP from ``clip_folder`` (models registry ``clip`` role folder).
    """
    if weights not in EVAL_WEIGHTS:
        raise ValueError(f"evaluation weights must be one of {EVAL_WEIGHTS}, got {weights!r}")
    nets = {}
    for name in names:
        if name not in NET_NAMES:
            raise ValueError(f"unknown evaluation net {name!r}; known: {', '.join(NET_NAMES)}")
        if weights == "tiny":
            nets[name] = build_eval_net(name, "tiny", seed=seed)
        elif name == "clip":
            if clip_folder is None or not Path(clip_folder).is_dir():
                raise FileNotFoundError(f"clip: pretrained evaluation needs the models registry's clip folder, "
                                        f"got {clip_folder!r} (fetch it with the fetch_models rule)")
            nets[name] = build_eval_net("clip", str(clip_folder), seed=seed)
        else:
            if folder is None or not Path(folder).is_dir():
                raise FileNotFoundError(f"{name}: pretrained evaluation needs the evalnets folder, got {folder!r} "
                                        "(written by the evaluate_fetch_nets rule)")
            nets[name] = build_eval_net(name, _named_weights(name, members), seed=seed, cache_dir=folder)
    return nets


# --------------------------------------------------------------------------- inputs
@dataclass
class Reconstructions:
    """Contents of one ``images.h5``: ``images`` uint8 (n, S, S, 3) or (n, samples, S, S, 3),
    ``nsd_ids`` int64 (n,), ``seeds`` (n,) / (n, samples) or None, ``path``."""

    images: np.ndarray
    nsd_ids: np.ndarray
    seeds: np.ndarray | None
    path: str

    @property
    def n_samples(self) -> int:
        return 1 if self.images.ndim == 4 else int(self.images.shape[1])


def read_reconstructions(path, nsd_ids=None) -> Reconstructions:
    """Read and check ``images.h5`` (reconstruct stage; docs/DATA_PRODUCTS.md).

    nsd_ids: optional subset to read, in that order (figures); default every image in file order.
    Raises ``KeyError`` naming the file and the missing key (or the ids it lacks), ``ValueError``
    for wrong dtypes/shapes, duplicate ids or a length mismatch between ``images`` and ``nsd_ids``.
    """
    import h5py

    path = str(path)
    with h5py.File(path, "r") as f:
        for key in ("images", "nsd_ids"):
            if key not in f:
                raise KeyError(f"{path}: no dataset {key!r} (has {sorted(f.keys())})")
        ds = f["images"]
        if ds.dtype != np.uint8:
            raise ValueError(f"{path}: 'images' must be uint8, got {ds.dtype}")
        if ds.ndim not in (4, 5) or ds.shape[-1] != 3:
            raise ValueError(f"{path}: 'images' must be (n, S, S, 3) or (n, samples, S, S, 3), got {ds.shape}")
        ids = np.asarray(f["nsd_ids"][()])
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{path}: 'nsd_ids' must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if len(ids) != ds.shape[0]:
            raise ValueError(f"{path}: 'images' has {ds.shape[0]} rows but 'nsd_ids' has {len(ids)}")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{path}: duplicate nsd_ids {uniq[counts > 1][:10].tolist()}")
        seeds = np.asarray(f["seeds"][()]) if "seeds" in f else None
        if nsd_ids is None:
            return Reconstructions(images=ds[()], nsd_ids=ids, seeds=seeds, path=path)
        want = np.asarray(nsd_ids, dtype=np.int64).reshape(-1)
        pos = {int(v): i for i, v in enumerate(ids)}
        missing = [int(v) for v in want if int(v) not in pos]
        if missing:
            raise KeyError(f"{path}: nsd_ids {missing[:10]} are not among its reconstructions")
        rows = np.array([pos[int(v)] for v in want], dtype=np.int64)
        uniq_rows, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing indices
        images = ds[uniq_rows.tolist()][inverse] if len(rows) else np.empty((0, *ds.shape[1:]), np.uint8)
    if seeds is not None and seeds.ndim >= 1 and seeds.shape[0] == len(ids):
        seeds = seeds[rows]
    return Reconstructions(images=images, nsd_ids=ids[rows], seeds=seeds, path=path)


def read_ground_truth(brick_path, nsd_ids, batch: int = 64) -> np.ndarray:
    """Rows ``nsd_ids`` of the NSD stimulus brick (``imgBrick`` uint8 (73000, 425, 425, 3), row =
    nsdId), in the given order: uint8 (n, H, W, 3). Reads only those rows (sorted, in batches)."""
    import h5py

    ids = np.asarray(nsd_ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"nsd_ids: expected a non-empty 1-D array, got shape {ids.shape}")
    with h5py.File(str(brick_path), "r") as f:
        if "imgBrick" not in f:
            raise KeyError(f"{brick_path}: no dataset 'imgBrick' (has {sorted(f.keys())})")
        ds = f["imgBrick"]
        if ds.ndim != 4 or ds.shape[-1] != 3 or ds.dtype != np.uint8:
            raise ValueError(f"{brick_path}: 'imgBrick' must be uint8 (N, H, W, 3), got {ds.dtype} {ds.shape}")
        bad = ids[(ids < 0) | (ids >= ds.shape[0])]
        if len(bad):
            raise ValueError(f"nsd_ids {np.unique(bad)[:10].tolist()} are not in the stimulus brick {brick_path} "
                             f"(rows 0..{ds.shape[0] - 1})")
        uniq, inverse = np.unique(ids, return_inverse=True)
        out = np.empty((len(uniq), *ds.shape[1:]), dtype=np.uint8)
        for s in tqdm(range(0, len(uniq), batch), desc="ground truth", leave=False):
            out[s : s + batch] = ds[uniq[s : s + batch].tolist()]
    return out[inverse]


def read_exclusion_list(path) -> np.ndarray:
    """Sorted unique 0-based nsdIds of an exclusion list (module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exclusion list {path} does not exist")
    text = path.read_text()
    values: list[int] = []
    if path.suffix.lower() == ".csv":
        import pandas as pd

        df = pd.read_csv(path, comment="#")
        cols = [c for c in df.columns if str(c).strip() in ("nsdId", "nsd_id", "nsdid")]
        if cols:
            col = df[cols[0]]
        elif df.shape[1] == 1:  # headerless one-column list: the header row is a value
            col = pd.read_csv(path, comment="#", header=None).iloc[:, 0]
        else:
            raise ValueError(f"exclusion list {path}: no 'nsdId' column among {list(df.columns)}")
        try:
            values = [int(v) for v in col.dropna().tolist()]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"exclusion list {path}: non-integer nsdId: {exc}") from None
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0]
            for tok in re.split(r"[,\s]+", line.strip()):
                if not tok:
                    continue
                try:
                    values.append(int(tok))
                except ValueError:
                    raise ValueError(f"exclusion list {path}, line {lineno}: {tok!r} is not an integer nsdId") from None
    arr = np.asarray(values, dtype=np.int64)
    if len(arr) == 0:
        raise ValueError(f"exclusion list {path} holds no nsdIds")
    if (arr < 0).any():
        raise ValueError(f"exclusion list {path}: negative nsdIds {arr[arr < 0][:5].tolist()} (0-based ids expected)")
    return np.unique(arr)


def split_test_ids(stimuli_csvs) -> np.ndarray:
    """nsdIds of the test split shared by every given stimulus table
    (``results/prepared/stimuli/subjXX.csv``: columns ``nsdId``, ``split``); one table for a
    subject, all subjects' tables for the subject average."""
    import pandas as pd

    if isinstance(stimuli_csvs, (str, Path)):
        stimuli_csvs = [stimuli_csvs]
    common = None
    for p in stimuli_csvs:
        df = pd.read_csv(p)
        for col in ("nsdId", "split"):
            if col not in df.columns:
                raise KeyError(f"{p}: no column {col!r} (has {list(df.columns)})")
        ids = set(df.loc[df["split"] == "test", "nsdId"].astype(int))
        common = ids if common is None else common & ids
    if not common:
        raise ValueError(f"no test images common to {list(map(str, stimuli_csvs))}")
    return np.array(sorted(common), dtype=np.int64)


# --------------------------------------------------------------------------- the stage
def evaluate_reconstruction(inputs, outputs, settings: EvalSettings, *, ids: dict, nets, runtime: Runtime) -> dict:
    """Evaluate one ``images.h5`` and write its CSVs; returns ``{"all": row, "excluded": row|None}``.

    inputs: ``images`` (images.h5), ``brick`` (the stimulus brick), ``stimuli`` (stimulus table(s) of the
    subject — all subjects for the average: the reconstructed nsd_ids must be test images of all of them,
    :func:`split_test_ids`; a training image or an unknown id is an error, fewer images than the split is
    logged and visible in ``n_images``), ``exclude`` (optional exclusion list file).
    outputs: ``csv``; with an exclusion list ``excluded`` (required) gets the row computed without those
    images (``subset`` = :func:`~.plan.exclusion_tag`), identification recomputed on what is left;
    ``per_image`` (optional) the per-image values (:meth:`~.suite.ScoreBank.per_image`, on all images) with
    ``nsd_id`` and, with an exclusion list, ``excluded``.
    settings: the metrics and their conventions (:class:`~.plan.EvalSettings`).
    ids: identifying columns put first in every CSV (e.g. method, variant, subject, weights).
    nets: ``{net: model}``, or a callable ``names -> {net: model}`` (e.g. a partial of
    :func:`load_eval_nets`) called with the nets the resolved metrics need.
    runtime: device, dtype (autocast on CUDA) and images per net call.
    All outputs are written only after every value was computed, each atomically.
    """
    images_h5, brick, stimuli = inputs["images"], inputs["brick"], inputs.get("stimuli")
    exclude = inputs.get("exclude")
    out_csv, excluded_csv, per_image_csv = outputs["csv"], outputs.get("excluded"), outputs.get("per_image")
    if exclude is not None and excluded_csv is None:
        raise ValueError("an exclusion list needs excluded_csv (where the table without those images goes)")
    if exclude is None and excluded_csv is not None:
        raise ValueError("excluded_csv given without an exclusion list")
    rec = read_reconstructions(images_h5)
    log.info("%s: %d images x %d sample(s) of %s px", images_h5, len(rec.nsd_ids), rec.n_samples,
             rec.images.shape[-3:-1])
    if stimuli:
        split = split_test_ids(stimuli)
        outside = np.setdiff1d(rec.nsd_ids, split)
        if len(outside):
            raise ValueError(f"{images_h5}: nsd_ids {outside[:10].tolist()} are not test images of "
                             f"{[str(p) for p in ([stimuli] if isinstance(stimuli, (str, Path)) else stimuli)]}")
        if len(rec.nsd_ids) < len(split):
            log.warning("%s covers %d of the %d test images", images_h5, len(rec.nsd_ids), len(split))
    gt = read_ground_truth(brick, rec.nsd_ids)
    metrics = settings.columns(rec.images.ndim == 5)

    keep = None
    tag = None
    if exclude is not None:
        excl = read_exclusion_list(exclude)
        tag = exclusion_tag(exclude)
        keep = ~np.isin(rec.nsd_ids, excl)
        log.info("exclusion list %s: %d ids, %d of the %d evaluated images excluded", exclude, len(excl),
                 int((~keep).sum()), len(keep))
        if keep.sum() < 2:
            raise ValueError(f"exclusion list {exclude} leaves {int(keep.sum())} of {len(keep)} images; "
                             "at least 2 are needed")

    if callable(nets):
        nets = nets(required_nets(metrics, settings.nway_net))
    bank = compute_scores(gt, rec.images, nets, settings, metrics=metrics, runtime=runtime, nsd_ids=rec.nsd_ids)
    base = dict(ids)
    row_all = {**base, "subset": "all", "exclusion": "", "n_excluded": 0, **bank.summary()}
    row_excl = None
    if keep is not None:
        row_excl = {**base, "subset": tag, "exclusion": str(exclude), "n_excluded": int((~keep).sum()),
                    **bank.summary(keep)}
    per_image = None
    if per_image_csv is not None:
        import pandas as pd

        cols = {"nsd_id": rec.nsd_ids}
        if keep is not None:
            cols["excluded"] = ~keep
        cols.update(bank.per_image())
        per_image = pd.DataFrame(cols)
        for k, v in reversed(list(base.items())):
            per_image.insert(0, k, v)

    # every value exists: write
    with atomic_path(out_csv) as tmp:
        metrics_table([row_all]).to_csv(tmp, index=False)
    if row_excl is not None:
        with atomic_path(excluded_csv) as tmp:
            metrics_table([row_excl]).to_csv(tmp, index=False)
    if per_image is not None:
        with atomic_path(per_image_csv) as tmp:
            per_image.to_csv(tmp, index=False)
    return {"all": row_all, "excluded": row_excl}

