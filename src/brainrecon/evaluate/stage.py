"""The evaluation stage: one (method, variant, subject)'s reconstructions -> metric CSVs.

What the workflow's ``evaluate_recon`` rule runs (:func:`evaluate_reconstruction`), built on
the metric suite (:mod:`.metrics`, :mod:`.nets`, :mod:`.suite`):

1. :func:`read_reconstructions` reads ``images.h5`` (``images`` uint8 (n, S, S, 3) or
   (n, samples, S, S, 3), ``nsd_ids`` (n,), ``seeds``) and checks it;
2. :func:`read_ground_truth` reads only those rows of the NSD ``imgBrick`` (row = nsdId,
   uint8 425 x 425 x 3), in the images.h5 order;
3. :func:`compute_scores` extracts every net's features **once** (batched, all layers of a net
   in one pass) and keeps per-image pixel scores and the GT x reconstruction correlation
   matrices; :meth:`ScoreBank.summary` then gives the metric values on any subset of the images
   (all test images, or all but an exclusion list) exactly as :func:`~.suite.evaluate_all`
   defines them - identification is recomputed *within* the subset, not averaged from the
   full set - and :meth:`ScoreBank.per_image` the per-image values;
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

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_dir, atomic_path
from ..report.targets import exclusion_tag
from .metrics import (
    SSIM_KWARGS,
    corr_matrix,
    identification_from_mean_corr,
    nway_top1,
    resize_images,
    two_way_from_corr,
)
from .nets import NET_NAMES, SWAV_URL, TORCHVISION_NETS, _TV_WEIGHTS, build_eval_net, extract_features
from .suite import (
    BRAINDIFFUSER_COLUMNS,
    TAKAGI_COLUMNS,
    check_eval_inputs,
    metric_spec,
    metrics_table,
    required_nets,
)

log = logging.getLogger(__name__)

__all__ = [
    "EVAL_WEIGHTS",
    "EVALNETS_MANIFEST",
    "Reconstructions",
    "ScoreBank",
    "eval_net_files",
    "fetch_eval_nets",
    "load_eval_nets",
    "read_reconstructions",
    "read_ground_truth",
    "read_exclusion_list",
    "exclusion_tag",
    "split_test_ids",
    "resolve_metrics",
    "compute_scores",
    "evaluate_reconstruction",
]

EVAL_WEIGHTS = ("tiny", "pretrained")
EVALNETS_MANIFEST = "evalnets.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- evaluation nets
def eval_net_files(nets=TORCHVISION_NETS) -> dict[str, tuple[str, str]]:
    """``{net: (url, file name)}`` of the pretrained weight files of the torchvision-based nets.

    URLs come from torchvision's weight enums (``AlexNet_Weights.IMAGENET1K_V1`` ...) and, for
    SwAV, :data:`~.nets.SWAV_URL`; the file name is the URL's basename (what
    :func:`~.nets.build_eval_net` looks for in ``cache_dir``). ``clip`` is not a file here (it is
    the models registry's ``clip`` folder) and is skipped.
    """
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
            url = getattr(tvm, enum_name)[member].url
        out[name] = (url, url.rsplit("/", 1)[-1])
    return out


_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_eval_nets(folder, nets=TORCHVISION_NETS, *, retries: int = 5, backoff_s: float = 2.0,
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
    files = eval_net_files(nets)
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
                build_eval_net(name, "pretrained", cache_dir=tmp)
        (tmp / EVALNETS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load_eval_nets(names, weights: str = "tiny", folder=None, clip_folder=None, seed: int = 0) -> dict:
    """``{net: model}`` for the evaluation nets ``names`` (CPU, eval mode).

    weights: ``"tiny"`` (seeded random weights, the same architecture classes; ``folder`` and
    ``clip_folder`` unused) or ``"pretrained"``: torchvision / SwAV nets from ``folder`` (written by
    :func:`fetch_eval_nets`), CLIP from ``clip_folder`` (models registry ``clip`` role folder).
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
            nets[name] = build_eval_net(name, "pretrained", seed=seed, cache_dir=folder)
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


def resolve_metrics(metrics=None, with_samples: bool = False, add_takagi: bool = True, nway_n=()) -> list[str]:
    """Metric columns to compute: ``metrics`` (default the Brain-Diffuser Table 1 columns), plus the
    Takagi (TN-) columns when the reconstructions have a sample axis and ``add_takagi``, plus
    ``{n}-way-top1`` for each n of ``nway_n``. Unknown names raise ``ValueError``."""
    out = list(BRAINDIFFUSER_COLUMNS if metrics is None else metrics)
    if with_samples and add_takagi:
        out += [c for c in TAKAGI_COLUMNS if c not in out]
    out += [f"{int(n)}-way-top1" for n in nway_n if f"{int(n)}-way-top1" not in out]
    for m in out:
        metric_spec(m, "inception_v3")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate metrics in {out}")
    return out


# --------------------------------------------------------------------------- scores
def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, dtype):
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if device.type != "cuda" or dtype in (None, torch.float32):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@dataclass
class ScoreBank:
    """Everything the metrics need, computed once for N images x S samples.

    pixel: ``{"PixCorr"|"SSIM": float64 (N, S)}`` per image and sample.
    corr: ``{(net, layer): float64 (N, N, S)}`` with ``corr[i, j, s] = corr(GT_i, recon_{j,s})``.
    logits: ``{(net, layer): (gt (N, C), recon (N, S, C))}`` for n-way columns.
    """

    metrics: list[str]
    n_images: int
    n_samples: int
    convention: str
    nway_net: str = "inception_v3"
    nway_trials: int = 100
    seed: int = 0
    pixel: dict = field(default_factory=dict)
    corr: dict = field(default_factory=dict)
    logits: dict = field(default_factory=dict)

    def _idx(self, idx):
        if idx is None:
            return np.arange(self.n_images)
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (self.n_images,):
                raise ValueError(f"boolean subset must have shape ({self.n_images},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if len(idx) < 2:
            raise ValueError(f"a subset of {len(idx)} image(s) cannot be evaluated (identification compares >= 2)")
        if len(np.unique(idx)) != len(idx) or idx.min() < 0 or idx.max() >= self.n_images:
            raise ValueError("subset indices must be distinct and lie in 0..N-1")
        return idx

    def summary(self, idx=None) -> dict:
        """``{"convention", "n_images", "n_samples", <metric>: value}`` on the images ``idx``
        (indices or boolean mask; default all) - the same numbers :func:`~.suite.evaluate_all` gives
        for ``gt[idx], recon[idx]``."""
        idx = self._idx(idx)
        out = {"convention": self.convention, "n_images": int(len(idx)), "n_samples": int(self.n_samples)}
        for m in self.metrics:
            sp = metric_spec(m, self.nway_net)
            if sp.kind in ("pixcorr", "ssim"):
                v = self.pixel[m][idx].mean()
            elif sp.kind == "nway":
                n_way = int(m.split("-", 1)[0])
                g, r = self.logits[(sp.net, sp.layer)]
                v = np.mean([nway_top1(g[idx], r[idx, k], n=n_way, trials=self.nway_trials, seed=self.seed)
                             for k in range(self.n_samples)])
            else:
                c = self.corr[(sp.net, sp.layer)][np.ix_(idx, idx)]  # (n, n, S)
                if sp.kind == "two_way":
                    v = np.mean([two_way_from_corr(c[:, :, k]) for k in range(self.n_samples)])
                elif sp.kind == "corr_dist":
                    v = np.mean(1.0 - np.einsum("iis->is", c))
                elif sp.kind == "takagi":
                    v = identification_from_mean_corr(c.mean(2))
                else:  # pragma: no cover
                    raise AssertionError(sp.kind)
            out[m] = float(v)
        return out

    def per_image(self) -> dict[str, np.ndarray]:
        """Per-image values on the full set, ``{metric: float64 (N,)}`` (mean over samples): PixCorr,
        SSIM, correlation distances; two-way: for reconstruction j, the fraction of GT i != j with
        r[i, j] < r[j, j]; Takagi: for GT i, the fraction of j != i with m[i, i] > m[i, j].
        Their means are the summary values. n-way columns are not per-image and are left out."""
        out = {}
        n = self.n_images
        for m in self.metrics:
            sp = metric_spec(m, self.nway_net)
            if sp.kind in ("pixcorr", "ssim"):
                out[m] = self.pixel[m].mean(1)
            elif sp.kind == "nway":
                continue
            else:
                c = self.corr[(sp.net, sp.layer)]
                diag = np.einsum("iis->is", c)  # (N, S)
                if sp.kind == "two_way":
                    out[m] = (c < diag[None, :, :]).sum(0).mean(1) / (n - 1)
                elif sp.kind == "corr_dist":
                    out[m] = (1.0 - diag).mean(1)
                elif sp.kind == "takagi":
                    mm = c.mean(2)
                    out[m] = (np.diagonal(mm)[:, None] > mm).sum(1) / (n - 1)
        return out


def _pixel_scores(gt, recon, want, batch_size, device, names=None) -> dict:
    """Per-image, per-sample PixCorr / SSIM (same definitions as :func:`~.metrics.pixcorr` /
    :func:`~.metrics.ssim_score`): ``{column: (N, S)}``."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    n, s = recon.shape[:2]
    size = gt.shape[1:3]
    if "SSIM" in want and min(size) < 11:
        raise ValueError(f"SSIM: gt images are {size} px; the 11x11 gaussian window (sigma 1.5) needs >= 11 px")
    out = {m: np.empty((n, s), dtype=np.float64) for m in want}
    for start in tqdm(range(0, n, batch_size), desc="pixel metrics", leave=False):
        g = gt[start : start + batch_size].astype(np.float64) / 255.0
        g_gray = [rgb2gray(x) for x in g] if "SSIM" in want else None
        for k in range(s):
            r = resize_images(recon[start : start + batch_size, k], size, device).permute(0, 2, 3, 1).cpu().numpy()
            for b in range(len(g)):
                i = start + b
                if "PixCorr" in want:
                    gc = g[b].ravel() - g[b].mean()
                    rc = r[b].ravel() - r[b].mean()
                    den = np.sqrt((gc @ gc) * (rc @ rc))
                    if den == 0:
                        label = f"nsdId {names[i]}" if names is not None else f"image {i}"
                        raise ValueError(f"PixCorr: {label} (sample {k}) is constant in gt or recon; r undefined")
                    out["PixCorr"][i, k] = gc @ rc / den
                if "SSIM" in want:
                    out["SSIM"][i, k] = structural_similarity(g_gray[b], rgb2gray(r[b]), **SSIM_KWARGS)
    return out


def compute_scores(gt, recon, nets: dict, metrics=None, convention: str = "braindiffuser",
                   batch_size: int = 32, device=None, dtype="float32", nway_net: str = "inception_v3",
                   nway_trials: int = 100, seed: int = 0, nsd_ids=None) -> ScoreBank:
    """Per-image scores of one reconstruction set (see :class:`ScoreBank`).

    gt: uint8 (N, H, W, 3); recon: uint8 (N, h, w, 3) or (N, S, h, w, 3), row i = image i.
    nets: ``{net: model}`` (:func:`load_eval_nets`) covering the metrics' nets. metrics: column
    names (default: :func:`resolve_metrics`). Features are extracted once per net with all its
    layers (:func:`~.nets.extract_features`, ``batch_size`` images at a time, on ``device``, under
    autocast to ``dtype`` on CUDA; CPU always float32); correlations are float64.
    nsd_ids only name images in error messages.
    """
    gt, recon, _, metrics, specs = check_eval_inputs(gt, recon, nets, metrics, convention, nway_net,
                                                     lambda with_samples: resolve_metrics(None, with_samples))
    n, s = recon.shape[:2]
    dev = _resolve_device(device)
    bank = ScoreBank(metrics, n, s, convention, nway_net, nway_trials, seed)

    pix = [sp.column for sp in specs if sp.kind in ("pixcorr", "ssim")]
    if pix:
        bank.pixel = _pixel_scores(gt, recon, pix, batch_size, dev, names=nsd_ids)

    flat = recon.reshape(n * s, *recon.shape[2:])
    for net_name in NET_NAMES:
        net_specs = [sp for sp in specs if sp.net == net_name]
        if not net_specs:
            continue
        layers = list(dict.fromkeys(sp.layer for sp in net_specs))
        model = nets[net_name]
        with _autocast(dev, dtype):
            gt_f = extract_features(net_name, model, gt, layers, convention, batch_size, dev)
            rec_f = extract_features(net_name, model, flat, layers, convention, batch_size, dev)
        for layer in layers:
            kinds = {sp.kind for sp in net_specs if sp.layer == layer}
            if kinds - {"nway"}:
                c = corr_matrix(gt_f[layer], rec_f[layer], dev, a_name=f"gt {net_name}.{layer}",
                                b_name=f"recon {net_name}.{layer}")
                bank.corr[(net_name, layer)] = c.numpy().reshape(n, n, s)
            if "nway" in kinds:
                bank.logits[(net_name, layer)] = (gt_f[layer], rec_f[layer].reshape(n, s, -1))
        del gt_f, rec_f
        model.to("cpu")
    return bank


# --------------------------------------------------------------------------- the stage
def evaluate_reconstruction(
    images_h5,
    brick,
    out_csv,
    *,
    ids: dict,
    nets: dict,
    metrics=None,
    add_takagi: bool = True,
    nway_n=(),
    nway_trials: int = 100,
    nway_net: str = "inception_v3",
    convention: str = "braindiffuser",
    batch_size: int = 32,
    device=None,
    dtype="float32",
    seed: int = 0,
    stimuli=None,
    exclude=None,
    excluded_csv=None,
    per_image_csv=None,
) -> dict:
    """Evaluate one ``images.h5`` and write its CSVs; returns ``{"all": row, "excluded": row|None}``.

    ids: identifying columns put first in every CSV (e.g. method, variant, subject, weights).
    nets: ``{net: model}``, or a callable ``names -> {net: model}`` (e.g. a partial of
    :func:`load_eval_nets`) called with the nets the resolved metrics need.
    stimuli: stimulus table(s) of the subject (all subjects for the average): the reconstructed
    nsd_ids must be test images of all of them (:func:`split_test_ids`) - a training image or an
    unknown id is an error; fewer images than the split is logged and visible in ``n_images``.
    exclude: exclusion list file; then ``excluded_csv`` (required) gets the row computed without
    those images (``subset`` = :func:`exclusion_tag`), identification recomputed on what is left.
    per_image_csv: optional per-image values (:meth:`ScoreBank.per_image`, on all images) with
    ``nsd_id`` and, with an exclusion list, ``excluded``. All outputs are written only after every
    value was computed, each atomically.
    """
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
    metrics = resolve_metrics(metrics, rec.images.ndim == 5, add_takagi, nway_n)

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
        nets = nets(required_nets(metrics, nway_net))
    bank = compute_scores(gt, rec.images, nets, metrics, convention, batch_size, device, dtype,
                          nway_net, nway_trials, seed, nsd_ids=rec.nsd_ids)
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

