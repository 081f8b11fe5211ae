"""Per-space feature extractors (the table of spaces: :mod:`brainrecon.features.plan`).

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
- ``blip`` (Takagi +T, role ``blip``): rows → PIL Lanczos resize to ``blip_size`` px (240, as the
  reference ``img2feat_blip.py``) → the role's BlipImageProcessor without its own resize (rescale to
  [0, 1] = the reference's ``ToTensor()`` pixels, the default; ``blip_normalize: true`` adds the CLIP
  mean/std normalisation the model was trained with) → ViT ``last_hidden_state`` (post-layernorm, =
  BLIP's ``visual_encoder`` output) with position embeddings interpolated to the grid → (T, D) =
  (226, 768) at 240 px / patch 16 for the real model (15×15 patches + CLS).
- ``dpt`` (Takagi +D, role ``dpt``): rows → PIL Lanczos resize to ``dpt_resize`` (512, as the
  reference ``img2feat_dpt.py``) → the role's DPTImageProcessor (bicubic to 384×384, mean = std = 0.5)
  → ViT hidden states after the layers in ``config.backbone_out_indices`` (5, 11, 17, 23; i.e.
  ``hidden_states[1:][i]``, exactly what the DPT neck takes) stacked → (4·577, 1024): layers × tokens
  are flattened into one axis so the regression's column slabs are whole tokens. 2.36 M values per
  image: stored as ``dpt_dtype`` (float16 by default, 42 GB for a subject's 8859 + 982 images;
  float32 doubles it) in (16 rows × 4096 columns) HDF5 chunks so that writing batches of rows and
  reading 4-token column slabs both touch whole chunks. (Not PCA-reduced: the DPT head needs the full
  hidden states, and the paper regressed them directly.)
  :func:`brainrecon.reconstruct.takagi.decode_depth` turns predicted hidden states back into depth
  maps with the same model's neck and head.

Setup functions take the space's fixed settings and its config settings as keyword arguments
(:mod:`brainrecon.features.plan`); none has defaults of its own.
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
class VDVAEExtractor:
    def __init__(self, parts, vdvae_layers: int, seed: int):
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


def setup_vdvae(parts, *, vdvae_layers: int, seed: int) -> VDVAEExtractor:
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


def setup_cliptext(parts, *, max_captions: int):
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


def setup_sdz(parts, *, sdz_size: int):
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


def setup_sdc(parts, *, max_captions: int):
    from ..models.sd import encode_sd_text

    return caption_extractor(parts, encode_sd_text, max_captions, output="last_hidden_state")


# ----------------------------------------------------------------------------- Takagi +T / +D
#: HDF5 chunk (rows, columns) of the dpt features: 16 rows × 4 tokens of 1024 (128 KiB in float16)
DPT_CHUNK = (16, 4096)
STORAGE_DTYPES = ("float16", "float32")


def _resize(images, size: int):
    """uint8 (B, H, W, 3) → list of (size, size, 3) uint8 arrays (PIL Lanczos, as the reference)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.shape[1:3] == (size, size):
        return [np.array(a) for a in arr]
    return [np.array(Image.fromarray(a).resize((size, size), resample=Image.LANCZOS)) for a in arr]


def setup_blip(parts, *, blip_size: int, blip_normalize: bool):
    """Extractor of BLIP visual tokens (see the module docstring). Returns (b, T, D) float32."""
    import numpy as np
    import torch

    size = int(blip_size)
    patch = int(parts.model.config.vision_config.patch_size)
    if size < patch or size % patch:
        raise ValueError(f"blip_size must be a positive multiple of the ViT patch size {patch}, got {blip_size}")
    model = parts.model
    proc = parts.processor.image_processor
    p = next(model.parameters())

    @torch.no_grad()
    def extract(nsd_ids, images, captions=None) -> np.ndarray:
        pv = proc(_resize(images, size), do_resize=False, do_normalize=bool(blip_normalize),
                  return_tensors="pt").pixel_values
        out = model.vision_model(pixel_values=pv.to(p.device, p.dtype), interpolate_pos_encoding=True)
        return out.last_hidden_state.to("cpu", torch.float32).numpy()

    extract.settings = {"blip_size": size, "blip_normalize": bool(blip_normalize), "resize": "PIL Lanczos",
                        "output": "vision_model last_hidden_state (post-layernorm)",
                        "tokens": (size // patch) ** 2 + 1}
    return extract


def setup_dpt(parts, *, dpt_resize: int, dpt_dtype: str):
    """Extractor of DPT backbone hidden states (see the module docstring). Returns (b, L·T, D) float32;
    stored as ``dpt_dtype``."""
    import numpy as np
    import torch

    if dpt_dtype not in STORAGE_DTYPES:
        raise ValueError(f"dpt_dtype must be one of {STORAGE_DTYPES}, got {dpt_dtype!r}")
    size = int(dpt_resize)
    if size < 8:
        raise ValueError(f"dpt_resize must be >= 8, got {dpt_resize}")
    model = parts.model
    proc = parts.image_processor
    indices = list(model.config.backbone_out_indices)
    if getattr(model.config, "is_hybrid", False):
        raise ValueError("dpt features need a ViT (non-hybrid) DPT such as Intel/dpt-large")
    p = next(model.parameters())

    @torch.no_grad()
    def extract(nsd_ids, images, captions=None) -> np.ndarray:
        pv = proc(_resize(images, size), return_tensors="pt").pixel_values
        hs = model.dpt(pv.to(p.device, p.dtype), output_hidden_states=True).hidden_states
        sel = torch.stack([hs[1:][i] for i in indices], dim=1)  # (b, L, T, D)
        return sel.reshape(sel.shape[0], -1, sel.shape[-1]).to("cpu", torch.float32).numpy()

    extract.storage_dtype = dpt_dtype
    extract.chunk_shape = DPT_CHUNK
    extract.settings = {"dpt_resize": size, "dpt_dtype": dpt_dtype, "resize": "PIL Lanczos, then the DPT processor",
                        "backbone_out_indices": indices, "layers": len(indices),
                        "layout": "layers x tokens flattened on axis 0 of feature_shape"}
    return extract
