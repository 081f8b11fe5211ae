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

ROI-optimal images (paper §3.4, Figs 5 and 7; :mod:`.roi`): :func:`brainrecon.nsd.rois.roi_patterns` builds, for each ROI,
the synthetic pattern 1 on ROI ∩ prepared voxels, 0 elsewhere (in the z-scored space); the
regression stage predicts it (``extra/roi_<name>``); :func:`renormalise` rescales each
predicted vector (flattened) to the mean euclidean norm of the training feature rows
(:func:`mean_row_norm`, computed from ``train/features`` of the features files; the
subject average uses the training rows of every subject). The reference hard-codes
the norms instead (80 for VDVAE after a z-scoring across its 13 ROI patterns, and 9 / 15
for the CLIP-text / vision components before adding the intercept), and builds its V1-V4
masks from the wrong label file (floc-faces); we follow SPEC §3: V1-V4 from prf-visualrois.
The renormalised predictions are then reconstructed like test images (variant ``full``).

Outputs (:func:`reconstruct_to_files`, through the run template :mod:`brainrecon.reconstruct.run`): ``images.h5`` — ``images`` uint8 (n, S, S, 3),
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
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..run import (
    Layout,
    Reconstruction,
    Schedule,
    derive_seed,
    generators,
    load_components,
    open_predictions,
    png_name,
    run_batches,
    subject_code,
    to_uint8,
    upsample,
    write_reconstruction,
)
from .plan import METHOD, Settings, VariantSpec, variant_settings, variant_spec

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- stage 1
def vdvae_num_layers(model, dims: int) -> int:
    """Number of leading decoder blocks whose latents make ``dims`` flattened values."""
    from ...models.vdvae import latent_dims

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
    from ...models.vdvae import unflatten_latents

    lat = np.asarray(latents, dtype=np.float32)
    if lat.ndim != 2 or lat.shape[0] != len(seeds):
        raise ValueError(f"VDVAE latents must be (n, D) with n = {len(seeds)} seeds, got shape {lat.shape}")
    if not np.isfinite(lat).all():
        raise ValueError("predicted VDVAE latents contain NaN or inf")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = vdvae_num_layers(model, lat.shape[1]) if num_layers is None else int(num_layers)
    out = np.empty((lat.shape[0], model.config.image_size, model.config.image_size, 3), np.uint8)
    gens = generators(seeds, 1)
    bs = int(batch_size)
    for i0 in tqdm(range(0, lat.shape[0], bs), desc="stage 1 (VDVAE)", disable=not progress, leave=False):
        i1 = min(i0 + bs, lat.shape[0])
        z = unflatten_latents(torch.from_numpy(lat[i0:i1]), model.config, k)
        out[i0:i1] = model.decode_from_latents(z, temperature=float(temperature), generator=gens[i0:i1])
    return out


# ----------------------------------------------------------------------------- stage 2
def context_shapes(parts) -> tuple[tuple[int, int], tuple[int, int]]:
    """((text tokens, dim), (image tokens, dim)) the dual-guided UNet of ``parts`` expects."""
    from ...models.vd import vd_condition_lengths

    text_len, image_len = vd_condition_lengths(parts.text_encoder, parts.image_encoder)
    dim = int(parts.image_unet.config.cross_attention_dim)
    return (text_len, dim), (image_len, dim)


@torch.no_grad()
def run_stage2(parts, init_images, text_ctx, image_ctx, seeds: Sequence[int], settings: Settings,
               text_weight: float, init: str, uncond) -> tuple[np.ndarray, int, list[int]]:
    """Stage 2 for one batch: dual-guided VD img2img via the shared loop.

    init_images: with ``init="stage1"``, the upsampled stage-1 images (b, S, S, 3) uint8;
        with ``init="noise"``, the image side S (int): the init latent is a standard-normal
        draw from each image's stage-2 generator
        (:func:`~brainrecon.models.diffusion.random_latents`, passed as ``init_latents``).
    text_ctx (b, 77, D), image_ctx (b, 257, D) float; seeds: one per image (stage-2
    generator ``derive_seed(seed, 2)``); settings: steps, strength, guidance_scale;
    text_weight: dual-guidance ``mix_ratio``; uncond: (text, image) unconditional contexts
    (CLIP("") / CLIP(grey), :func:`brainrecon.models.vd.vd_unconditional`).
    Returns (images (b, S, S, 3) uint8, the :class:`~brainrecon.reconstruct.run.Schedule` run).
    """
    from ...models.diffusion import Sampler, random_latents, vd_img2img

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
    gens = generators(seeds, 2)
    if init == "stage1":
        init_arr = np.asarray(init_images)
        if init_arr.shape[0] != b:
            raise ValueError(f"{b} seeds but {init_arr.shape[0]} init images")
        init_in, init_lat = torch.from_numpy(init_arr), None
    elif init == "noise":
        init_in, init_lat = None, random_latents(parts.vae, int(init_images), gens)
    else:
        raise ValueError(f"stage-2 init must be 'stage1' or 'noise', got {init!r}")
    sampler = Sampler(steps=int(settings.steps), strength=float(settings.strength),
                      guidance_scale=float(settings.guidance_scale), eta=0.0, posterior="sample",
                      init_noise=settings.init_noise)
    res = vd_img2img(parts, init_in, text, image, mix_ratio=float(text_weight), uncond=uncond, generator=gens,
                     sampler=sampler, init_latents=init_lat)
    return to_uint8(res.images), Schedule.of(res)


# ----------------------------------------------------------------------------- the method
def _rows(source, i0: int, i1: int) -> np.ndarray | None:
    return None if source is None else np.asarray(source[i0:i1], dtype=np.float32)


def _zeros_like_ctx(shape, b):
    return np.zeros((b, *shape), np.float32)


@torch.no_grad()
def reconstruct(variant: str, keys: Sequence, subject, settings: Settings, *, models: Mapping, inputs: Mapping,
                sink: Callable | None = None, keep: bool = True, progress: bool = True) -> Reconstruction:
    """Reconstruct the images ``keys`` (nsdIds, or ROI names) of one subject with one variant.

    models: ``{"vdvae": VDVAE, "vd": role "vd" (dual-guided)}`` — what the variant needs.
    inputs: ``{space: (n, ...) predictions}`` for the spaces the variant reads (:func:`variant_spec`;
    ``vdvae`` (n, D), ``cliptext`` (n, 77, D'), ``clipvision`` (n, 257, D')): array-likes sliceable by
    rows (numpy arrays, :class:`~brainrecon.reconstruct.run.Predictions`), row i belonging to ``keys[i]``.
    sink(i0, images, stage1): called after each batch (e.g. to stream to files).
    keep: also return all images in memory (``False`` when a sink stores them).
    """
    spec = variant_spec(variant, settings.text_weight)
    keys = list(keys)
    n = len(keys)
    for space in spec.needs:
        if inputs.get(space) is None:
            raise ValueError(f"variant {variant!r} needs the {space} predictions")
        if len(inputs[space]) != n:
            raise ValueError(f"{space} predictions have {len(inputs[space])} rows for {n} images")
    vdvae_model, vd_parts = models.get("vdvae"), models.get("vd")
    if spec.stage1 and vdvae_model is None:
        raise ValueError(f"variant {variant!r} needs the VDVAE model")
    if spec.stage2 and vd_parts is None:
        raise ValueError(f"variant {variant!r} needs the Versatile Diffusion model")
    seeds = np.asarray([image_seed(settings.seed, subject, k) for k in keys], dtype=np.int64)

    uncond = None
    if spec.stage2:
        from ...models.vd import vd_unconditional

        uncond = vd_unconditional(vd_parts)  # CLIP("") and CLIP(grey), once for all batches
        text_shape, image_shape = context_shapes(vd_parts)

    def step(i0, i1):
        s = seeds[i0:i1]
        stage1 = None
        if spec.stage1:
            stage1 = decode_stage1(vdvae_model, _rows(inputs["vdvae"], i0, i1), s, settings.vdvae_temperature)
        if not spec.stage2:
            return upsample(stage1, settings.image_size), stage1, Schedule()
        b = i1 - i0
        text = _rows(inputs["cliptext"], i0, i1) if "cliptext" in spec.needs else _zeros_like_ctx(text_shape, b)
        image = _rows(inputs["clipvision"], i0, i1) if "clipvision" in spec.needs else _zeros_like_ctx(image_shape, b)
        init = upsample(stage1, settings.image_size) if spec.init == "stage1" else settings.image_size
        images, schedule = run_stage2(vd_parts, init, text, image, s, settings, spec.text_weight, spec.init, uncond)
        return images, stage1, schedule

    outputs, schedule = run_batches(n, int(settings.batch_size), step, sink=sink, keep=keep,
                                    desc=f"braindiffuser {variant}", progress=progress)
    return Reconstruction(images=outputs.images, stage1=outputs.stage1, keys=keys, seeds=seeds, schedule=schedule)


# ----------------------------------------------------------------------------- outputs
def layout(spec: VariantSpec, settings: Settings, vdvae_model=None) -> Layout:
    """What a variant writes per image: the image, the 64-px stage-1 image (variants with stage 1)."""
    size = int(settings.image_size)
    stage1 = None
    if spec.stage1:
        res = int(getattr(getattr(vdvae_model, "config", None), "image_size", 64))
        stage1 = (res, res, 3)
    return Layout((size, size, 3), stage1, lambda key: [png_name(key)])


def output_attrs(variant: str, subject, settings: Settings, rec: Reconstruction) -> dict:
    """The attrs of a variant's images.h5: the settings it depends on, the variant, the steps run."""
    spec = variant_spec(variant, settings.text_weight)
    used = variant_settings(variant, settings.as_dict())  # only what this variant depends on
    if spec.stage2:
        used["batch_size"] = settings.batch_size
    return {
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
        "noise_timestep": -1 if rec.schedule.noise_timestep is None else int(rec.schedule.noise_timestep),
        "eta": 0.0,
        "seed_derivation": "image seed = derive_seed(seed, subject code (avg=0), nsdId | 2^32+crc32(roi)); "
                           "stage 1 Generator(derive_seed(s, 1)), stage 2 Generator(derive_seed(s, 2))",
        **used,
    }


def reconstruct_to_files(variant: str, keys: Sequence, subject, settings: Settings, outputs: Mapping, *,
                         models: Mapping, inputs: Mapping, attrs: Mapping | None = None, progress: bool = True) -> dict:
    """:func:`reconstruct`, streaming every batch into ``outputs["h5"]`` (images.h5) and ``outputs["png"]``
    atomically (:func:`~brainrecon.reconstruct.run.write_reconstruction`). Keys are nsdIds (ints, written
    as ``nsd_ids``) or ROI names (strings, written as ``rois``). ``attrs``: extra HDF5 attributes (input
    files, device, ...). Returns a summary."""
    spec = variant_spec(variant, settings.text_weight)
    key_name = "rois" if keys and all(isinstance(k, str) for k in keys) else "nsd_ids"
    rec = write_reconstruction(
        outputs["h5"], outputs["png"], keys, layout(spec, settings, models.get("vdvae")),
        lambda sink: reconstruct(variant, keys, subject, settings, models=models, inputs=inputs, sink=sink,
                                 keep=False, progress=progress),
        key_name=key_name, attrs=lambda rec: {**output_attrs(variant, subject, settings, rec), **dict(attrs or {})},
    )
    log.info("wrote %d %s images (%d denoising steps) to %s and %s", len(rec.keys), variant, rec.num_steps,
             outputs["h5"], outputs["png"])
    return {"n": len(rec.keys), "num_denoising_steps": rec.num_steps, "timesteps": rec.timesteps}


def reconstruct_subject(variant: str, subject, inputs: Mapping, outputs: Mapping, *, settings: Settings,
                        prediction_keys: Mapping[str, str], device: str, dtype: str, progress: bool = True) -> dict:
    """The rule's job: one variant for one subject ("01".. or "avg") from the regression outputs.

    inputs: the rule's inputs (:func:`~.plan.inputs`) — ``{space: results/regression/<space>/subj<XX>.h5}``
    for (at least) the spaces the variant needs, read at ``prediction_keys[space]`` (every file must list
    the same test nsdIds), and the model folders ``vdvae_model`` / ``vd_model`` it needs. outputs: ``h5``
    and ``png``. device, dtype: ``models.device`` / the VD models' dtype (VDVAE always runs float32; CPU
    always float32).
    """
    spec = variant_spec(variant, settings.text_weight)
    missing = [sp for sp in spec.needs if sp not in inputs]
    if missing:
        raise ValueError(f"variant {variant!r} needs regression outputs for {missing}")
    regression = {sp: inputs[sp] for sp in spec.needs}
    models = {"vdvae": inputs.get("vdvae_model"), "vd": inputs.get("vd_model")}
    folders = {"vdvae": models["vdvae"] if spec.needs_vdvae_model else None,
               "vd": models["vd"] if spec.needs_vd_model else None}
    if spec.needs_vdvae_model and folders["vdvae"] is None:
        raise ValueError(f"variant {variant!r} needs the VDVAE model folder")
    if spec.needs_vd_model and folders["vd"] is None:
        raise ValueError(f"variant {variant!r} needs the Versatile Diffusion model folder")
    with contextlib.ExitStack() as stack:
        ids, preds, used = open_predictions(stack, regression, prediction_keys)
        loaded, dev, dt = load_components(folders, device, dtype, float32=("vdvae",))
        log.info("models on %s, %s", dev, dt)
        preds_in = {sp: (p.flat() if sp == "vdvae" else p) for sp, p in preds.items()}
        components = {"vdvae": loaded["vdvae"].model if "vdvae" in loaded else None, "vd": loaded.get("vd")}
        return reconstruct_to_files(
            variant, ids.tolist(), subject, settings, outputs, models=components, inputs=preds_in,
            progress=progress,
            attrs={"inputs": json.dumps(used), "device": dev, "dtype": dt,
                   "vdvae_model": str(models.get("vdvae")), "vd_model": str(models.get("vd"))},
        )


__all__ = ["image_seed", "vdvae_num_layers", "decode_stage1", "context_shapes", "run_stage2", "reconstruct",
           "layout", "output_attrs", "reconstruct_to_files", "reconstruct_subject"]
