"""Model roles as the workflow sees them (no torch): names, weight sources, folders, GPU tag, dtype.

A *role* is one pretrained model the pipeline uses, named once here; the registry
(:mod:`brainrecon.models.registry`) implements each (components, tiny stand-in, loading).

======== ======================================= ==========================================
role     weights (Hugging Face repo / URL)       used by
======== ======================================= ==========================================
vd       shi-labs/versatile-diffusion            Brain-Diffuser stage 2, CLIP features
clip     openai/clip-vit-large-patch14           evaluation (CLIP columns)
sd       CompVis/stable-diffusion-v1-4           Takagi & Nishimoto (z, c), encoding spaces
blip     Salesforce/blip-image-captioning-base   Takagi +T (visual tokens, captions)
dpt      Intel/dpt-large                         Takagi +D (hidden states, depth)
sd2_depth stabilityai/stable-diffusion-2-depth   Takagi +D (depth-conditioned img2img)
vdvae    the official VDVAE ImageNet64 file      Brain-Diffuser stage 1
======== ======================================= ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

VDVAE_FILE = "imagenet64-iter-1600000-model-ema.th"
VDVAE_BASE_URL = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/"
VDVAE_URL = VDVAE_BASE_URL + VDVAE_FILE

#: role -> where its real weights come from
ROLE_SOURCES: dict[str, str] = {
    "vd": "shi-labs/versatile-diffusion",
    "clip": "openai/clip-vit-large-patch14",
    "sd": "CompVis/stable-diffusion-v1-4",
    "blip": "Salesforce/blip-image-captioning-base",
    "dpt": "Intel/dpt-large",
    "sd2_depth": "stabilityai/stable-diffusion-2-depth",
    "vdvae": VDVAE_URL,
}
MODEL_ROLES = tuple(ROLE_SOURCES)
SOURCES = ("pretrained", "tiny")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


def check_role(role: str) -> str:
    if role not in ROLE_SOURCES:
        raise KeyError(f"unknown model role {role!r}; known roles: {list(MODEL_ROLES)}")
    return role


def model_dir(models: Mapping, role: str) -> str:
    """Folder of a role for the config's ``models`` section: fetched real weights (``root``) or the
    tiny random-weight stand-in (``tiny_root``). ``role`` may be a wildcard (``"{role}"``)."""
    root = models["root"] if models["source"] == "pretrained" else models["tiny_root"]
    return f"{root}/{role}"


def gpu_slots(models: Mapping) -> int:
    """The ``gpu`` resource of a job that runs the registry's models: 1 unless ``models.device`` is
    "cpu" (a CPU run must not hold a GPU slot or land in a GPU partition)."""
    return 0 if models["device"] == "cpu" else 1


def compute_dtype(models: Mapping) -> str:
    """Dtype a model job computes in: ``models.dtype`` on a GPU, float32 on the CPU."""
    return "float32" if models["device"] == "cpu" else models["dtype"]


@dataclass(frozen=True)
class Runtime:
    """Where and how a model job runs; none of it changes what is computed beyond float round-off.

    device: ``models.device`` ("auto", "cpu", "cuda"); dtype: ``models.dtype`` (CPU computes in
    float32); batch_size: items per model call.
    """

    device: str
    dtype: str
    batch_size: int

    def __post_init__(self):
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


__all__ = ["VDVAE_FILE", "VDVAE_BASE_URL", "VDVAE_URL", "ROLE_SOURCES", "MODEL_ROLES", "SOURCES", "DEVICES",
           "DTYPES", "check_role", "model_dir", "gpu_slots", "compute_dtype", "Runtime"]
