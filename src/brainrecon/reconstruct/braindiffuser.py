"""Brain-Diffuser reconstruction (Ozcelik & VanRullen 2023), composed from the library's parts.

Pipeline (paper §2.2-2.3, SPEC §3), per test image of one subject (or the subject average):

stage 1 (:func:`decode_stage1`)
    predicted VDVAE latents ``(n, D)`` (``pred_restd`` of the regression space ``vdvae``;
    D = 91168 for the 31 first layers of the ImageNet64 model) → :func:`unflatten_latents`
    → :meth:`VDVAE.decode_from_latents`: the first k decoder blocks take the given z, the
    others draw z from the prior at ``vdvae_temperature``; the output is a DMoL sample →
    64×64 uint8 → bicubic (PIL) upsampling to ``image_size`` (512) (:func:`upsample`).
stage 2 (:func:`run_stage2`)
    Versatile Diffusion img2img through the one shared loop
    :func:`brainrecon.models.diffusion.vd_img2img`: init = the stage-1 image, DDIM
    ``steps`` = 50 with ``strength`` 0.75 → exactly ``int(0.75 · 50) = 37`` denoising steps,
    eta 0, classifier-free guidance ``guidance_scale`` 7.5 with the unconditional contexts
    CLIP-text("") and CLIP-vision(grey image) (:func:`brainrecon.models.vd.vd_unconditional`),
    dual guidance with ``mix_ratio = text_weight`` = 0.4 (cross-attention residuals mixed
    0.4 text / 0.6 vision; see :mod:`brainrecon.models.vd`), conditioning = predicted
    CLIP-text ``(n, 77, 768)`` and CLIP-vision ``(n, 257, 768)`` (``pred_restd`` of the spaces
    ``cliptext`` / ``clipvision``).

Variants (``methods.braindiffuser.variants``; paper Supplementary Table 2), each a
composition of the two stages (:func:`variant_spec`):

============ ============== =============== ============ ===========================================
variant      stage 1        stage-2 init    text weight  inputs read
============ ============== =============== ============ ===========================================
full         yes            stage-1 image   text_weight  vdvae, clipvision, cliptext
only_vdvae   yes            (no stage 2)    -            vdvae
no_vdvae     no             random latent   text_weight  clipvision, cliptext
no_text      yes            stage-1 image   0            vdvae, clipvision
no_vision    yes            stage-1 image   1            vdvae, cliptext
============ ============== =============== ============ ===========================================

- ``only_vdvae`` ("Only-VDVAE: the results from stage-1 reconstruction only") = the
  stage-1 image upsampled to ``image_size``.
- ``no_vdvae`` ("Brain-Diffuser w/o VDVAE, i.e., stage-2 reconstruction but with random
  initialization of the autoKL latent vector", Suppl. 5.1): the AutoKL latent that the
  stage-1 image would give is replaced by z0 ~ N(0, I) in the scaled latent space (drawn
  per image from that image's stage-2 generator), and then exactly the same img2img
  schedule runs: z0 is noised to the first kept timestep t1 and denoised for the same
  ``int(strength · steps)`` (37) steps. Because z0 is itself standard normal,
  x_{t1} = sqrt(ᾱ_{t1}) z0 + sqrt(1 − ᾱ_{t1}) ε is exactly N(0, I): this variant *starts the
  37-step schedule from pure Gaussian noise* (it is not a 50-step text/image-to-image
  generation from t = 999). Implemented by passing that z0
  (:func:`~brainrecon.models.diffusion.random_latents`) as ``init_latents`` to the
  shared loop (no second loop).
- ``no_text`` / ``no_vision``: vision-only / text-only guidance, i.e. ``mix_ratio`` 0 / 1 of
  the dual-guided UNet, so the other condition's cross-attention residual is multiplied by 0
  (in the conditional *and* the unconditional branch): the output does not depend on the
  dropped prediction at all, and the rule does not read that regression file (a zero
  context of the right shape is passed in its place).

Seeds: every image has one seed (``seeds`` in the output) derived from
(``seed``, subject, nsdId) by :func:`image_seed` ("avg" is subject code 0; ROI images use
the ROI name in place of the nsdId). Stage 1 draws from ``Generator(derive_seed(s, 1))``
and stage 2 from ``Generator(derive_seed(s, 2))`` (CPU generators, one per image), so an
image does not depend on the batch it is computed in, on the other images, or on the
device's RNG, and the same image gets the same noise in every variant (paired ablations).
Both stages run in batches (stage 1 with one VDVAE generator per row, stage 2 in batches of
``batch_size``), identical to running each image alone up to floating-point reassociation
of batched kernels.

Precision: VDVAE always runs float32 (125 M parameters, cheap next to stage 2). The
VD models run in the job's ``dtype`` (float16 / bfloat16 on a GPU, float32 on CPU); the
loop keeps latents and the scheduler in float32.

ROI-optimal images (paper §3.4, Figs 5 and 7): :func:`roi_patterns` builds, for each ROI,
the synthetic pattern 1 on ROI ∩ prepared voxels, 0 elsewhere (in the z-scored space); the
regression stage predicts it (``extra/roi_<name>``); :func:`renormalise` rescales each
predicted vector (flattened) to the mean euclidean norm of the training feature rows
(:func:`mean_row_norm`, computed from ``train/features`` of the features files; the
subject average uses the training rows of every subject). The reference hard-codes
the norms instead (80 for VDVAE after a z-scoring across its 13 ROI patterns, and 9 / 15
for the CLIP-text / vision components before adding the intercept), and builds its V1-V4
masks from the wrong label file (floc-faces); we follow SPEC §3: V1-V4 from prf-visualrois.
The renormalised predictions are then reconstructed like test images (variant ``full``).

Outputs (:func:`reconstruct_to_files`): ``images.h5`` — ``images`` uint8 (n, S, S, 3),
``stage1`` uint8 (n, 64, 64, 3) (absent for ``no_vdvae``), ``nsd_ids`` (n,) int64 (ROI
files: ``rois`` names instead), ``seeds`` (n,) int64, attrs with the settings the variant
depends on (:func:`variant_settings`), the variant definition, the number of denoising
steps actually run and the timesteps, the input files, device and dtype — and a ``png/``
folder with ``<nsdId>.png`` (``<roi>.png``). Both are streamed batch by batch into
temporary names and renamed into place only when everything succeeded (:mod:`brainrecon.io`);
a failure leaves neither. The rule declares ``images.h5`` as a file output (so downstream
rules, e.g. evaluation, can name it as input) and ``png`` as a ``directory()`` output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ..nsd.rois import ROI_DEFINITIONS, roi_patterns  # noqa: F401  (roi_patterns re-exported)
from .common import (  # noqa: F401  (subject_code, derive_seed, upsample re-exported)
    BatchOutputs,
    SettingsMapping,
    derive_seed,
    image_outputs,
    png_name,
    subject_code,
    to_uint8,
    upsample,
)
from .variants import (  # noqa: F401  (re-exported)
    METHOD,
    SPACES,
    VARIANTS,
    VariantSpec,
    num_denoising_steps,
    roi_settings,
    variant_settings,
    variant_spec,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings(SettingsMapping):
    """``methods.braindiffuser`` settings used by reconstruction (paper values by default).

    vdvae_temperature: prior temperature of the VDVAE blocks without a predicted latent.
    steps, strength: DDIM grid and the fraction run (``int(strength · steps)`` steps).
    guidance_scale: classifier-free guidance weight.
    text_weight: dual-guidance weight of CLIP-text (vision gets ``1 - text_weight``).
    image_size: stage-2 / output image side in pixels (the stage-1 image is upsampled to it).
    batch_size: images per stage-2 call. seed: base of every image's seed.
    """

    vdvae_temperature: float = 1.0
    steps: int = 50
    strength: float = 0.75
    guidance_scale: float = 7.5
    text_weight: float = 0.4
    image_size: int = 512
    batch_size: int = 4
    seed: int = 0

    _label: ClassVar[str] = "Brain-Diffuser"

    def __post_init__(self):
        if not self.vdvae_temperature >= 0:
            raise ValueError(f"vdvae_temperature must be >= 0, got {self.vdvae_temperature}")
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < float(self.strength) <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not 0 <= float(self.text_weight) <= 1:
            raise ValueError(f"text_weight must be in [0, 1], got {self.text_weight}")
        if int(self.image_size) < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# ----------------------------------------------------------------------------- seeds
def image_seed(seed: int, subject, key) -> int:
    """Seed of one image: from the base ``seed``, the subject and the nsdId (int) or ROI name (str)."""
    if isinstance(key, str):
        k = (1 << 32) + zlib.crc32(key.encode())  # ROI names: disjoint from nsdIds (< 73000)
    else:
        k = int(key)
        if k < 0:
            raise ValueError(f"nsdId must be >= 0, got {key}")
    return derive_seed(int(seed) & 0xFFFFFFFFFFFFFFFF, subject_code(subject), k)


def _generators(seeds: Sequence[int], stream: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(int(s), stream)) for s in seeds]


# ----------------------------------------------------------------------------- stage 1
def vdvae_num_layers(model, dims: int) -> int:
    """Number of leading decoder blocks whose latents make ``dims`` flattened values."""
    from ..models.vdvae import latent_dims

    config = model.config
    if latent_dims(config) == dims:
        return config.num_latent_layers
    for k in range(model.num_dec_blocks + 1):
        if latent_dims(config, k) == dims:
            return k
    raise ValueError(
        f"predicted VDVAE latents have {dims} values per image, which matches no number of decoder layers "
        f"of this VDVAE ({config.num_latent_layers} layers = {latent_dims(config)} values)"
    )


@torch.no_grad()
def decode_stage1(model, latents, seeds: Sequence[int], temperature: float = 1.0,
                  num_layers: int | None = None, progress: bool = False, batch_size: int = 16) -> np.ndarray:
    """Stage 1: VDVAE images (n, 64, 64, 3) uint8 from predicted latents (n, D).

    Image i draws from its own ``Generator(derive_seed(seeds[i], 1))``: the first
    ``num_layers`` blocks (default: inferred from D) take the given z, the other blocks
    draw from the prior at ``temperature``, the output is a DMoL sample. Decoded
    ``batch_size`` images per call with one generator per row, so image i is what it would
    be decoded alone (:meth:`VDVAE.decode_from_latents`), whatever the batch.
    """
    from ..models.vdvae import unflatten_latents

    lat = np.asarray(latents, dtype=np.float32)
    if lat.ndim != 2 or lat.shape[0] != len(seeds):
        raise ValueError(f"VDVAE latents must be (n, D) with n = {len(seeds)} seeds, got shape {lat.shape}")
    if not np.isfinite(lat).all():
        raise ValueError("predicted VDVAE latents contain NaN or inf")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = vdvae_num_layers(model, lat.shape[1]) if num_layers is None else int(num_layers)
    out = np.empty((lat.shape[0], model.config.image_size, model.config.image_size, 3), np.uint8)
    gens = _generators(seeds, 1)
    bs = int(batch_size)
    for i0 in tqdm(range(0, lat.shape[0], bs), desc="stage 1 (VDVAE)", disable=not progress, leave=False):
        i1 = min(i0 + bs, lat.shape[0])
        z = unflatten_latents(torch.from_numpy(lat[i0:i1]), model.config, k)
        out[i0:i1] = model.decode_from_latents(z, temperature=float(temperature), generator=gens[i0:i1])
    return out


# ----------------------------------------------------------------------------- stage 2
def context_shapes(parts) -> tuple[tuple[int, int], tuple[int, int]]:
    """((text tokens, dim), (image tokens, dim)) the dual-guided UNet of ``parts`` expects."""
    from ..models.vd import vd_condition_lengths

    text_len, image_len = vd_condition_lengths(parts.text_encoder, parts.image_encoder)
    dim = int(parts.image_unet.config.cross_attention_dim)
    return (text_len, dim), (image_len, dim)


@torch.no_grad()
def run_stage2(parts, init_images, text_ctx, image_ctx, seeds: Sequence[int], *, steps: int, strength: float,
               guidance_scale: float, text_weight: float, init: str = "stage1", uncond=None,
               dtype: torch.dtype | None = None) -> tuple[np.ndarray, int, list[int]]:
    """Stage 2 for one batch: dual-guided VD img2img via the shared loop.

    init_images: with ``init="stage1"``, the upsampled stage-1 images (b, S, S, 3) uint8;
        with ``init="noise"``, the image side S (int): the init latent is a standard-normal
        draw from each image's stage-2 generator
        (:func:`~brainrecon.models.diffusion.random_latents`, passed as ``init_latents``).
    text_ctx (b, 77, D), image_ctx (b, 257, D) float; seeds: one per image (stage-2
    generator ``derive_seed(seed, 2)``); text_weight: dual-guidance ``mix_ratio``;
    uncond: (text, image) unconditional contexts (default CLIP("") / CLIP(grey)).
    Returns (images (b, S, S, 3) uint8, denoising steps run, timesteps).
    """
    from ..models.diffusion import Sampler, random_latents, vd_img2img

    text = torch.as_tensor(np.asarray(text_ctx, dtype=np.float32))
    image = torch.as_tensor(np.asarray(image_ctx, dtype=np.float32))
    (tl, td), (il, idim) = context_shapes(parts)
    if tuple(text.shape[1:]) != (tl, td) or tuple(image.shape[1:]) != (il, idim):
        raise ValueError(
            f"VD contexts must be text (b, {tl}, {td}) and image (b, {il}, {idim}), "
            f"got {tuple(text.shape)} and {tuple(image.shape)}"
        )
    if not (torch.isfinite(text).all() and torch.isfinite(image).all()):
        raise ValueError("predicted CLIP contexts contain NaN or inf")
    b = len(seeds)
    if text.shape[0] != b or image.shape[0] != b:
        raise ValueError(f"{b} seeds but contexts of batch {text.shape[0]} (text) and {image.shape[0]} (image)")
    gens = _generators(seeds, 2)
    if init == "stage1":
        init_arr = np.asarray(init_images)
        if init_arr.shape[0] != b:
            raise ValueError(f"{b} seeds but {init_arr.shape[0]} init images")
        init_in, init_lat = torch.from_numpy(init_arr), None
    elif init == "noise":
        init_in, init_lat = None, random_latents(parts.vae, int(init_images), gens)
    else:
        raise ValueError(f"stage-2 init must be 'stage1' or 'noise', got {init!r}")
    sampler = Sampler(steps=int(steps), strength=float(strength), guidance_scale=float(guidance_scale), eta=0.0,
                      posterior="sample")
    res = vd_img2img(parts, init_in, text, image, mix_ratio=float(text_weight), uncond=uncond, generator=gens,
                     sampler=sampler, dtype=dtype, init_latents=init_lat)
    return to_uint8(res.images), int(res.num_steps), list(res.timesteps)


# ----------------------------------------------------------------------------- the method
@dataclass
class Reconstruction:
    """images (n, S, S, 3) uint8; stage1 (n, 64, 64, 3) uint8 or None; keys (nsdIds or ROI
    names); seeds (n,) int64; num_steps: denoising steps run per image; timesteps."""

    images: np.ndarray
    stage1: np.ndarray | None
    keys: list
    seeds: np.ndarray
    num_steps: int
    timesteps: list[int]


def _rows(source, i0: int, i1: int) -> np.ndarray | None:
    return None if source is None else np.asarray(source[i0:i1], dtype=np.float32)


def _zeros_like_ctx(shape, b):
    return np.zeros((b, *shape), np.float32)


@torch.no_grad()
def reconstruct(variant: str, keys: Sequence, subject, settings: Settings, *, vdvae_model=None, vd_parts=None,
                vdvae_latents=None, clip_text=None, clip_vision=None, dtype: torch.dtype | None = None,
                sink: Callable[[int, np.ndarray, np.ndarray | None], None] | None = None,
                keep: bool = True, progress: bool = True) -> Reconstruction:
    """Reconstruct the images ``keys`` (nsdIds, or ROI names) of one subject with one variant.

    vdvae_latents (n, D), clip_text (n, 77, D'), clip_vision (n, 257, D'): array-likes
    sliceable by rows (numpy arrays or h5py datasets), row i belonging to ``keys[i]``; only
    those the variant needs (:func:`variant_spec`) are required, the others are ignored.
    vdvae_model: a :class:`~brainrecon.models.vdvae.VDVAE`; vd_parts: role "vd" (dual-guided).
    sink(i0, images, stage1): called after each batch (e.g. to stream to files).
    keep: also return all images in memory (``False`` when a sink stores them).
    """
    spec = variant_spec(variant, settings.text_weight)
    keys = list(keys)
    n = len(keys)
    if n == 0:
        raise ValueError("nothing to reconstruct: no images")
    inputs = {"vdvae": vdvae_latents, "clipvision": clip_vision, "cliptext": clip_text}
    for space in spec.needs:
        if inputs[space] is None:
            raise ValueError(f"variant {variant!r} needs the {space} predictions")
        if len(inputs[space]) != n:
            raise ValueError(f"{space} predictions have {len(inputs[space])} rows for {n} images")
    if spec.stage1 and vdvae_model is None:
        raise ValueError(f"variant {variant!r} needs the VDVAE model")
    if spec.stage2 and vd_parts is None:
        raise ValueError(f"variant {variant!r} needs the Versatile Diffusion model")
    seeds = np.asarray([image_seed(settings.seed, subject, k) for k in keys], dtype=np.int64)

    uncond = None
    if spec.stage2:
        from ..models.vd import vd_unconditional

        uncond = vd_unconditional(vd_parts)  # CLIP("") and CLIP(grey), once for all batches
        text_shape, image_shape = context_shapes(vd_parts)
    num_steps, timesteps = 0, []
    outputs = BatchOutputs(sink, keep)
    bs = int(settings.batch_size)
    for i0 in tqdm(range(0, n, bs), desc=f"braindiffuser {variant}", disable=not progress):
        i1 = min(i0 + bs, n)
        s = seeds[i0:i1]
        stage1 = None
        if spec.stage1:
            stage1 = decode_stage1(vdvae_model, _rows(vdvae_latents, i0, i1), s, settings.vdvae_temperature)
        if spec.stage2:
            b = i1 - i0
            text = _rows(clip_text, i0, i1) if "cliptext" in spec.needs else _zeros_like_ctx(text_shape, b)
            image = _rows(clip_vision, i0, i1) if "clipvision" in spec.needs else _zeros_like_ctx(image_shape, b)
            init = upsample(stage1, settings.image_size) if spec.init == "stage1" else settings.image_size
            images, steps_run, timesteps = run_stage2(
                vd_parts, init, text, image, s, steps=settings.steps, strength=settings.strength,
                guidance_scale=settings.guidance_scale, text_weight=spec.text_weight, init=spec.init,
                uncond=uncond, dtype=dtype,
            )
            if i0 and steps_run != num_steps:
                raise RuntimeError(f"batch at {i0} ran {steps_run} steps, earlier batches {num_steps}")
            num_steps = steps_run
        else:
            images = upsample(stage1, settings.image_size)
        outputs.add(i0, images, stage1)
    return Reconstruction(
        images=outputs.images, stage1=outputs.stage1, keys=keys, seeds=seeds, num_steps=num_steps, timesteps=timesteps,
    )


# ----------------------------------------------------------------------------- outputs
def reconstruct_to_files(variant: str, keys: Sequence, subject, settings: Settings, out_h5, png_dir, *,
                         key_name: str = "nsd_ids", attrs: Mapping | None = None, **kwargs) -> dict:
    """:func:`reconstruct`, streaming every batch into ``out_h5`` and ``png_dir`` atomically.

    Both are written under temporary names next to their final names and renamed only
    after the last image; any failure removes them (nothing half-written is left).
    ``key_name``: ``"nsd_ids"`` (int keys) or ``"rois"`` (names). ``attrs``: extra HDF5
    attributes (input files, device, ...). Returns a summary dict.
    """
    spec = variant_spec(variant, settings.text_weight)
    keys = list(keys)
    n, size = len(keys), int(settings.image_size)
    out_h5, png_dir = Path(out_h5), Path(png_dir)
    stage1_shape = None
    if spec.stage1:
        res = int(getattr(getattr(kwargs.get("vdvae_model"), "config", None), "image_size", 64))
        stage1_shape = (res, res, 3)
    with image_outputs(out_h5, png_dir, n=n, image_shape=(size, size, 3), stage1_shape=stage1_shape,
                       png_names=lambda i: [png_name(keys[i])]) as (f, sink):
        rec = reconstruct(variant, keys, subject, settings, sink=sink, keep=False, **kwargs)
        used = variant_settings(variant, settings.as_dict())  # only what this variant depends on
        if spec.stage2:
            used["batch_size"] = settings.batch_size
        if key_name == "nsd_ids":
            f["nsd_ids"] = np.asarray(keys, dtype=np.int64)
        else:
            f[key_name] = np.asarray([str(k) for k in keys], dtype=h5py.string_dtype())
        f["seeds"] = rec.seeds
        meta = {
            "method": METHOD,
            "variant": variant,
            "subject": str(subject),
            "settings": json.dumps(used),
            "variant_spec": json.dumps(dataclasses.asdict(spec)),
            "stage1": spec.stage1,
            "stage2": spec.stage2,
            "init": str(spec.init),
            "effective_text_weight": -1.0 if spec.text_weight is None else float(spec.text_weight),
            "num_denoising_steps": int(rec.num_steps),
            "timesteps": np.asarray(rec.timesteps, dtype=np.int64),
            "eta": 0.0,
            "seed_derivation": "image seed = derive_seed(seed, subject code (avg=0), nsdId | 2^32+crc32(roi)); "
                               "stage 1 Generator(derive_seed(s, 1)), stage 2 Generator(derive_seed(s, 2))",
            **used,
        }
        for k, v in {**meta, **dict(attrs or {})}.items():
            f.attrs[k] = v
    log.info("wrote %d %s images (%d denoising steps) to %s and %s", n, variant, rec.num_steps, out_h5, png_dir)
    return {"n": n, "num_denoising_steps": rec.num_steps, "timesteps": rec.timesteps}


# ----------------------------------------------------------------------------- inputs
def read_prediction_file(path, key: str = "auto", extra: str | None = None):
    """Open a regression output; returns (h5py.File, dataset, nsd_ids or None, key used).

    key ``"auto"``: ``pred_restd`` when present (Brain-Diffuser re-standardised), else ``pred``.
    extra: read ``extra/<extra>`` instead (ROI-optimal patterns; no nsd_ids).
    The caller closes the file.
    """
    f = h5py.File(path, "r")
    try:
        if extra is not None:
            k = f"extra/{extra}"
            if k not in f:
                have = sorted(f["extra"]) if "extra" in f else []
                raise KeyError(f"{path}: no {k!r} (ROI-optimal prediction; extra patterns present: {have})")
            return f, f[k], None, k
        k = key
        if key == "auto":
            k = "pred_restd" if "pred_restd" in f else "pred"
        if k not in f:
            raise KeyError(f"{path}: no dataset {k!r} (have {sorted(f)})")
        if "nsd_ids" not in f:
            raise KeyError(f"{path}: no 'nsd_ids'")
        ids = f["nsd_ids"][:].astype(np.int64)
        if f[k].shape[0] != ids.size:
            raise ValueError(f"{path}: {k} has {f[k].shape[0]} rows but nsd_ids has {ids.size}")
        return f, f[k], ids, k
    except BaseException:
        f.close()
        raise


def _flat(ds_or_arr):
    """Row-sliceable (n, D) view of an (n, *shape) dataset / array."""
    class _Flat:
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return self.src.shape[0]

        def __getitem__(self, sl):
            a = np.asarray(self.src[sl])
            return a.reshape(a.shape[0], -1)

    return _Flat(ds_or_arr)


def load_models(spec: VariantSpec, vdvae_dir=None, vd_dir=None, device: str = "auto", dtype: str = "float16"):
    """Load what a variant needs with :func:`brainrecon.models.load_model`.

    device: ``models.device`` ("auto" = CUDA if available); dtype: ``models.dtype`` for the VD
    models (CPU always computes float32, see ``brainrecon.models``); VDVAE is loaded float32.
    Returns (vdvae model | None, vd parts | None, device name, VD dtype name).
    """
    from ..models import load_model

    vdvae = vd = None
    if spec.needs_vdvae_model:
        if vdvae_dir is None:
            raise ValueError(f"variant {spec.name!r} needs the VDVAE model folder")
        vdvae = load_model("vdvae", vdvae_dir, device=device, dtype="float32").model
        dev, dt = _device_dtype(vdvae)
    if spec.needs_vd_model:
        if vd_dir is None:
            raise ValueError(f"variant {spec.name!r} needs the Versatile Diffusion model folder")
        vd = load_model("vd", vd_dir, device=device, dtype=dtype)
        dev, dt = _device_dtype(vd.image_unet)
    log.info("models on %s, %s", dev, dt)
    return vdvae, vd, dev, dt


def _device_dtype(module) -> tuple[str, str]:
    p = next(module.parameters())
    return str(p.device), str(p.dtype).replace("torch.", "")


def reconstruct_subject(variant: str, subject, regression: Mapping[str, str], out_h5, png_dir, *,
                        settings: Mapping, vdvae_dir=None, vd_dir=None, device: str = "auto",
                        dtype: str = "float16", progress: bool = True) -> dict:
    """The rule's job: one variant for one subject ("01".. or "avg") from the regression outputs.

    regression: ``{space: results/regression/<space>/subj<XX>.h5}`` for (at least) the
    spaces the variant needs. Every file must list the same test nsdIds in the same order.
    """
    s = Settings.from_mapping({**Settings().as_dict(), **dict(settings)})
    spec = variant_spec(variant, s.text_weight)
    missing = [sp for sp in spec.needs if sp not in regression]
    if missing:
        raise ValueError(f"variant {variant!r} needs regression outputs for {missing}")
    with contextlib.ExitStack() as stack:
        sources, ids, used = {}, None, {}
        for space in spec.needs:
            f, ds, file_ids, key = read_prediction_file(regression[space])
            stack.callback(f.close)
            if ids is None:
                ids, first = file_ids, space
            elif not np.array_equal(ids, file_ids):
                raise ValueError(
                    f"test nsdIds differ between {regression[first]} and {regression[space]}: "
                    f"the regression outputs of one subject must list the same images"
                )
            sources[space], used[space] = ds, f"{regression[space]}:{key}"
        vdvae, vd, dev, dt = load_models(spec, vdvae_dir, vd_dir, device, dtype)
        return reconstruct_to_files(
            variant, ids.tolist(), subject, s, out_h5, png_dir,
            vdvae_model=vdvae, vd_parts=vd,
            vdvae_latents=_flat(sources["vdvae"]) if "vdvae" in sources else None,
            clip_vision=sources.get("clipvision"), clip_text=sources.get("cliptext"),
            progress=progress,
            attrs={"inputs": json.dumps(used), "device": dev, "dtype": dt,
                   "vdvae_model": str(vdvae_dir), "vd_model": str(vd_dir)},
        )


# ----------------------------------------------------------------------------- ROI-optimal
def mean_row_norm(features_paths: Sequence, split: str = "train", chunk_rows: int = 256) -> float:
    """Mean euclidean norm of the ``{split}/features`` rows of the given features files.

    Rows are read ``chunk_rows`` at a time (a real VDVAE file is 8859 × 91168) and
    accumulated in float64; several files (the subject average) pool their rows.
    """
    if isinstance(features_paths, (str, Path)):
        features_paths = [features_paths]
    total, count = 0.0, 0
    for path in features_paths:
        with h5py.File(path, "r") as f:
            key = f"{split}/features"
            if key not in f:
                raise KeyError(f"{path}: no {key!r} (features file of the training images)")
            ds = f[key]
            for i0 in range(0, ds.shape[0], chunk_rows):
                rows = ds[i0:i0 + chunk_rows].astype(np.float64).reshape(-1, math.prod(ds.shape[1:]))
                total += float(np.linalg.norm(rows, axis=1).sum())
                count += rows.shape[0]
    if count == 0:
        raise ValueError(f"no {split} feature rows in {list(map(str, features_paths))}")
    return total / count


def rms_norm_from_moments(train_mean, train_std) -> float:
    """sqrt(E||x||²) = sqrt(Σ mean² + std²) from a regression file's ``train_mean``/``train_std``.

    A fallback when the training rows are not at hand: it is the root-mean-square norm,
    >= the mean norm (equal when every row has the same norm).
    """
    m, s = np.asarray(train_mean, np.float64), np.asarray(train_std, np.float64)
    return float(np.sqrt((m ** 2).sum() + (s ** 2).sum()))


def renormalise(pred, target_norm: float) -> np.ndarray:
    """Rescale each row of ``pred`` (k, *shape) to euclidean norm ``target_norm`` (flattened)."""
    p = np.asarray(pred, dtype=np.float64)
    flat = p.reshape(p.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"cannot renormalise predictions with row norms {norms.ravel().tolist()}")
    return (flat * (float(target_norm) / norms)).reshape(p.shape).astype(np.float32)


def reconstruct_rois(subject, roi_names: Sequence[str], regression: Mapping[str, str],
                     features: Mapping[str, Sequence[str]], out_h5, png_dir, *, settings: Mapping,
                     vdvae_dir, vd_dir, device: str = "auto", dtype: str = "float16", progress: bool = True) -> dict:
    """ROI-optimal images of one subject ("avg": the subject-average predictions).

    regression: ``{space: regression file}`` with ``extra/roi_<name>`` (1, *shape) for the
    three spaces; features: ``{space: [features files]}`` whose ``train/features`` rows give
    the target norm (the subject's own, or every subject's for "avg"). Each ROI's three
    predictions are renormalised to that norm (:func:`renormalise`) and reconstructed with
    the ``full`` variant. Output: like :func:`reconstruct_to_files` with ``rois`` names.
    """
    s = Settings.from_mapping({**Settings().as_dict(), **dict(settings)})
    names = list(roi_names)
    if not names:
        raise ValueError("no ROI-optimal patterns requested")
    unknown = [n for n in names if n not in ROI_DEFINITIONS]
    if unknown:
        raise ValueError(f"unknown ROI-optimal pattern(s) {unknown}; known: {list(ROI_DEFINITIONS)}")
    features = {k: [str(v)] if isinstance(v, (str, Path)) else [str(x) for x in v] for k, v in features.items()}
    preds, norms = {}, {}
    for space in SPACES:
        if space not in regression or space not in features:
            raise ValueError(f"ROI-optimal reconstruction needs the {space} regression output and features")
        rows = []
        for name in names:
            f, ds, _, _ = read_prediction_file(regression[space], extra=f"roi_{name}")
            with f:
                a = ds[:]
            if a.shape[0] != 1:
                raise ValueError(f"{regression[space]}: extra/roi_{name} has {a.shape[0]} rows, expected 1")
            rows.append(a[0])
        norms[space] = mean_row_norm(features[space])
        preds[space] = renormalise(np.stack(rows), norms[space])
        log.info("%s: ROI predictions renormalised to the training mean norm %.4g", space, norms[space])
    spec = variant_spec("full", s.text_weight)
    vdvae, vd, dev, dt = load_models(spec, vdvae_dir, vd_dir, device, dtype)
    return reconstruct_to_files(
        "full", names, subject, s, out_h5, png_dir, key_name="rois",
        vdvae_model=vdvae, vd_parts=vd, vdvae_latents=_flat(preds["vdvae"]),
        clip_vision=preds["clipvision"], clip_text=preds["cliptext"], progress=progress,
        attrs={"roi_optimal": True, "target_norms": json.dumps(norms),
               "roi_definitions": json.dumps({n: ROI_DEFINITIONS[n] for n in names}),
               "inputs": json.dumps({"regression": {k: str(v) for k, v in regression.items()}, "features": features}),
               "device": dev, "dtype": dt,
               "vdvae_model": str(vdvae_dir), "vd_model": str(vd_dir)},
    )


__all__ = [
    "METHOD", "VARIANTS", "SPACES", "ROI_DEFINITIONS", "Settings", "VariantSpec", "variant_spec",
    "variant_settings", "num_denoising_steps", "subject_code", "derive_seed", "image_seed",
    "decode_stage1", "upsample", "run_stage2", "Reconstruction",
    "reconstruct", "reconstruct_to_files", "read_prediction_file", "load_models", "reconstruct_subject",
    "roi_patterns", "mean_row_norm", "rms_norm_from_moments", "renormalise",
    "reconstruct_rois",
]
