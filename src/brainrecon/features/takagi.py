"""Takagi & Nishimoto +T / +D feature spaces: ``blip`` and ``dpt`` (registered on import; torch-free).

- ``blip`` (role ``blip``, Salesforce/blip-image-captioning-base): imgBrick rows → PIL Lanczos resize to
  ``blip_size`` px (240, as the reference ``img2feat_blip.py``) → the role's BlipImageProcessor without its
  own resize (rescale to [0, 1]; with ``blip_normalize`` the CLIP mean/std normalisation the model was
  trained with — the reference skipped it, passing ``ToTensor()`` pixels: set ``blip_normalize: false`` to
  reproduce that) → ViT ``last_hidden_state`` (post-layernorm, = BLIP's ``visual_encoder`` output) with
  position embeddings interpolated to the grid → (T, D) = (226, 768) at 240 px / patch 16 for the real
  model (15×15 patches + CLS); the tiny model gives (n_patches + 1, 32).
- ``dpt`` (role ``dpt``, Intel/dpt-large): rows → PIL Lanczos resize to ``dpt_resize`` (512, as the
  reference ``img2feat_dpt.py``) → the role's DPTImageProcessor (bicubic to 384×384, mean = std = 0.5) →
  ViT hidden states after the layers in ``config.backbone_out_indices`` (5, 11, 17, 23; i.e.
  ``hidden_states[1:][i]``, exactly what the DPT neck takes) stacked → (4·577, 1024): layers × tokens are
  flattened into one axis so the regression's column slabs are whole tokens (``attrs`` of the file keep the
  layer count in ``settings``). 2.36 M values per image: stored as ``dpt_dtype`` (float16 by default, half
  of 84 GB → 42 GB for a subject's 8859 + 982 images; float32 possible) in (16 rows × 4096 columns) HDF5
  chunks so that writing batches of rows and reading 4-token column slabs both touch whole chunks.
  (Not PCA-reduced: the DPT head needs the full hidden states, and the paper regressed them directly.)

:func:`brainrecon.reconstruct.takagi.decode_depth` turns predicted hidden states back into depth maps with
the same model's neck and head.
"""

from __future__ import annotations

from .spaces import SPACES, FeatureSpace, register_space

_X = "brainrecon.features.takagi"

BLIP_SPACE = FeatureSpace(
    name="blip",
    role="blip",
    inputs="images",
    setup=f"{_X}:setup_blip",
    components=("model", "processor"),
    options={"blip_size": 240, "blip_normalize": True},
    description="BLIP ViT-B visual tokens (last_hidden_state) of the image at blip_size px (226x768 at 240 px)",
)
DPT_SPACE = FeatureSpace(
    name="dpt",
    role="dpt",
    inputs="images",
    setup=f"{_X}:setup_dpt",
    components=("model", "image_processor"),
    options={"dpt_resize": 512, "dpt_dtype": "float16"},
    description="DPT-large ViT hidden states at backbone_out_indices, layers x tokens flattened "
                "((4*577)x1024), image resized to dpt_resize px then by the DPT processor (384 px)",
)

for _space in (BLIP_SPACE, DPT_SPACE):
    if _space.name not in SPACES:
        register_space(_space)

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


def setup_blip(parts, blip_size: int = 240, blip_normalize: bool = True):
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


def setup_dpt(parts, dpt_resize: int = 512, dpt_dtype: str = "float16"):
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


__all__ = ["BLIP_SPACE", "DPT_SPACE", "DPT_CHUNK", "STORAGE_DTYPES", "setup_blip", "setup_dpt"]
