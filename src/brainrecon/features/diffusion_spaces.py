"""Extractors of the encoding analysis' parametric spaces: ``zc_s<strength>`` and ``unet_<block>_t<step>``.

Takagi & Nishimoto (CVPR 2023, "Encoding"); the names and settings are in :mod:`brainrecon.features.plan`.

* **zc at noise level s** — the image's z (the same preprocessing as ``sdz``: PIL Lanczos resize to
  ``image_size`` px, VAE posterior **mean** × scaling factor) is put through the shared img2img loop
  (:func:`brainrecon.models.diffusion.sd_img2img`) conditioned on the image's own c (its row of the
  ``sdc`` features file) with strength s: DDIM grid of ``num_inference_steps``, z noised to the first
  kept timestep, then ``int(s · num_inference_steps)`` denoising steps with classifier-free guidance
  ``guidance_scale`` against the empty prompt, ``eta``. The feature is the loop's returned
  ``latents``: the **final denoised latent of the partial schedule** (scaled, i.e. in z's units, before
  VAE decoding), (4, h, w) = (4, 40, 40) at 320 px. The noise of image ``nsdId`` is drawn from a CPU
  generator seeded with :func:`brainrecon.features.extractors.image_seed` ``(seed, nsdId)``, so the
  features do not depend on batching or device RNG. Strength 0 would run no step and return z itself.
* **U-Net activations** — the same img2img of z conditioned on c, at strength ``unet_strength`` (its
  own setting), with a forward hook on one U-Net block; the activation is taken at the ``step``-th
  denoising step (1-based: the ``step``-th UNet call of the run, 1 ≤ step ≤
  ``int(unet_strength · num_inference_steps)``), from the **conditional** half of the classifier-free
  guidance batch (``[uncond; cond]``), and the run stops right after it (later steps would not change
  it). Blocks: ``down<i>`` = ``unet.down_blocks[i]`` (its output hidden states — after its
  downsampler if it has one — not the residuals), ``mid`` = ``unet.mid_block``, ``up<i>`` =
  ``unet.up_blocks[i]`` (after its upsampler if any). Real SD v1-4 has down0..down3, mid, up0..up3;
  at 320 px (40×40 latents) their outputs are down0 320×20×20, down1 640×10×10, down2/down3/mid
  1280×5×5, up0 1280×10×10, up1 1280×20×20, up2 640×40×40, up3 320×40×40 (128 000 … 1 024 000
  values). Storage: ``pool`` = 1 keeps the activation **flattened** (C·h·w, the paper's features,
  reduced to 6,400 PCA components later by the encoding stage); an integer k > 1 average-pools to
  (ceil(h/k), ceil(w/k)) cells (adaptive average pooling), ``"global"`` to the C channel means.
  Values are stored as ``storage_dtype`` (float16 by default: up2 flattened at 320 px is 2 MB per
  image, 20 GB for the 9841 images of subject 1; float32 doubles it).

c is read from the subject's ``sdc`` features file (``c_features``), which is exactly the encoding
analysis' c space.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import check_block

POOL_GLOBAL = "global"
STORAGE_DTYPES = ("float16", "float32")


class CTable:
    """Rows of an ``sdc`` features file by nsdId: ``rows(nsd_ids) -> (b, *feature_shape)`` float32.

    The file is opened per call (a batch), so no handle outlives the extraction.
    """

    def __init__(self, path):
        import h5py
        import numpy as np
        from pathlib import Path

        if path is None:
            raise ValueError("the zc / U-Net spaces need c_features: the subject's sdc features file")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"c features file {self.path} does not exist")
        self.where: dict[int, tuple[str, int]] = {}
        with h5py.File(self.path, "r") as f:
            for split in ("train", "test"):
                for key in (f"{split}/features", f"{split}/nsd_ids"):
                    if key not in f:
                        raise KeyError(f"{self.path}: missing {key!r} (not a features file?)")
                for row, i in enumerate(np.asarray(f[f"{split}/nsd_ids"][()], dtype=np.int64)):
                    self.where[int(i)] = (split, row)
            self.shape = tuple(int(d) for d in f.attrs.get("feature_shape", (f["train/features"].shape[1],)))
            self.space = str(f.attrs.get("space", ""))

    def rows(self, nsd_ids):
        import h5py
        import numpy as np

        ids = [int(i) for i in np.asarray(nsd_ids).ravel()]
        missing = [i for i in ids if i not in self.where]
        if missing:
            raise KeyError(f"{self.path}: no c features for nsdId(s) {missing[:10]}")
        out = np.empty((len(ids), int(np.prod(self.shape))), dtype=np.float32)
        with h5py.File(self.path, "r") as f:
            for split in ("train", "test"):
                pos = [k for k, i in enumerate(ids) if self.where[i][0] == split]
                if not pos:
                    continue
                rows = np.asarray([self.where[ids[k]][1] for k in pos])
                order = np.argsort(rows)
                block = f[f"{split}/features"][rows[order]]  # h5py needs increasing indices
                out[np.asarray(pos)[order]] = block
        return out.reshape(len(ids), *self.shape)


def _check_c(parts, c_table: CTable) -> None:
    dim = int(parts.unet.config.cross_attention_dim)
    if len(c_table.shape) != 2 or c_table.shape[-1] != dim:
        raise ValueError(f"{c_table.path}: c features have shape {c_table.shape}; this UNet needs (tokens, {dim}) "
                         f"(is it the sdc features file of the same model?)")


@dataclass(frozen=True)
class Img2ImgRun:
    """The img2img run both zc and U-Net spaces make (config ``encoding.img2img``; strength per space)."""

    strength: float
    num_inference_steps: int
    guidance_scale: float
    eta: float
    seed: int
    image_size: int
    init_noise: str

    def __post_init__(self):
        if int(self.seed) < 0 or int(self.image_size) < 8:
            raise ValueError(f"seed must be >= 0 and image_size >= 8 px, got {self.seed}, {self.image_size}")

    def sampler(self):
        """The loop's settings (its one argument check); posterior mean: z is the sdz space's latent."""
        from ..models.diffusion import Sampler

        return Sampler(steps=int(self.num_inference_steps), strength=float(self.strength),
                       guidance_scale=float(self.guidance_scale), eta=float(self.eta), posterior="mean",
                       init_noise=self.init_noise)


class _Img2ImgExtractor:
    """Shared part of the zc and U-Net extractors: z of the images -> img2img conditioned on c."""

    def __init__(self, parts, run: Img2ImgRun, c_features):
        self.parts = parts
        self.c_table = CTable(c_features)
        _check_c(parts, self.c_table)
        self.sampler = run.sampler()
        self.strength, self.steps = float(run.strength), int(run.num_inference_steps)
        self.guidance, self.eta, self.seed, self.size = (float(run.guidance_scale), float(run.eta), int(run.seed),
                                                         int(run.image_size))
        self.n_run = self.sampler.num_steps  # the loop's reference truncation
        self._uncond = None
        self.settings = {
            "strength": self.strength, "num_inference_steps": self.steps, "denoising_steps": self.n_run,
            "guidance_scale": self.guidance, "eta": self.eta, "seed": self.seed, "image_size": self.size,
            "init_noise": run.init_noise,
            "c_features": str(self.c_table.path), "c_space": self.c_table.space,
            "init_latent": "VAE posterior mean x scaling_factor of the image (PIL Lanczos to image_size) = sdz",
            "noise": "one CPU generator per image seeded by SeedSequence([seed, nsdId])",
            "uncond": "SD text context of the empty prompt",
        }

    def uncond(self):
        if self._uncond is None and self.guidance > 1.0:
            from ..models.sd import sd_unconditional

            self._uncond = sd_unconditional(self.parts)
        return self._uncond

    def run(self, nsd_ids, images):
        import torch

        from ..models.diffusion import sd_img2img
        from .extractors import _resize_unit, image_generators

        x = _resize_unit(images, self.size)
        c = torch.from_numpy(self.c_table.rows(nsd_ids))
        return sd_img2img(self.parts, x, c, uncond=self.uncond(), generator=image_generators(self.seed, nsd_ids),
                          sampler=self.sampler)


class ZcExtractor(_Img2ImgExtractor):
    """zc: the final latent of the partial img2img schedule, (b, C, h, w) float32."""

    storage_dtype = "float32"

    def __init__(self, parts, run: Img2ImgRun, c_features):
        super().__init__(parts, run, c_features)
        self.settings["feature"] = "final denoised latent of the partial schedule (scaled, before VAE decoding)"

    def __call__(self, nsd_ids, images, captions=None):
        res = self.run(nsd_ids, images)
        if res.num_steps != self.n_run:  # pragma: no cover - guards the loop's truncation rule
            raise RuntimeError(f"img2img ran {res.num_steps} steps, expected int({self.strength} x {self.steps})")
        return res.latents.float().numpy()


def unet_block(unet, block: str):
    """The module of a block name (``down<i>``, ``mid``, ``up<i>``) of a diffusers UNet2DConditionModel."""
    check_block(block)
    if block == "mid":
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("this UNet has no mid block")
        return unet.mid_block
    kind, i = ("down", int(block[4:])) if block.startswith("down") else ("up", int(block[2:]))
    blocks = unet.down_blocks if kind == "down" else unet.up_blocks
    if i >= len(blocks):
        raise ValueError(f"U-Net block {block!r}: this UNet has {len(blocks)} {kind} blocks "
                         f"({kind}0..{kind}{len(blocks) - 1})")
    return blocks[i]


class _Captured(Exception):
    """Raised from the block hook once the activation is taken: ends the img2img run early."""


class BlockCapture:
    """Context manager: count UNet calls (one per denoising step, CFG halves in one call) and keep
    the output of ``module`` during call number ``step`` (1-based), then stop the run.

    ``calls`` (UNet calls so far), ``block_calls`` (calls of the block), ``value`` (the tensor).
    """

    def __init__(self, unet, module, step: int, stop: bool = True):
        self.unet, self.module, self.step, self.stop = unet, module, int(step), stop
        self.calls, self.block_calls, self.value, self._handles = 0, 0, None, []

    def _pre(self, module, args):
        self.calls += 1

    def _hook(self, module, args, output):
        self.block_calls += 1
        if self.calls == self.step and self.value is None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.value = out.detach()
            if self.stop:
                raise _Captured

    def __enter__(self):
        self._handles = [self.unet.register_forward_pre_hook(self._pre),
                         self.module.register_forward_hook(self._hook)]
        return self

    def __exit__(self, exc_type, exc, tb):
        for h in self._handles:
            h.remove()
        self._handles = []
        return exc_type is _Captured


def pool_activation(x, pool):
    """(b, C, h, w) -> pooled (b, C, h', w'): 1 = unchanged, k > 1 = adaptive average pooling to
    (ceil(h/k), ceil(w/k)), ``"global"`` = (b, C) channel means."""
    import torch.nn.functional as F

    if pool == POOL_GLOBAL:
        return x.float().mean(dim=(2, 3))
    if isinstance(pool, bool) or int(pool) != pool or int(pool) < 1:
        raise ValueError(f"pool must be a positive integer or {POOL_GLOBAL!r}, got {pool!r}")
    k = int(pool)
    if k == 1:
        return x
    h, w = x.shape[-2:]
    return F.adaptive_avg_pool2d(x.float(), (-(-h // k), -(-w // k)))


class UNetExtractor(_Img2ImgExtractor):
    """U-Net block activation at one denoising step (see the module docstring)."""

    def __init__(self, parts, run: Img2ImgRun, c_features, *, block, step, pool, storage_dtype):
        super().__init__(parts, run, c_features)
        self.block, self.step, self.pool = check_block(block), int(step), pool
        self.module = unet_block(parts.unet, block)
        if not 1 <= self.step <= self.n_run:
            raise ValueError(f"U-Net step {step} is outside the run's denoising steps 1..{self.n_run} "
                             f"(int(strength {self.strength} x {self.steps}))")
        if not (pool == POOL_GLOBAL or (isinstance(pool, (int, float)) and not isinstance(pool, bool)
                                        and int(pool) == pool >= 1)):
            raise ValueError(f"pool must be a positive integer or {POOL_GLOBAL!r}, got {pool!r}")
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {storage_dtype!r}")
        self.storage_dtype = storage_dtype
        self.settings.update(block=self.block, step=self.step, pool=pool, storage_dtype=storage_dtype,
                             feature=f"output of unet {block} at UNet call {self.step} (1-based), conditional "
                                     f"half of the CFG batch", module=type(self.module).__name__)

    def __call__(self, nsd_ids, images, captions=None):
        import numpy as np

        b = len(np.asarray(nsd_ids).ravel())
        with BlockCapture(self.parts.unet, self.module, self.step) as cap:
            self.run(nsd_ids, images)
        if cap.value is None:  # pragma: no cover - the step check above makes this unreachable
            raise RuntimeError(f"U-Net block {self.block} was not reached at step {self.step} ({cap.calls} calls)")
        act = cap.value
        if act.shape[0] == 2 * b and self.guidance > 1.0:
            act = act[b:]  # [uncond; cond] -> cond
        elif act.shape[0] != b:  # pragma: no cover - guards the loop's batching
            raise RuntimeError(f"block {self.block} output has batch {act.shape[0]} for {b} images")
        return pool_activation(act, self.pool).float().cpu().numpy()


def setup_zc(parts, *, c_features, **run) -> ZcExtractor:
    """zc space: ``run`` = the :class:`Img2ImgRun` fields (strength from the space name)."""
    return ZcExtractor(parts, Img2ImgRun(**run), c_features)


def setup_unet(parts, *, c_features, unet_strength, block, step, pool, storage_dtype, **run) -> UNetExtractor:
    """U-Net space: block and step from the name, the run at ``unet_strength`` (``run``: the other
    :class:`Img2ImgRun` fields)."""
    return UNetExtractor(parts, Img2ImgRun(strength=unet_strength, **run), c_features, block=block, step=step,
                         pool=pool, storage_dtype=storage_dtype)
