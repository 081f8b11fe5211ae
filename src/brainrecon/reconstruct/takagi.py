"""Takagi & Nishimoto reconstruction (CVPR 2023) and its decoded-input extensions (+T, +D).

Inputs are the regression stage's test predictions (``results/regression/<space>/subjXX.h5``):
``sdz`` (n, 4, 40, 40) Stable Diffusion v1.4 VAE latents (× 0.18215, image at 320 px), ``sdc``
(n, 77, 768) SD text contexts, ``blip`` (n, 226, 768) BLIP ViT tokens, ``dpt`` (n, 4·577, 1024)
DPT-large hidden states (4 backbone layers × 577 tokens).

The method (paper §3.3 and the authors' ``diffusion_sd1/diffusion_decoding.py``), per test image:

1. **X_z** (:func:`decode_z`): predicted z → SD VAE decoder → image at 8 × 40 = 320 px → uint8 →
   bicubic resize to ``image_size`` (512). Stored as ``stage1``.
2. **img2img** through the one shared loop (:func:`brainrecon.models.diffusion.img2img` via
   :func:`~brainrecon.models.diffusion.sd_img2img`): X_z is VAE-encoded (posterior sample),
   DDIM with ``steps`` = 50 and ``strength`` = 0.8 keeps the last ``int(0.8 · 50) = 40`` timesteps
   (exactly the reference's ``t_enc``), noised to the first, denoised with eta 0 and classifier-free
   guidance ``guidance_scale`` = 5.0 against the empty-prompt context, conditioned on the predicted c.
3. ``n_samples`` = 5 samples per image, each with its own seed.

Variants (``methods.takagi.variants``; each has its own output folder), see :func:`variant_spec`:

======= ================ ======================================= ========================================
variant init             text condition                          what it reads
======= ================ ======================================= ========================================
zc      X_z (40 steps)   predicted c                             sdz, sdc            (CVPR "z_c")
z       X_z (40 steps)   empty prompt (no CFG: both branches     sdz                 (CVPR "z only")
                         are the same context)
c       pure noise       predicted c                             sdc                 (CVPR "c only")
        (all 50 steps)
t       X_z (40 steps)   SD text context of the caption BLIP     sdz, captions       (+T, 2023 tech report)
                         decodes from the predicted ViT tokens
td      X_z (40 steps),  caption as in ``t`` (SD2's text         sdz, captions, depth (+T+D without +G)
        SD2-depth        encoder); depth map decoded from the
                         predicted DPT hidden states as 5th
                         UNet input channel
======= ================ ======================================= ========================================

What the papers say about the single-input variants: the CVPR paper shows reconstructions "using only
z", "only c" and "z_c" (its Fig. 3) but gives no sampler for the first two, and the public code has no
mode for them. We define *z only* as the same img2img with c replaced by the SD text context of the
empty prompt (the unconditional context, so guidance is moot and the conditional branch alone runs),
and *c only* as generation from pure Gaussian noise over the full DDIM grid (all ``steps`` steps,
i.e. text-to-image) conditioned on the predicted c. The decoded image X_z itself (the paper's
"coarse decoded image" before diffusion) is stored as ``stage1`` in every variant that uses z.
Pure-noise init reuses the shared loop with a standard-normal start latent
(:func:`~brainrecon.models.diffusion.random_latents` as ``init_latents``, drawn from each
sample's generator), so the latent noised to the first timestep of a strength-1 schedule is
exactly N(0, I).

+T (:func:`decode_captions`): BLIP's text decoder generates from the predicted visual tokens
(cross-attention keys/values), beam search with ``num_beams`` 3, ``max_length`` 20, ``min_length`` 5
(lengths in tokens of the whole sequence, BOS and prompt included, as in HF/BLIP ``generate``),
``repetition_penalty`` 1.5, prompt "a picture of " (the BLIP decoder's prompt in the reference,
stripped from the caption). Special tokens other than [SEP] (end) are suppressed, so a caption is
never empty (a trained BLIP never emits them anyway). Captions are decoded once per image and shared
by the 5 samples.

+D (:func:`decode_depth`): the DPT neck + head turn predicted hidden states (4 layers of 577 tokens)
into a depth map (384×384 for DPT-large), bicubic-resized to the latent size of the SD2-depth UNet
(64×64 at 512 px) and min–max normalised per image to [-1, 1] (constant maps become 0), as the
reference ``dptemb2dpt.py``. SD2-depth img2img concatenates it to the latents as the UNet's 5th
input channel (``extra_latent_channels``), in both CFG branches; strength 0.8, CFG 5, 5 samples.
The init image is X_z decoded with the SD1.4 VAE (predicted z lives in its latent space) and encoded
by SD2's VAE. (+G, the GAN init of the tech report, is not implemented.)

Seeds: sample s of image nsdId of subject XX uses ``torch.Generator().manual_seed(seed_{XX,nsdId,s})``
with ``seed_{XX,nsdId,s} = derive_seed(seed, XX, nsdId, s)`` (:func:`sample_seed`); the generator
draws the VAE posterior sample of the init, then the init noise (then DDIM noise if eta > 0). Seeds
do not depend on the variant (paired comparisons), the batch or the device; a sample re-run alone
from its recorded seed is identical. Outputs (:func:`reconstruct_to_files`): ``images.h5`` —
``images`` uint8 (n, n_samples, S, S, 3), ``nsd_ids`` (n,), ``seeds`` (n, n_samples) int64,
``stage1`` uint8 (n, S, S, 3) where z is used, ``captions`` (n,) UTF-8 strings for t/td, ``depth``
(n, 1, h, w) float32 for td; attrs: every setting, the variant, the steps run and timesteps — and
``png/<nsdId>_<sample>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_dir, atomic_path, write_text_atomic
from .common import BatchOutputs, derive_seed, image_outputs, subject_code, to_uint8, upsample

log = logging.getLogger(__name__)

from .takagi_variants import (  # noqa: F401  (re-exported: the torch-free part of the method)
    METHOD,
    SPACES,
    VARIANTS,
    CaptionSettings,
    Settings,
    VariantSpec,
    num_denoising_steps,
    variant_settings,
    variant_spec,
)


# ----------------------------------------------------------------------------- seeds
def sample_seed(seed: int, subject, nsd_id: int, sample: int) -> int:
    """Seed of sample ``sample`` of image ``nsd_id`` of ``subject`` ("01" or 1; "avg" = 0)."""
    if int(nsd_id) < 0 or int(sample) < 0:
        raise ValueError(f"nsdId and sample must be >= 0, got {nsd_id}, {sample}")
    return derive_seed(int(seed) & 0xFFFFFFFFFFFFFFFF, subject_code(subject), int(nsd_id), int(sample))


def sample_seeds(seed: int, subject, nsd_ids: Sequence[int], n_samples: int) -> np.ndarray:
    """(n, n_samples) int64 seeds (:func:`sample_seed`)."""
    return np.asarray([[sample_seed(seed, subject, k, s) for s in range(n_samples)] for k in nsd_ids],
                      dtype=np.int64).reshape(len(nsd_ids), n_samples)


# ----------------------------------------------------------------------------- helpers
def _finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    return x


# ----------------------------------------------------------------------------- X_z
@torch.no_grad()
def decode_z(vae, latents, image_size: int) -> np.ndarray:
    """X_z: predicted scaled latents (b, 4, h, w) → VAE decode (b, 8h, 8w) → uint8 → bicubic to
    ``image_size``. Returns (b, image_size, image_size, 3) uint8."""
    from ..models.diffusion import vae_decode

    lat = _finite(np.asarray(latents, dtype=np.float32), "predicted z")
    c = int(vae.config.latent_channels)
    if lat.ndim != 4 or lat.shape[1] != c:
        raise ValueError(f"predicted z must be (b, {c}, h, w), got shape {lat.shape}")
    decoded = to_uint8(vae_decode(vae, torch.from_numpy(lat)))
    return upsample(decoded, int(image_size))


# ----------------------------------------------------------------------------- +T captions
@torch.no_grad()
def decode_captions(blip_parts, visual_tokens, settings: CaptionSettings | None = None,
                    progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Captions from predicted BLIP ViT tokens.

    blip_parts: role ``blip`` (``model`` BlipForConditionalGeneration, ``processor``).
    visual_tokens: (n, T, D) array-like (T = 226 at 240 px for the real model; any T works: the
        tokens are cross-attention keys/values); D must be the vision hidden size.
    Returns (captions: n strings without the prompt, n_tokens: (n,) int64 lengths of the generated
    token sequences, BOS + prompt + new tokens + [SEP] if emitted — the unit of min/max_length).
    """
    s = settings or CaptionSettings()
    model = blip_parts.model
    tok = blip_parts.processor.tokenizer
    tcfg = model.config.text_config
    dim = int(model.config.vision_config.hidden_size)
    n = len(visual_tokens)
    if n == 0:
        raise ValueError("no visual tokens to caption")
    first = np.asarray(visual_tokens[0:1])
    if first.ndim != 3 or first.shape[-1] != dim:
        raise ValueError(f"BLIP visual tokens must be (n, tokens, {dim}), got rows of shape {first.shape[1:]}")
    p = next(model.parameters())
    prompt_ids = tok([s.prompt], return_tensors="pt").input_ids
    prompt_ids[:, 0] = tcfg.bos_token_id
    prompt_ids = prompt_ids[:, :-1]  # drop [SEP]: the decoder continues the prompt
    if prompt_ids.shape[1] >= s.max_length:
        raise ValueError(f"caption prompt {s.prompt!r} has {prompt_ids.shape[1]} tokens, max_length is {s.max_length}")
    special = {int(i) for i in tok.all_special_ids} | {int(tcfg.bos_token_id), int(tcfg.pad_token_id)}
    suppress = sorted(special - {int(tcfg.sep_token_id)})
    captions: list[str] = []
    lengths: list[int] = []
    prefix = " ".join(tok.decode(prompt_ids[0], skip_special_tokens=True).split())
    for i0 in tqdm(range(0, n, s.batch_size), desc="BLIP captions", disable=not progress):
        emb = torch.as_tensor(_finite(np.asarray(visual_tokens[i0:i0 + s.batch_size], dtype=np.float32),
                                      "predicted BLIP tokens")).to(p.device, p.dtype)
        b = emb.shape[0]
        out = model.text_decoder.generate(
            input_ids=prompt_ids.repeat(b, 1).to(p.device),
            encoder_hidden_states=emb,
            encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long, device=p.device),
            eos_token_id=tcfg.sep_token_id, pad_token_id=tcfg.pad_token_id,
            num_beams=s.num_beams, max_length=s.max_length, min_length=s.min_length,
            repetition_penalty=s.repetition_penalty, do_sample=False, suppress_tokens=suppress,
        )
        for seq in out.cpu():
            seq = seq.tolist()
            # generated length: up to and including the first [SEP] (later positions are padding)
            end = seq.index(tcfg.sep_token_id) + 1 if tcfg.sep_token_id in seq[prompt_ids.shape[1]:] else len(seq)
            lengths.append(end)
            text = " ".join(tok.decode(seq[:end], skip_special_tokens=True).split())
            if prefix and text.startswith(prefix):
                text = text[len(prefix):].strip()
            captions.append(text)
    return captions, np.asarray(lengths, dtype=np.int64)


def write_captions_csv(path, nsd_ids, captions, n_tokens) -> None:
    """Captions table (atomic): columns nsdId, caption, n_tokens."""
    import pandas as pd

    if not (len(nsd_ids) == len(captions) == len(n_tokens)):
        raise ValueError(f"{len(nsd_ids)} nsdIds, {len(captions)} captions, {len(n_tokens)} lengths")
    df = pd.DataFrame({"nsdId": np.asarray(nsd_ids, np.int64), "caption": list(captions),
                       "n_tokens": np.asarray(n_tokens, np.int64)})
    write_text_atomic(path, df.to_csv(index=False))


def read_captions_csv(path, nsd_ids=None) -> list[str]:
    """Captions of ``nsd_ids`` (default: all, file order) from :func:`write_captions_csv`'s table."""
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=False)
    for col in ("nsdId", "caption"):
        if col not in df.columns:
            raise KeyError(f"{path}: no column {col!r} (have {list(df.columns)})")
    table = dict(zip(df["nsdId"].astype(np.int64), df["caption"].astype(str)))
    if nsd_ids is None:
        return list(df["caption"].astype(str))
    missing = [int(k) for k in nsd_ids if int(k) not in table]
    if missing:
        raise KeyError(f"{path}: no caption for nsdId(s) {missing[:10]}")
    return [table[int(k)] for k in nsd_ids]


# ----------------------------------------------------------------------------- +D depth
def dpt_hidden_layout(dpt_model) -> tuple[int, int, int]:
    """(layers, tokens, dim) of the hidden states the DPT neck takes (dpt-large: 4, 577, 1024)."""
    cfg = dpt_model.config
    layers = len(cfg.backbone_out_indices)
    image = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
    tokens = (image // cfg.patch_size) ** 2 + 1
    return layers, tokens, int(cfg.hidden_size)


@torch.no_grad()
def decode_depth(dpt_model, hidden, size: int | tuple[int, int]) -> np.ndarray:
    """Depth maps from predicted DPT hidden states.

    hidden: (b, L·T, D), (b, L, T, D) or flat (b, L·T·D) (L backbone layers, T tokens incl. CLS, D hidden
        size; layer-major, as the ``dpt`` feature space stores them).
    size: output side(s) — the latent size of the depth-conditioned UNet (64 at 512 px).
    Returns (b, 1, h, w) float32 in [-1, 1]: neck + head → bicubic resize → per-image min–max
    to [-1, 1] (constant maps → 0).
    """
    L, T, D = dpt_hidden_layout(dpt_model)
    h = _finite(np.asarray(hidden, dtype=np.float32), "predicted DPT hidden states")
    if (h.ndim == 3 and h.shape[1:] == (L * T, D)) or (h.ndim == 2 and h.shape[1] == L * T * D):
        h = h.reshape(h.shape[0], L, T, D)
    if h.ndim != 4 or h.shape[1:] != (L, T, D):
        raise ValueError(f"DPT hidden states must be (b, {L * T}, {D}) or (b, {L}, {T}, {D}), got {h.shape}")
    p = next(dpt_model.parameters())
    x = torch.from_numpy(h).to(p.device, p.dtype)
    feats = dpt_model.neck([x[:, i] for i in range(L)])
    depth = dpt_model.head(feats).float()  # (b, H, W)
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    cc = torch.nn.functional.interpolate(depth[:, None], size=size, mode="bicubic", align_corners=False)
    lo = cc.amin(dim=(1, 2, 3), keepdim=True)
    hi = cc.amax(dim=(1, 2, 3), keepdim=True)
    rng = hi - lo
    out = torch.where(rng > 1e-12, 2.0 * (cc - lo) / rng.clamp_min(1e-12) - 1.0, torch.zeros_like(cc))
    return out.cpu().numpy().astype(np.float32)


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """(b, 1, h, w) in [-1, 1] → (b, h, w) uint8 greyscale for inspection."""
    d = np.asarray(depth, dtype=np.float32)[:, 0]
    return np.round((np.clip(d, -1, 1) + 1) * 127.5).astype(np.uint8)


def write_depth(path, png_dir, nsd_ids, depth, attrs: Mapping | None = None) -> None:
    """Depth maps (atomic): ``depth`` (n, 1, h, w) float32, ``nsd_ids``; and ``png_dir/<nsdId>.png``."""
    from PIL import Image

    depth = np.asarray(depth, np.float32)
    if depth.ndim != 4 or depth.shape[0] != len(nsd_ids):
        raise ValueError(f"depth must be (n, 1, h, w) for {len(nsd_ids)} nsdIds, got {depth.shape}")
    with atomic_path(path) as tmp, atomic_dir(png_dir) as ptmp:
        with h5py.File(tmp, "w") as f:
            f["depth"] = depth
            f["nsd_ids"] = np.asarray(nsd_ids, np.int64)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
        for k, im in zip(nsd_ids, depth_to_uint8(depth)):
            Image.fromarray(im).save(Path(ptmp) / f"{int(k)}.png")


def read_depth(path, nsd_ids) -> np.ndarray:
    """Depth maps of ``nsd_ids`` (in that order) from :func:`write_depth`'s file."""
    with h5py.File(path, "r") as f:
        for key in ("depth", "nsd_ids"):
            if key not in f:
                raise KeyError(f"{path}: missing {key!r}")
        ids = f["nsd_ids"][:].astype(np.int64)
        rows = _rows_of(ids, nsd_ids, str(path))
        return f["depth"][:][rows]


# ----------------------------------------------------------------------------- predictions
def _rows_of(have: np.ndarray, want, where: str) -> np.ndarray:
    pos = {int(k): i for i, k in enumerate(have)}
    missing = [int(k) for k in want if int(k) not in pos]
    if missing:
        raise KeyError(f"{where}: no rows for nsdId(s) {missing[:10]}")
    return np.asarray([pos[int(k)] for k in want], dtype=np.int64)


class Predictions:
    """Row access to a regression output file: ``pred`` (or ``pred_restd``) in the order of ``nsd_ids``.

    key: ``"pred"`` (raw predictions; Takagi) or ``"pred_restd"``. Rows are read lazily
    (``obj[i0:i1]`` → float32 numpy), so large spaces (DPT: 9 GB at NSD scale) are never loaded whole.
    """

    def __init__(self, path, key: str = "pred", nsd_ids=None):
        self.path = str(path)
        self.f = h5py.File(path, "r")
        for k in (key, "nsd_ids"):
            if k not in self.f:
                self.f.close()
                raise KeyError(f"{path}: missing {k!r} (regression output expected)")
        self.ds = self.f[key]
        ids = self.f["nsd_ids"][:].astype(np.int64)
        self.nsd_ids = ids if nsd_ids is None else np.asarray(nsd_ids, np.int64)
        self.rows = np.arange(ids.size) if nsd_ids is None else _rows_of(ids, self.nsd_ids, self.path)
        self.shape = (self.rows.size, *self.ds.shape[1:])

    def __len__(self):
        return int(self.rows.size)

    def __getitem__(self, sl):
        if not isinstance(sl, slice):
            raise IndexError("Predictions supports row slices only")
        rows = self.rows[sl]
        order = np.argsort(rows)
        block = self.ds[np.sort(rows).tolist()] if rows.size else np.empty((0, *self.ds.shape[1:]))
        out = np.empty_like(block)
        out[order] = block
        return out.astype(np.float32)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def common_nsd_ids(paths: Sequence) -> np.ndarray:
    """nsdIds present in every regression file of ``paths`` (ascending); error if none."""
    common = None
    for p in paths:
        with h5py.File(p, "r") as f:
            if "nsd_ids" not in f:
                raise KeyError(f"{p}: missing 'nsd_ids'")
            ids = f["nsd_ids"][:].astype(np.int64)
        common = ids if common is None else np.intersect1d(common, ids)
    if common is None or common.size == 0:
        raise ValueError(f"no test image is shared by {list(map(str, paths))}")
    return np.sort(common)


# ----------------------------------------------------------------------------- img2img
def _empty_context(parts) -> torch.Tensor:
    from ..models.sd import sd_unconditional

    return sd_unconditional(parts)


@torch.no_grad()
def run_img2img(parts, spec: VariantSpec, settings: Settings, init_images, text_ctx, seeds: Sequence[int], *,
                depth=None, uncond=None, dtype: torch.dtype | None = None):
    """One batch of image-samples through the shared loop (:func:`~brainrecon.models.diffusion.sd_img2img`).

    init_images: (b, S, S, 3) uint8 X_z (ignored but sized for ``init="noise"``);
    text_ctx: (b, 77, D) float context; seeds: one per item; depth: (b, 1, h, w) for SD2-depth;
    uncond: the empty-prompt context (computed if None). Returns (images (b, S, S, 3) uint8,
    steps run, timesteps).
    """
    from ..models.diffusion import Sampler, random_latents, sd_img2img, vae_factor

    b = len(seeds)
    init = np.asarray(init_images)
    text = torch.as_tensor(_finite(np.asarray(text_ctx, dtype=np.float32), "text contexts"))
    if init.shape[0] != b or text.shape[0] != b:
        raise ValueError(f"{b} seeds but {init.shape[0]} init images and {text.shape[0]} text contexts")
    dim = int(parts.unet.config.cross_attention_dim)
    if text.ndim != 3 or text.shape[-1] != dim:
        raise ValueError(f"text contexts must be (b, tokens, {dim}) for this UNet, got {tuple(text.shape)}")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    init_in, init_lat = torch.from_numpy(np.ascontiguousarray(init)), None
    strength = settings.strength
    if spec.init == "noise":  # standard-normal z0 noised at t = first of the full grid: N(0, I)
        init_in, init_lat = None, random_latents(parts.vae, init.shape[1], gens)
        strength = 1.0
    extra = None
    in_ch = int(parts.unet.config.in_channels)
    lat_ch = int(parts.vae.config.latent_channels)
    if spec.depth:
        if depth is None:
            raise ValueError(f"variant {spec.name!r} needs depth maps")
        extra = torch.as_tensor(np.asarray(depth, dtype=np.float32))
        side = init.shape[1] // vae_factor(parts.vae)
        if extra.shape != (b, in_ch - lat_ch, side, side):
            raise ValueError(f"depth maps must be ({b}, {in_ch - lat_ch}, {side}, {side}) for this UNet at "
                             f"{init.shape[1]} px, got {tuple(extra.shape)}")
    elif in_ch != lat_ch:
        raise ValueError(f"the UNet takes {in_ch} input channels but variant {spec.name!r} gives only the "
                         f"{lat_ch} latent channels")
    guidance = settings.guidance_scale
    if spec.text == "empty":
        guidance = 1.0  # conditional context == unconditional context: CFG is the identity
    if uncond is None and guidance > 1.0:
        uncond = _empty_context(parts)
    sampler = Sampler(steps=int(settings.steps), strength=float(strength), guidance_scale=float(guidance),
                      eta=float(settings.eta), posterior="sample")
    res = sd_img2img(parts, init_in, text, uncond=uncond, generator=gens, sampler=sampler, dtype=dtype,
                     extra_latent_channels=extra, init_latents=init_lat)
    return to_uint8(res.images), int(res.num_steps), list(res.timesteps)


@dataclass
class Reconstruction:
    """images (n, n_samples, S, S, 3) uint8; stage1 (n, S, S, 3) uint8 or None; nsd_ids; seeds
    (n, n_samples); captions (or None); num_steps (per sample); timesteps."""

    images: np.ndarray
    stage1: np.ndarray | None
    nsd_ids: np.ndarray
    seeds: np.ndarray
    captions: list[str] | None
    num_steps: int
    timesteps: list[int]


def _rows(source, i0, i1):
    return None if source is None else np.asarray(source[i0:i1], dtype=np.float32)


@torch.no_grad()
def reconstruct(variant: str, nsd_ids: Sequence[int], subject, settings: Settings, *, sd_parts=None,
                sd2_parts=None, z=None, c=None, captions: Sequence[str] | None = None, depth=None,
                dtype: torch.dtype | None = None, samples: Sequence[int] | None = None,
                sink: Callable[[int, np.ndarray, np.ndarray | None], None] | None = None, keep: bool = True,
                progress: bool = True) -> Reconstruction:
    """Reconstruct test images ``nsd_ids`` of one subject with one variant.

    z (n, 4, h, w), c (n, 77, D): row-sliceable predictions (numpy, :class:`Predictions`), row i
    belonging to ``nsd_ids[i]``; captions: n strings (t, td); depth: (n, 1, h', w') (td). Only what
    the variant needs (:func:`variant_spec`) is required; the rest is ignored, never read.
    sd_parts: role ``sd`` (img2img of z/c/zc/t; VAE decoding of z for td); sd2_parts: role ``sd2_depth``.
    samples: which sample indices to run (default all ``n_samples``; e.g. ``[3]`` to re-run one sample
    from its seed). sink(i0, images (k, n_s, S, S, 3), stage1 (k, S, S, 3) | None): called per chunk of
    images. keep: also return everything in memory.
    """
    spec = variant_spec(variant)
    ids = np.asarray(list(nsd_ids), dtype=np.int64)
    n = ids.size
    if n == 0:
        raise ValueError("nothing to reconstruct: no images")
    inputs = {"sdz": z, "sdc": c, "captions": captions, "depth": depth}
    for need in spec.needs:
        if inputs[need] is None:
            raise ValueError(f"variant {variant!r} needs the {need} input")
        if len(inputs[need]) != n:
            raise ValueError(f"{need} input has {len(inputs[need])} rows for {n} images")
    if sd_parts is None:
        raise ValueError("Takagi reconstruction needs the Stable Diffusion model (role 'sd')")
    parts = sd2_parts if spec.depth else sd_parts
    if parts is None:
        raise ValueError(f"variant {variant!r} needs the SD2-depth model (role 'sd2_depth')")
    sample_idx = list(range(settings.n_samples)) if samples is None else [int(s) for s in samples]
    if not sample_idx or any(not 0 <= s < settings.n_samples for s in sample_idx):
        raise ValueError(f"samples must be in [0, {settings.n_samples}), got {sample_idx}")
    all_seeds = sample_seeds(settings.seed, subject, ids, settings.n_samples)
    seeds = all_seeds[:, sample_idx]
    ns = len(sample_idx)
    S = int(settings.image_size)

    uncond = None
    if spec.text != "empty" and settings.guidance_scale > 1.0:
        uncond = _empty_context(parts)
    empty = _empty_context(parts) if spec.text == "empty" else None

    per_chunk = max(1, settings.batch_size // ns)
    num_steps, timesteps = 0, []
    outputs = BatchOutputs(sink, keep)
    for i0 in tqdm(range(0, n, per_chunk), desc=f"takagi {variant}", disable=not progress):
        i1 = min(i0 + per_chunk, n)
        k = i1 - i0
        stage1 = decode_z(sd_parts.vae, _rows(z, i0, i1), S) if spec.init == "z" else None
        if spec.text == "c":
            text = _rows(c, i0, i1)
        elif spec.text == "caption":
            from ..models.sd import encode_sd_text

            text = encode_sd_text(list(captions[i0:i1]), parts.text_encoder, parts.tokenizer).cpu().numpy()
        else:
            text = np.repeat(empty.cpu().numpy(), k, axis=0)
        dep = _rows(depth, i0, i1) if spec.depth else None
        init = stage1 if stage1 is not None else np.zeros((k, S, S, 3), np.uint8)
        # items = (image, sample) pairs of the chunk, run in batches of batch_size
        item_img = np.repeat(np.arange(k), ns)
        item_seed = seeds[i0:i1].reshape(-1)
        imgs = np.empty((k * ns, S, S, 3), np.uint8)
        for j0 in range(0, k * ns, settings.batch_size):
            sel = item_img[j0:j0 + settings.batch_size]
            res, steps_run, ts = run_img2img(
                parts, spec, settings, init[sel], text[sel], item_seed[j0:j0 + settings.batch_size],
                depth=None if dep is None else dep[sel], uncond=uncond, dtype=dtype,
            )
            imgs[j0:j0 + len(sel)] = res
            if (i0 or j0) and steps_run != num_steps:
                raise RuntimeError(f"a batch ran {steps_run} steps, earlier batches {num_steps}")
            num_steps, timesteps = steps_run, ts
        imgs = imgs.reshape(k, ns, S, S, 3)
        outputs.add(i0, imgs, stage1)
    return Reconstruction(
        images=outputs.images, stage1=outputs.stage1, nsd_ids=ids, seeds=seeds,
        captions=None if captions is None else list(captions),
        num_steps=num_steps, timesteps=timesteps,
    )


# ----------------------------------------------------------------------------- files
def reconstruct_to_files(variant: str, nsd_ids: Sequence[int], subject, settings: Settings, out_h5, png_dir, *,
                         attrs: Mapping | None = None, depth=None, captions=None, **kwargs) -> dict:
    """:func:`reconstruct`, streaming every chunk into ``out_h5`` and ``png_dir`` (both atomic).

    ``images.h5``: ``images`` (n, n_samples, S, S, 3) uint8, ``nsd_ids``, ``seeds`` (n, n_samples),
    ``stage1`` (variants using z), ``captions`` (t, td), ``depth`` (td); attrs: settings, variant,
    steps run, timesteps, ``attrs``. PNGs: ``<nsdId>_<sample>.png``. Returns a summary dict.
    """
    spec = variant_spec(variant)
    ids = np.asarray(list(nsd_ids), dtype=np.int64)
    n, ns, S = ids.size, settings.n_samples, settings.image_size
    with image_outputs(out_h5, png_dir, n=n, image_shape=(ns, S, S, 3),
                       stage1_shape=(S, S, 3) if spec.init == "z" else None,
                       png_names=lambda i: [f"{int(ids[i])}_{s}.png" for s in range(ns)]) as (f, sink):
        rec = reconstruct(variant, ids, subject, settings, depth=depth, captions=captions, sink=sink,
                          keep=False, **kwargs)
        f["nsd_ids"] = ids
        f["seeds"] = rec.seeds
        if spec.text == "caption":
            f.create_dataset("captions", data=np.asarray([str(t) for t in captions], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        if spec.depth:
            f["depth"] = np.asarray(depth[0:n], dtype=np.float32)
        meta = dict(method=METHOD, variant=variant, subject=str(subject), num_steps=rec.num_steps,
                    timesteps=json.dumps(rec.timesteps), variant_spec=json.dumps(dataclasses.asdict(spec)),
                    settings=json.dumps(settings.as_dict()), model=spec.model,
                    seed_rule="derive_seed(seed, subject, nsdId, sample)")
        for k, v in (attrs or {}).items():
            meta[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
        f.attrs.update(meta)
    summary = dict(variant=variant, subject=str(subject), n_images=int(n), n_samples=ns, num_steps=rec.num_steps,
                   out=str(out_h5))
    log.info("takagi %s subject %s: %s", variant, subject, summary)
    return summary


def load_models(spec: VariantSpec, sd_dir, sd2_dir=None, device="auto", dtype="float16"):
    """Load role ``sd`` (always: img2img or z decoding) and ``sd2_depth`` (variant td).
    Returns (sd_parts, sd2_parts or None, torch dtype)."""
    from ..models.registry import load_model, resolve_device_dtype

    dev, dt = resolve_device_dtype(device, dtype)
    sd = load_model("sd", sd_dir, device=dev, dtype=dt)
    sd2 = None
    if spec.depth:
        if sd2_dir is None:
            raise ValueError(f"variant {spec.name!r} needs the sd2_depth model folder")
        sd2 = load_model("sd2_depth", sd2_dir, device=dev, dtype=dt)
    return sd, sd2, dt


def reconstruct_subject(variant: str, subject, regression: Mapping[str, str], out_h5, png_dir, *, settings: Settings,
                        sd_dir, sd2_dir=None, captions_csv=None, depth_h5=None,
                        prediction_keys: Mapping[str, str] | str = "pred", device="auto", dtype="float16",
                        progress: bool = True) -> dict:
    """The workflow entry: read the inputs a variant needs, load models, write ``out_h5`` + ``png_dir``.

    regression: ``{space: path}`` for the spaces the variant needs (``sdz``, ``sdc``); captions_csv
    (t, td) from :func:`write_captions_csv`; depth_h5 (td) from :func:`write_depth`. Images
    reconstructed: the nsdIds common to every input (ascending). prediction_keys: ``{space: "pred" |
    "pred_restd"}`` or one key for all. settings: :class:`Settings` or a mapping of its fields.
    """
    if not isinstance(settings, Settings):
        settings = Settings.from_mapping(settings)
    keys = {s: prediction_keys for s in ("sdz", "sdc")} if isinstance(prediction_keys, str) else dict(prediction_keys)
    spec = variant_spec(variant)
    spaces = [s for s in spec.needs if s in ("sdz", "sdc")]
    missing = [s for s in spaces if s not in regression]
    if missing:
        raise ValueError(f"variant {variant!r} needs regression outputs for {missing}")
    ids = common_nsd_ids([regression[s] for s in spaces])
    caps = read_captions_csv(captions_csv, ids) if "captions" in spec.needs else None
    dep = read_depth(depth_h5, ids) if spec.depth else None
    sd, sd2, dt = load_models(spec, sd_dir, sd2_dir, device, dtype)
    preds = {s: Predictions(regression[s], keys.get(s, "pred"), ids) for s in spaces}
    try:
        if "sdz" in preds:
            zshape = preds["sdz"].shape[1:]
            if len(zshape) != 3 or zshape[0] != sd.vae.config.latent_channels:
                raise ValueError(f"{regression['sdz']}: predicted z has shape {zshape}, expected "
                                 f"({sd.vae.config.latent_channels}, h, w)")
        return reconstruct_to_files(
            variant, ids, subject, settings, out_h5, png_dir, sd_parts=sd, sd2_parts=sd2,
            z=preds.get("sdz"), c=preds.get("sdc"), captions=caps, depth=dep, dtype=dt, progress=progress,
            attrs=dict(inputs={**{s: str(regression[s]) for s in spaces}, "captions": str(captions_csv or ""),
                               "depth": str(depth_h5 or "")},
                       prediction_keys={s: keys.get(s, "pred") for s in spaces},
                       device=str(next(sd.unet.parameters()).device),
                       dtype=str(dt)),
        )
    finally:
        for p in preds.values():
            p.close()


def captions_subject(regression_blip, out_csv, *, blip_dir, settings: CaptionSettings | Mapping,
                     prediction_key="pred", device="auto", dtype="float16", progress=True) -> dict:
    """+T first step for one subject: predicted BLIP tokens → captions CSV (nsdId, caption, n_tokens)."""
    if not isinstance(settings, CaptionSettings):
        settings = CaptionSettings.from_mapping(settings)
    from ..models.registry import load_model, resolve_device_dtype

    dev, dt = resolve_device_dtype(device, dtype)
    parts = load_model("blip", blip_dir, device=dev, dtype=dt)
    with Predictions(regression_blip, prediction_key) as pred:
        caps, lengths = decode_captions(parts, pred, settings, progress=progress)
        write_captions_csv(out_csv, pred.nsd_ids, caps, lengths)
        return dict(n=len(caps), out=str(out_csv), mean_tokens=float(np.mean(lengths)))


def depth_subject(regression_dpt, out_h5, png_dir, *, dpt_dir, sd2_dir, image_size: int, prediction_key="pred",
                  batch_size: int = 16, device="auto", dtype="float16", progress=True) -> dict:
    """+D first step for one subject: predicted DPT hidden states → depth maps at the SD2-depth latent
    size for ``image_size`` (``image_size / vae factor``; 64 at 512 px)."""
    import json as _json

    from ..models.registry import load_model, resolve_device_dtype

    dev, dt = resolve_device_dtype(device, dtype)
    dpt = load_model("dpt", dpt_dir, device=dev, dtype=dt).model
    vae_cfg = _json.loads((Path(sd2_dir) / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not a multiple of the SD2-depth VAE factor {factor}")
    side = image_size // factor
    with Predictions(regression_dpt, prediction_key) as pred:
        out = [decode_depth(dpt, pred[i0:i0 + batch_size], side)
               for i0 in tqdm(range(0, len(pred), batch_size), desc="DPT depth", disable=not progress)]
        depth = np.concatenate(out)
        write_depth(out_h5, png_dir, pred.nsd_ids, depth,
                    attrs=dict(size=side, image_size=image_size, source=str(regression_dpt),
                               prediction_key=prediction_key))
    return dict(n=int(depth.shape[0]), size=side, out=str(out_h5))


__all__ = [
    "METHOD", "VARIANTS", "SPACES", "Settings", "CaptionSettings", "VariantSpec", "variant_spec",
    "num_denoising_steps", "sample_seed", "sample_seeds", "decode_z", "decode_captions", "write_captions_csv",
    "read_captions_csv", "dpt_hidden_layout", "decode_depth", "write_depth", "read_depth", "Predictions",
    "common_nsd_ids", "run_img2img", "Reconstruction", "reconstruct", "reconstruct_to_files", "load_models",
    "reconstruct_subject", "captions_subject", "depth_subject",
]
