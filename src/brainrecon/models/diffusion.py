"""The one img2img loop (DDIM, classifier-free guidance) shared by every diffusion method.

Brain-Diffuser (Versatile Diffusion, dual text+image context), Takagi & Nishimoto (Stable
Diffusion, text context) and the encoding analysis' zc / U-Net spaces differ only in the UNet and
in what they pass as ``encoder_hidden_states``; :func:`vd_img2img` and :func:`sd_img2img` are the
two small adapters, :func:`img2img` is the loop, :class:`Sampler` its settings:

1. encode the init images with the VAE: z0 = (posterior sample - shift) x ``scaling_factor``
   (both from ``vae.config``), one noise draw per image from that image's generator
   (``Sampler.posterior="mean"``: the posterior mean, no draw) — or, with ``init_latents``,
   take z0 as given (no encoding, no posterior draw);
2. ``scheduler.set_timesteps(steps)`` and keep the last ``int(strength * steps)`` timesteps —
   the reference truncation (strength 0.75 of 50 -> 37 steps, 0.8 of 50 -> 40);
3. noise z0 to the init level (``scheduler.add_noise``; :attr:`Sampler.init_noise`): ``"reference"``
   = one grid step above the first kept timestep, as the CompVis/VD reference samplers do
   (``stochastic_encode`` at DDIM index ``t_enc``, then ``decode`` from index ``t_enc - 1``: Brain-Diffuser
   noises to t = 741 and denoises from 721, Takagi noises to 801 and denoises from 781); ``"consistent"`` =
   the first kept timestep itself (diffusers' img2img; the noise level matches the first denoising step);
4. for each kept timestep: one UNet call on [uncond; cond] stacked in the batch,
   eps = eps_u + guidance_scale (eps_c - eps_u), DDIM step (eta; with eta > 0 the step
   noise is drawn per image from its generator);
5. decode with the VAE -> images in [0, 1].

Starting from given latents (``init_latents``): steps 2-5 are unchanged, so z0 is noised to
the init level t0 as an encoded image would be, x = sqrt(ᾱ_t0) z0 + sqrt(1 - ᾱ_t0) ε,
and then denoised for the same ``int(strength * steps)`` steps. With standard-normal
z0 (:func:`random_latents`, drawn from the images' own generators before the loop) x is exactly
N(0, I) at any level: a start from pure Gaussian noise (Brain-Diffuser's ``no_vdvae``, Takagi's
``c``). The loop's first draw from generator i is then ε (the posterior draw is skipped).

Determinism: every random draw of image i comes from generator i (CPU generators by
default, so results do not depend on the device's RNG), so a batch gives the same images
as running each image alone with its own seed.

At strength 1 (every grid timestep kept) there is no level above the grid: the reference code fails
there (index ``t_enc`` = steps is past its DDIM table), so both settings noise to the first timestep.
Either way the same number of steps is run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..randomness import per_row_noise
from .vd import images_to_unit_tensor

POSTERIORS = ("sample", "mean")
#: init noise level: one grid step above the first kept timestep (the reference samplers) or at it
INIT_NOISE = ("reference", "consistent")


@dataclass(frozen=True)
class Sampler:
    """The settings of one img2img run.

    steps: DDIM grid (``num_inference_steps``); strength: the fraction of it run, the last
    ``int(strength * steps)`` timesteps (reference truncation; 0 runs none and decodes z0);
    guidance_scale: classifier-free guidance weight (``<= 1``: the conditional branch only);
    eta: DDIM eta (0 = deterministic steps); posterior: ``"sample"`` (one VAE posterior draw per
    init image, as the reference samplers) or ``"mean"`` (no randomness) for encoded init images;
    init_noise: the level the init latent is noised to (:data:`INIT_NOISE`, module docstring step 3).
    """

    steps: int
    strength: float
    guidance_scale: float
    eta: float
    posterior: str
    init_noise: str

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError(f"img2img steps must be >= 1, got {self.steps}")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"img2img strength must be in [0, 1], got {self.strength}")
        if float(self.guidance_scale) < 0 or float(self.eta) < 0:
            raise ValueError(f"guidance_scale and eta must be >= 0, got {self.guidance_scale}, {self.eta}")
        if self.posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {self.posterior!r}")
        if self.init_noise not in INIT_NOISE:
            raise ValueError(f"init_noise must be one of {INIT_NOISE}, got {self.init_noise!r}")

    @property
    def num_steps(self) -> int:
        """Denoising steps the run takes: ``int(strength * steps)`` (37 for 0.75 of 50, 40 for 0.8)."""
        return int(float(self.strength) * int(self.steps))


@dataclass
class Img2ImgResult:
    """images: (B, 3, H, W) float32 in [0, 1] on CPU; latents: final latents (B, C, h, w)
    float32 on CPU (scaled, before decoding); num_steps: denoising steps run (UNet calls);
    timesteps: the scheduler timesteps run; noise_timestep: the level the init latents were noised to
    (``None`` when no step ran)."""

    images: torch.Tensor
    latents: torch.Tensor
    num_steps: int
    timesteps: list[int]
    noise_timestep: int | None = None


# ----------------------------------------------------------------------------- helpers
def init_to_tensor(init_images) -> torch.Tensor:
    """Init images as float32 (B, 3, H, W) in [-1, 1].

    Accepts PIL images (or a list), uint8 arrays, or a float tensor (B, 3, H, W) already
    in [-1, 1]. No resizing: H and W must suit the VAE (multiples of its downsampling).
    """
    if isinstance(init_images, torch.Tensor) and init_images.dtype.is_floating_point:
        t = init_images.detach().float().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"init images must be (B, 3, H, W), got shape {tuple(t.shape)}")
        lo, hi = float(t.min()), float(t.max())
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float init images must be in [-1, 1], got range [{lo:.3f}, {hi:.3f}]")
        return t.clamp(-1, 1)
    return images_to_unit_tensor(init_images) * 2.0 - 1.0


def make_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per image, seeded with ``seeds[i]``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _generators(generator, batch: int) -> list[torch.Generator]:
    if generator is None:
        raise ValueError("img2img needs one generator or seed per image (results must be reproducible)")
    if isinstance(generator, (torch.Generator, int, np.integer)):
        generator = [generator]
    gens = [g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(int(g)) for g in generator]
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} generators/seeds for {batch} images; give one per image")
    return gens


def vae_factor(vae) -> int:
    """Spatial downsampling factor of a diffusers AutoencoderKL (8 for SD / VD, 4 for the tiny VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def random_latents(vae, image_size: int, generator) -> torch.Tensor:
    """Standard-normal scaled latents (B, C, S/f, S/f) float32 for images of side ``image_size``.

    Row i is one draw from ``generator[i]`` (one generator or seed per image; B = their number),
    C = ``vae.config.latent_channels``, f = :func:`vae_factor`. Passed as ``init_latents`` to
    :func:`img2img` with the same ``torch.Generator`` objects (now advanced by this draw; int
    seeds would restart them and the init noise would repeat z0), this is the "random AutoKL
    latent" start.
    """
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    gens = _generators(gens, len(gens))
    size, f = int(image_size), vae_factor(vae)
    if size % f:
        raise ValueError(f"image size {size} is not a multiple of the VAE factor {f}")
    return per_row_noise(gens, (int(vae.config.latent_channels), size // f, size // f))


def _module_device_dtype(module):
    p = next(module.parameters())
    return p.device, p.dtype


def _scale_shift(vae) -> tuple[float, float]:
    scale = getattr(vae.config, "scaling_factor", None)
    if scale is None:
        raise ValueError("VAE config has no scaling_factor")
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(scale), float(shift)


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor, generator=None, sample: bool = True) -> torch.Tensor:
    """Scaled VAE latents (B, C, H/f, W/f) float32 of ``images`` (B, 3, H, W) in [-1, 1].

    sample: posterior sample (one draw per image from ``generator[i]``) as the reference
    samplers do; ``False``: posterior mean (no randomness).
    """
    device, dtype = _module_device_dtype(vae)
    scale, shift = _scale_shift(vae)
    dist = vae.encode(images.to(device, dtype)).latent_dist
    mean = dist.mean.float()
    if sample:
        gens = _generators(generator, images.shape[0])
        z = mean + dist.std.float() * per_row_noise(gens, tuple(mean.shape[1:]), device)
    else:
        z = mean
    return (z - shift) * scale


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) float32 in [0, 1] on CPU from scaled latents."""
    device, dtype = _module_device_dtype(vae)
    scale, shift = _scale_shift(vae)
    x = vae.decode((latents.float() / scale + shift).to(device, dtype)).sample
    return (x.float() / 2 + 0.5).clamp(0, 1).cpu()


def kept_timesteps(scheduler, sampler: Sampler, device=None) -> torch.Tensor:
    """Set the scheduler to ``sampler.steps`` and return its last ``sampler.num_steps`` timesteps."""
    if getattr(scheduler, "order", 1) != 1:
        raise ValueError(f"img2img expects a first-order scheduler (DDIM), got {type(scheduler).__name__}")
    scheduler.set_timesteps(int(sampler.steps), device=device)
    timesteps = scheduler.timesteps
    n_keep = sampler.num_steps  # reference truncation (not rounding)
    return timesteps[len(timesteps) - n_keep:] if n_keep > 0 else timesteps[:0]


def init_noise_timestep(scheduler, sampler: Sampler, device=None) -> torch.Tensor | None:
    """The timestep the init latents are noised to (after :func:`kept_timesteps` set the grid):
    ``"reference"``: the grid timestep before the first kept one (one step noisier), or the first kept one
    when every timestep is kept; ``"consistent"``: the first kept one. ``None`` when no step runs."""
    timesteps = scheduler.timesteps
    n_keep = sampler.num_steps
    if n_keep <= 0:
        return None
    first = len(timesteps) - n_keep
    if sampler.init_noise == "reference" and first > 0:
        first -= 1
    return timesteps[first : first + 1].to(device) if device is not None else timesteps[first : first + 1]


def _as_kwargs(cond, batch: int, what: str) -> dict[str, torch.Tensor]:
    if isinstance(cond, torch.Tensor):
        cond = {"encoder_hidden_states": cond}
    if not isinstance(cond, Mapping):
        raise TypeError(f"{what} must be a tensor (encoder_hidden_states) or a dict of UNet inputs, got {type(cond)}")
    if "encoder_hidden_states" not in cond:
        raise ValueError(f"{what} has no 'encoder_hidden_states'")
    out = {}
    for key, value in cond.items():
        value = torch.as_tensor(value)
        if value.shape[0] not in (1, batch):
            raise ValueError(f"{what}[{key!r}] has batch size {value.shape[0]}, expected 1 or {batch}")
        out[key] = value.expand(batch, *value.shape[1:])
    return out


def to_pil(images: torch.Tensor):
    """List of PIL RGB images from (B, 3, H, W) floats in [0, 1]."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


# ----------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Pipe:
    """The diffusers components one img2img run uses: ``unet``, ``vae``, ``scheduler`` (DDIM)."""

    unet: object
    vae: object
    scheduler: object


@torch.no_grad()
def img2img(
    pipe: Pipe,
    init_images,
    cond,
    uncond=None,
    *,
    generator,
    sampler: Sampler,
    init_latents: torch.Tensor | None = None,
    extra_latent_channels: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Img2ImgResult:
    """DDIM img2img with classifier-free guidance (see the module docstring).

    pipe: the UNet, VAE and (DDIM) scheduler; the scheduler is reset here.
    init_images: (B, 3, H, W) float in [-1, 1], or PIL image(s) / uint8 arrays; ``None`` with
        ``init_latents``.
    cond, uncond: ``encoder_hidden_states`` (B or 1, tokens, dim) or dicts of per-sample UNet
        inputs with that key (batch B or 1, broadcast). ``uncond`` is needed when
        ``sampler.guidance_scale > 1``; it is stacked before ``cond`` in one UNet call per step.
    generator: one ``torch.Generator`` or int seed per image (a single one if B == 1).
    sampler: grid, strength, guidance, eta and the VAE posterior draw (:class:`Sampler`).
    init_latents: (B, C, h, w) scaled latents (the space of :func:`vae_encode`) to start from
        instead of encoding ``init_images`` (then ``None``); they are noised to the first kept
        timestep exactly as encoded images (module docstring), no posterior draw is made.
    extra_latent_channels: (B or 1, c, h, w) concatenated to the latents on the channel axis
        before each UNet call (e.g. the depth map of SD2-depth).
    dtype: UNet/VAE input dtype (default: the UNet's); latents and the scheduler stay float32.
    """
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    guidance_scale, eta = float(sampler.guidance_scale), float(sampler.eta)
    device, unet_dtype = _module_device_dtype(unet)
    dtype = dtype or unet_dtype
    if init_latents is not None:
        if init_images is not None:
            raise ValueError("give init_images or init_latents, not both")
        z0 = torch.as_tensor(init_latents).detach().float()
        channels = int(vae.config.latent_channels)
        if z0.ndim != 4 or z0.shape[1] != channels:
            raise ValueError(f"init_latents must be (B, {channels}, h, w), got shape {tuple(z0.shape)}")
        if not torch.isfinite(z0).all():
            raise ValueError("init_latents contain NaN or inf")
        batch = z0.shape[0]
    else:
        if init_images is None:
            raise ValueError("img2img needs init_images or init_latents")
        x = init_to_tensor(init_images)
        batch = x.shape[0]
    gens = _generators(generator, batch)
    do_cfg = guidance_scale > 1.0

    model_kwargs = _as_kwargs(cond, batch, "cond")
    if do_cfg:
        if uncond is None:
            raise ValueError(f"guidance_scale={guidance_scale} > 1 needs an unconditional context (uncond)")
        unc = _as_kwargs(uncond, batch, "uncond")
        if set(unc) != set(model_kwargs):
            raise ValueError(f"cond keys {sorted(model_kwargs)} and uncond keys {sorted(unc)} differ")
        model_kwargs = {k: torch.cat([unc[k].to(model_kwargs[k].device), model_kwargs[k]]) for k in model_kwargs}
    model_kwargs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in model_kwargs.items()}
    extra = None
    if extra_latent_channels is not None:
        extra = torch.as_tensor(extra_latent_channels).to(device, dtype)
        extra = extra.expand(batch, *extra.shape[1:])
        if do_cfg:
            extra = torch.cat([extra, extra])

    step_params = set(inspect.signature(scheduler.step).parameters)
    if eta and "eta" not in step_params:
        raise ValueError(f"{type(scheduler).__name__}.step has no eta")

    if init_latents is not None:
        latents = z0.to(device)
    else:
        latents = vae_encode(vae, x, gens, sample=sampler.posterior == "sample")
    timesteps = kept_timesteps(scheduler, sampler, device=device)
    t_noise = init_noise_timestep(scheduler, sampler, device=device)
    n_steps = 0
    if len(timesteps):
        noise = per_row_noise(gens, tuple(latents.shape[1:]), device)
        latents = scheduler.add_noise(latents, noise, t_noise.repeat(batch))
        for t in tqdm(timesteps, desc="img2img", disable=not progress):
            model_in = torch.cat([latents, latents]) if do_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            if extra is not None:
                model_in = torch.cat([model_in.to(dtype), extra], dim=1)
            pred = unet(model_in.to(dtype), t, **model_kwargs).sample.float()
            if do_cfg:
                pred_u, pred_c = pred.chunk(2)
                pred = pred_u + guidance_scale * (pred_c - pred_u)
            step_kwargs = {}
            if "eta" in step_params:
                step_kwargs["eta"] = eta
            if eta:
                step_kwargs["variance_noise"] = per_row_noise(gens, tuple(latents.shape[1:]), device)
            latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
            n_steps += 1
    images = vae_decode(vae, latents)
    return Img2ImgResult(
        images=images,
        latents=latents.float().cpu(),
        num_steps=n_steps,
        timesteps=[int(t) for t in timesteps],
        noise_timestep=None if t_noise is None else int(t_noise[0]),
    )


# ----------------------------------------------------------------------------- adapters
def vd_img2img(
    parts,
    init_images,
    text_ctx: torch.Tensor,
    image_ctx: torch.Tensor,
    *,
    mix_ratio: float,
    uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs,
) -> Img2ImgResult:
    """Brain-Diffuser stage 2: dual-guided Versatile Diffusion img2img.

    parts: role "vd" loaded by ``load_role`` (dual-guided ``image_unet``).
    text_ctx (B|1, 77, D), image_ctx (B|1, 257, D): predicted CLIP contexts.
    mix_ratio: weight of the text condition (0.4 = 0.6 vision / 0.4 text).
    uncond: (text, image) unconditional contexts; default CLIP("") and CLIP(grey image).
    kwargs: passed to :func:`img2img` (generator, sampler, ...).
    """
    from .vd import set_dual_guidance, vd_condition_lengths, vd_context, vd_unconditional

    text_len, image_len = vd_condition_lengths(parts.text_encoder, parts.image_encoder)
    if text_ctx.shape[1] != text_len or image_ctx.shape[1] != image_len:
        raise ValueError(
            f"VD contexts must have {text_len} text and {image_len} image tokens, "
            f"got text {tuple(text_ctx.shape)} and image {tuple(image_ctx.shape)}"
        )
    set_dual_guidance(parts.image_unet, mix_ratio, ("text", "image"), text_len, image_len)
    if uncond is None:
        uncond = vd_unconditional(parts)
    cond = vd_context(text_ctx, image_ctx)
    unc = vd_context(*uncond)
    return img2img(Pipe(parts.image_unet, parts.vae, parts.scheduler), init_images, cond, unc, **kwargs)


def sd_img2img(parts, init_images, text_ctx: torch.Tensor, *, uncond: torch.Tensor | None = None,
               **kwargs) -> Img2ImgResult:
    """Takagi & Nishimoto: Stable Diffusion img2img with a (predicted) text context (B|1, 77, D).

    parts: role "sd" (or "sd2_depth") loaded by ``load_role``. uncond: default SD text context of "".
    kwargs: passed to :func:`img2img` (generator, sampler, ...).
    """
    from .sd import sd_unconditional

    if uncond is None and kwargs["sampler"].guidance_scale > 1.0:
        uncond = sd_unconditional(parts)
    return img2img(Pipe(parts.unet, parts.vae, parts.scheduler), init_images, text_ctx, uncond, **kwargs)
