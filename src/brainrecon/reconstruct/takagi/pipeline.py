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

+T (:func:`brainrecon.reconstruct.takagi.decoded.decode_captions`): BLIP's text decoder generates from the predicted visual tokens
(cross-attention keys/values), beam search with ``num_beams`` 3, ``max_length`` 20, ``min_length`` 5
(lengths in tokens of the whole sequence, BOS and prompt included, as in HF/BLIP ``generate``),
``repetition_penalty`` 1.5, prompt "a picture of " (the BLIP decoder's prompt in the reference,
stripped from the caption). Special tokens other than [SEP] (end) are suppressed, so a caption is
never empty (a trained BLIP never emits them anyway). Captions are decoded once per image and shared
by the 5 samples.

+D (:func:`brainrecon.reconstruct.takagi.decoded.decode_depth`): the DPT neck + head turn predicted hidden states (4 layers of 577 tokens)
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
from its recorded seed is identical. Outputs (:func:`reconstruct_to_files`, through the run template
:mod:`brainrecon.reconstruct.run`): ``images.h5`` —
``images`` uint8 (n, n_samples, S, S, 3), ``nsd_ids`` (n,), ``seeds`` (n, n_samples) int64,
``stage1`` uint8 (n, S, S, 3) where z is used, ``captions`` (n,) UTF-8 strings for t/td, ``depth``
(n, 1, h, w) float32 for td; attrs: every setting, the variant, the steps run and timesteps — and
``png/<nsdId>_<sample>.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..run import (
    Layout,
    Reconstruction,
    Schedule,
    derive_seed,
    finite,
    generators,
    load_components,
    open_predictions,
    run_batches,
    subject_code,
    to_uint8,
    upsample,
    write_reconstruction,
)
from .decoded import read_captions_csv, read_depth
from .plan import METHOD, Settings, VariantSpec, variant_spec

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- X_z
@torch.no_grad()
def decode_z(vae, latents, image_size: int) -> np.ndarray:
    """X_z: predicted scaled latents (b, 4, h, w) → VAE decode (b, 8h, 8w) → uint8 → bicubic to
    ``image_size``. Returns (b, image_size, image_size, 3) uint8."""
    from ...models.diffusion import vae_decode

    lat = finite(np.asarray(latents, dtype=np.float32), "predicted z")
    c = int(vae.config.latent_channels)
    if lat.ndim != 4 or lat.shape[1] != c:
        raise ValueError(f"predicted z must be (b, {c}, h, w), got shape {lat.shape}")
    decoded = to_uint8(vae_decode(vae, torch.from_numpy(lat)))
    return upsample(decoded, int(image_size))


# ----------------------------------------------------------------------------- img2img
def _empty_context(parts) -> torch.Tensor:
    from ...models.sd import sd_unconditional

    return sd_unconditional(parts)


@torch.no_grad()
def run_img2img(parts, spec: VariantSpec, settings: Settings, init_images, text_ctx, seeds: Sequence[int], *,
                depth=None, uncond=None):
    """One batch of image-samples through the shared loop (:func:`~brainrecon.models.diffusion.sd_img2img`).

    init_images: (b, S, S, 3) uint8 X_z (ignored but sized for ``init="noise"``);
    text_ctx: (b, 77, D) float context; seeds: one per item; depth: (b, 1, h, w) for SD2-depth;
    uncond: the empty-prompt context (computed if None). Returns (images (b, S, S, 3) uint8, the
    :class:`~brainrecon.reconstruct.run.Schedule` run).
    """
    from ...models.diffusion import Sampler, random_latents, sd_img2img, vae_factor

    b = len(seeds)
    init = np.asarray(init_images)
    text = torch.as_tensor(finite(np.asarray(text_ctx, dtype=np.float32), "text contexts"))
    if init.shape[0] != b or text.shape[0] != b:
        raise ValueError(f"{b} seeds but {init.shape[0]} init images and {text.shape[0]} text contexts")
    dim = int(parts.unet.config.cross_attention_dim)
    if text.ndim != 3 or text.shape[-1] != dim:
        raise ValueError(f"text contexts must be (b, tokens, {dim}) for this UNet, got {tuple(text.shape)}")
    gens = generators(seeds)
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
                      eta=float(settings.eta), posterior="sample", init_noise=settings.init_noise)
    res = sd_img2img(parts, init_in, text, uncond=uncond, generator=gens, sampler=sampler,
                     extra_latent_channels=extra, init_latents=init_lat)
    return to_uint8(res.images), Schedule.of(res)


# ----------------------------------------------------------------------------- the method
def _rows(source, i0, i1):
    return None if source is None else np.asarray(source[i0:i1], dtype=np.float32)


@torch.no_grad()
def reconstruct(variant: str, nsd_ids: Sequence[int], subject, settings: Settings, *, models: Mapping,
                inputs: Mapping, samples: Sequence[int] | None = None, sink: Callable | None = None,
                keep: bool = True, progress: bool = True) -> Reconstruction:
    """Reconstruct test images ``nsd_ids`` of one subject with one variant.

    models: ``{"sd": role sd, "sd2_depth": role sd2_depth}`` — ``sd`` always (img2img of z/c/zc/t; VAE
    decoding of z for td), ``sd2_depth`` for td.
    inputs: what the variant reads (:func:`variant_spec`), row i belonging to ``nsd_ids[i]``: ``sdz``
    (n, 4, h, w) and ``sdc`` (n, 77, D) row-sliceable predictions (numpy,
    :class:`~brainrecon.reconstruct.run.Predictions`), ``captions`` n strings (t, td), ``depth``
    (n, 1, h', w') (td); the rest is ignored, never read.
    samples: which sample indices to run (default all ``n_samples``; e.g. ``[3]`` to re-run one sample
    from its seed). sink(i0, images (k, n_s, S, S, 3), stage1 (k, S, S, 3) | None): called per chunk of
    images. keep: also return everything in memory. The result's ``datasets`` hold ``captions`` (t, td)
    and ``depth`` (td).
    """
    spec = variant_spec(variant)
    ids = np.asarray(list(nsd_ids), dtype=np.int64)
    n = ids.size
    for need in spec.needs:
        if inputs.get(need) is None:
            raise ValueError(f"variant {variant!r} needs the {need} input")
        if len(inputs[need]) != n:
            raise ValueError(f"{need} input has {len(inputs[need])} rows for {n} images")
    sd_parts = models.get("sd")
    if sd_parts is None:
        raise ValueError("Takagi reconstruction needs the Stable Diffusion model (role 'sd')")
    parts = models.get("sd2_depth") if spec.depth else sd_parts
    if parts is None:
        raise ValueError(f"variant {variant!r} needs the SD2-depth model (role 'sd2_depth')")
    sample_idx = list(range(settings.n_samples)) if samples is None else [int(s) for s in samples]
    if not sample_idx or any(not 0 <= s < settings.n_samples for s in sample_idx):
        raise ValueError(f"samples must be in [0, {settings.n_samples}), got {sample_idx}")
    seeds = sample_seeds(settings.seed, subject, ids, settings.n_samples)[:, sample_idx]
    ns = len(sample_idx)
    S = int(settings.image_size)
    z, c, captions, depth = inputs.get("sdz"), inputs.get("sdc"), inputs.get("captions"), inputs.get("depth")

    uncond = None
    if spec.text != "empty" and settings.guidance_scale > 1.0:
        uncond = _empty_context(parts)
    empty = _empty_context(parts) if spec.text == "empty" else None

    def step(i0, i1):
        k = i1 - i0
        stage1 = decode_z(sd_parts.vae, _rows(z, i0, i1), S) if spec.init == "z" else None
        if spec.text == "c":
            text = _rows(c, i0, i1)
        elif spec.text == "caption":
            from ...models.sd import encode_sd_text

            text = encode_sd_text(list(captions[i0:i1]), parts.text_encoder, parts.tokenizer).cpu().numpy()
        else:
            text = np.repeat(empty.cpu().numpy(), k, axis=0)
        dep = _rows(depth, i0, i1) if spec.depth else None
        init = stage1 if stage1 is not None else np.zeros((k, S, S, 3), np.uint8)
        # items = (image, sample) pairs of the chunk, run in batches of batch_size
        item_img = np.repeat(np.arange(k), ns)
        item_seed = seeds[i0:i1].reshape(-1)
        imgs = np.empty((k * ns, S, S, 3), np.uint8)
        seen = None
        for j0 in range(0, k * ns, settings.batch_size):
            sel = item_img[j0:j0 + settings.batch_size]
            res, schedule = run_img2img(
                parts, spec, settings, init[sel], text[sel], item_seed[j0:j0 + settings.batch_size],
                depth=None if dep is None else dep[sel], uncond=uncond,
            )
            imgs[j0:j0 + len(sel)] = res
            if seen is not None and schedule != seen:
                raise RuntimeError(f"a batch ran {schedule}, earlier batches {seen}")
            seen = schedule
        return imgs.reshape(k, ns, S, S, 3), stage1, seen

    outputs, schedule = run_batches(n, max(1, settings.batch_size // ns), step, sink=sink, keep=keep,
                                    desc=f"takagi {variant}", progress=progress)
    datasets = {}
    if spec.text == "caption":
        datasets["captions"] = [str(t) for t in captions]
    if spec.depth:
        datasets["depth"] = np.asarray(depth[0:n], dtype=np.float32)
    return Reconstruction(images=outputs.images, stage1=outputs.stage1, keys=ids.tolist(), seeds=seeds,
                          schedule=schedule, datasets=datasets)


# ----------------------------------------------------------------------------- outputs
def layout(spec: VariantSpec, settings: Settings) -> Layout:
    """What a variant writes per image: n_samples images, X_z where z is used; PNGs ``<nsdId>_<sample>``."""
    ns, S = settings.n_samples, int(settings.image_size)
    return Layout((ns, S, S, 3), (S, S, 3) if spec.init == "z" else None,
                  lambda key: [f"{int(key)}_{s}.png" for s in range(ns)])


def output_attrs(variant: str, subject, settings: Settings, rec: Reconstruction) -> dict:
    spec = variant_spec(variant)
    return dict(method=METHOD, variant=variant, subject=str(subject), num_steps=rec.num_steps,
                timesteps=json.dumps(rec.timesteps),
                noise_timestep=-1 if rec.schedule.noise_timestep is None else int(rec.schedule.noise_timestep),
                variant_spec=json.dumps(dataclasses.asdict(spec)),
                settings=json.dumps(settings.as_dict()), model=spec.model,
                seed_rule="derive_seed(seed, subject, nsdId, sample)")


def reconstruct_to_files(variant: str, nsd_ids: Sequence[int], subject, settings: Settings, outputs: Mapping, *,
                         models: Mapping, inputs: Mapping, attrs: Mapping | None = None,
                         progress: bool = True) -> dict:
    """:func:`reconstruct`, streaming every chunk into ``outputs["h5"]`` and ``outputs["png"]`` (both atomic).

    ``images.h5``: ``images`` (n, n_samples, S, S, 3) uint8, ``nsd_ids``, ``seeds`` (n, n_samples),
    ``stage1`` (variants using z), ``captions`` (t, td), ``depth`` (td); attrs: settings, variant,
    steps run, timesteps, ``attrs``. PNGs: ``<nsdId>_<sample>.png``. Returns a summary dict.
    """
    spec = variant_spec(variant)
    ids = np.asarray(list(nsd_ids), dtype=np.int64)
    rec = write_reconstruction(
        outputs["h5"], outputs["png"], ids.tolist(), layout(spec, settings),
        lambda sink: reconstruct(variant, ids, subject, settings, models=models, inputs=inputs, sink=sink,
                                 keep=False, progress=progress),
        attrs=lambda rec: {**output_attrs(variant, subject, settings, rec), **dict(attrs or {})},
    )
    summary = dict(variant=variant, subject=str(subject), n_images=int(ids.size), n_samples=settings.n_samples,
                   num_steps=rec.num_steps, out=str(outputs["h5"]))
    log.info("takagi %s subject %s: %s", variant, subject, summary)
    return summary


def reconstruct_subject(variant: str, subject, inputs: Mapping, outputs: Mapping, *, settings: Settings,
                        prediction_keys: Mapping[str, str], device: str, dtype: str, progress: bool = True) -> dict:
    """The workflow entry: read the inputs a variant needs, load models, write ``outputs`` (``h5``, ``png``).

    inputs: the rule's inputs (:func:`~.plan.inputs`) — ``{space: path}`` for the spaces the variant needs
    (``sdz``, ``sdc``), read at ``prediction_keys[space]`` (``pred`` / ``pred_restd``; every file must list
    the same test nsdIds); ``captions`` (t, td; from :func:`~.decoded.write_captions_csv`) and ``depth``
    (td; from :func:`~.decoded.write_depth`), read for the images of the regression files; the model
    folders ``sd_model`` and ``sd2_model`` (td).
    """
    spec = variant_spec(variant)
    missing = [s for s in spec.spaces if s not in inputs]
    if missing:
        raise ValueError(f"variant {variant!r} needs regression outputs for {missing}")
    regression = {s: inputs[s] for s in spec.spaces}
    decoded = {k: inputs.get(k) for k in ("captions", "depth")}
    models = {"sd": inputs.get("sd_model"), "sd2_depth": inputs.get("sd2_model")}
    if models["sd"] is None:
        raise ValueError(f"variant {variant!r} needs the sd model folder")
    if spec.depth and models["sd2_depth"] is None:
        raise ValueError(f"variant {variant!r} needs the sd2_depth model folder")
    with contextlib.ExitStack() as stack:
        ids, preds, used = open_predictions(stack, regression, prediction_keys)
        data = dict(preds)
        if "captions" in spec.needs:
            data["captions"] = read_captions_csv(decoded["captions"], ids)
        if spec.depth:
            data["depth"] = read_depth(decoded["depth"], ids)
        loaded, dev, dt = load_components({"sd": models["sd"], "sd2_depth": models.get("sd2_depth") if spec.depth
                                           else None}, device, dtype)
        if "sdz" in preds:
            zshape = preds["sdz"].shape[1:]
            lat = loaded["sd"].vae.config.latent_channels
            if len(zshape) != 3 or zshape[0] != lat:
                raise ValueError(f"{regression['sdz']}: predicted z has shape {zshape}, expected ({lat}, h, w)")
        return reconstruct_to_files(
            variant, ids, subject, settings, outputs, models=loaded, inputs=data, progress=progress,
            attrs=dict(inputs={**{s: str(regression[s]) for s in spec.spaces},
                               "captions": str(decoded.get("captions") or ""), "depth": str(decoded.get("depth") or "")},
                       prediction_keys={s: prediction_keys[s] for s in spec.spaces}, device=dev, dtype=dt),
        )


__all__ = ["sample_seed", "sample_seeds", "decode_z", "run_img2img", "reconstruct", "layout", "output_attrs",
           "reconstruct_to_files", "reconstruct_subject"]
