"""Per-space feature extractors (see :mod:`brainrecon.features.spaces` for the protocol).

Every extractor maps one batch to float32 numpy ``(b, *feature_shape)``; a row depends only on its own
image / captions (and, for VDVAE, on a seed derived from its nsdId), so results do not depend on how
images are batched.

- ``vdvae``: imgBrick rows -> :func:`brainrecon.models.vdvae.preprocess` (PIL bilinear to 64 px,
  ImageNet64 normalisation) -> posterior latents of the first ``vdvae_layers`` decoder blocks, z drawn
  from each block's posterior with a generator seeded by :func:`image_seed` ``(seed, nsdId)`` (the
  reference samples unseeded) -> :func:`~brainrecon.models.vdvae.flatten_latents` (B, 91168) for the
  ImageNet64 model and 31 layers.
- ``clipvision``: the 425 px rows -> :func:`brainrecon.models.vd.encode_vd_image` (VD's own CLIP
  image processor: bicubic resize, centre crop, CLIP mean/std; tokens / CLS norm) -> (B, 257, 768).
- ``cliptext``: the image's first ``max_captions`` captions (COCO annotation-id order) ->
  :func:`brainrecon.models.vd.encode_vd_text` (77, 768) each -> mean over captions.
- ``sdz``: rows resized to ``sdz_size`` px (PIL Lanczos, as Takagi's ``load_img_from_arr``), scaled to
  [-1, 1] -> SD VAE **posterior mean** (Takagi samples the posterior; the mean makes z deterministic)
  times the VAE config's ``scaling_factor`` (0.18215) -> (B, 4, 40, 40) at 320 px.
- ``sdc``: the image's captions -> :func:`brainrecon.models.sd.encode_sd_text` (``last_hidden_state``,
  77x768) -> mean over captions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SEED_MAX = 2**63 - 1


def image_seed(seed: int, nsd_id: int) -> int:
    """Seed of one image's random draws: a hash of (seed, nsdId) (numpy SeedSequence), in [0, 2**63)."""
    if int(seed) < 0 or int(nsd_id) < 0:
        raise ValueError(f"seed and nsdId must be >= 0, got seed={seed}, nsdId={nsd_id}")
    state = np.random.SeedSequence([int(seed), int(nsd_id)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & SEED_MAX)


def image_generators(seed: int, nsd_ids) -> list[torch.Generator]:
    """One CPU generator per image, seeded with :func:`image_seed` (device-independent draws)."""
    return [torch.Generator(device="cpu").manual_seed(image_seed(seed, i)) for i in np.asarray(nsd_ids).ravel()]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _mean_over_captions(encode, captions: Sequence[Sequence[str]], max_captions: int) -> torch.Tensor:
    """``encode(list of str) -> (n, L, D)``; returns (b, L, D): per image the mean over its first
    ``max_captions`` captions (one encoder call for the whole batch)."""
    if max_captions < 1:
        raise ValueError(f"max_captions must be >= 1, got {max_captions}")
    kept = [list(c)[:max_captions] for c in captions]
    for i, c in enumerate(kept):
        if not c:
            raise ValueError(f"image {i} of the batch has no caption")
    flat = [s for c in kept for s in c]
    enc = encode(flat)
    out, start = [], 0
    for c in kept:
        out.append(enc[start:start + len(c)].mean(dim=0))
        start += len(c)
    return torch.stack(out)


# ----------------------------------------------------------------------------- vdvae
def encode_latents_per_image(model, x: torch.Tensor, generators: Sequence[torch.Generator], num_layers: int):
    """Posterior samples of the first ``num_layers`` decoder blocks, one generator per image: row b equals
    ``model.encode_latents(x[b:b+1], num_layers, generator=generators[b])`` whatever the batch (a name kept
    for :mod:`brainrecon.features`; it is :meth:`VDVAE.encode_latents` with a list of generators).

    ``x`` (B, 64, 64, 3) from :func:`~brainrecon.models.vdvae.preprocess`. Returns ``[(B, zdim, res, res)]``.
    """
    return model.encode_latents(x, num_layers, generator=list(generators))


class VDVAEExtractor:
    def __init__(self, parts, vdvae_layers: int = 31, seed: int = 0):
        from ..models.vdvae import latent_dims

        self.model, self.config = parts.model, parts.config
        n_blocks = len(self.model.decoder.dec_blocks)
        layers = int(vdvae_layers)
        if not 1 <= layers <= n_blocks:
            raise ValueError(f"vdvae_layers={vdvae_layers} not in [1, {n_blocks}] (decoder blocks of the model)")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.layers, self.seed = layers, int(seed)
        self.feature_shape = (latent_dims(self.config, layers),)
        self.settings = {
            "vdvae_layers": layers, "seed": self.seed, "image_size": self.config.image_size,
            "latent": "posterior_sample", "resize": "PIL bilinear",
            "noise": "one CPU generator per image seeded by SeedSequence([seed, nsdId])",
        }

    def __call__(self, nsd_ids, images, captions=None) -> np.ndarray:
        from ..models.vdvae import flatten_latents, preprocess

        x = preprocess(images, size=self.config.image_size)
        zs = self.model.encode_latents(x, self.layers, generator=image_generators(self.seed, nsd_ids))
        return _np(flatten_latents(zs))


def setup_vdvae(parts, vdvae_layers: int = 31, seed: int = 0) -> VDVAEExtractor:
    return VDVAEExtractor(parts, vdvae_layers=vdvae_layers, seed=seed)


# ----------------------------------------------------------------------------- Versatile Diffusion CLIP
def setup_clipvision(parts):
    from ..models.vd import encode_vd_image

    def extract(nsd_ids, images, captions=None) -> np.ndarray:
        return _np(encode_vd_image(images, parts.image_encoder, parts.image_feature_extractor,
                                   batch_size=max(1, len(images))))

    extract.settings = {"normalisation": "tokens / ||CLS||", "input": "imgBrick rows at their stored size (425 px in NSD)",
                        "processor": "role's image_feature_extractor"}
    return extract


def caption_extractor(parts, encode, max_captions: int, **settings):
    """Extractor of a caption space: each image's first ``max_captions`` captions encoded with
    ``encode(captions, text_encoder, tokenizer, batch_size=...)`` -> (L, D) each, mean over them.

    ``settings`` are recorded with ``max_captions`` and the reduction.
    """
    n = int(max_captions)

    def extract(nsd_ids, images, captions) -> np.ndarray:
        enc = lambda c: encode(c, parts.text_encoder, parts.tokenizer, batch_size=max(1, len(c)))  # noqa: E731
        return _np(_mean_over_captions(enc, captions, n))

    extract.settings = {"max_captions": n, "reduce": "mean over captions", **settings}
    return extract


def setup_cliptext(parts, max_captions: int = 5):
    from ..models.vd import encode_vd_text

    return caption_extractor(parts, encode_vd_text, max_captions, normalisation="tokens / ||text_embeds||")


# ----------------------------------------------------------------------------- Stable Diffusion (Takagi)
def _resize_unit(images, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, size, size) in [-1, 1] (PIL Lanczos resize)."""
    from PIL import Image

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.shape[1:3] != (size, size):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((size, size), resample=Image.LANCZOS)) for a in arr])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0
    return 2.0 * x - 1.0


def setup_sdz(parts, sdz_size: int = 320):
    from ..models.diffusion import vae_encode

    size = int(sdz_size)
    if size < 8:
        raise ValueError(f"sdz_size must be >= 8, got {sdz_size}")
    vae = parts.vae

    @torch.no_grad()
    def extract(nsd_ids, images, captions=None) -> np.ndarray:
        return _np(vae_encode(vae, _resize_unit(images, size), sample=False))

    extract.settings = {"sdz_size": size, "resize": "PIL Lanczos", "latent": "posterior_mean",
                        "scaling_factor": float(vae.config.scaling_factor)}
    return extract


def setup_sdc(parts, max_captions: int = 5):
    from ..models.sd import encode_sd_text

    return caption_extractor(parts, encode_sd_text, max_captions, output="last_hidden_state")
