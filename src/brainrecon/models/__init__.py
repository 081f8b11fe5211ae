"""brainrecon.models: pretrained models by *role*, real weights or tiny random-weight stand-ins.

Roles (:data:`MODEL_ROLES`, named with their weight sources in :mod:`brainrecon.models.plan`): ``vd``
(Versatile Diffusion), ``clip`` (CLIP ViT-L/14), ``sd`` (Stable Diffusion v1-4), ``blip``, ``dpt`` and
``sd2_depth`` (Takagi +T/+D) — Hugging Face repositories — and ``vdvae`` (the official VDVAE ImageNet64
checkpoint). :mod:`brainrecon.models.registry` implements them.

The workflow's entry points (docs/DATA_PRODUCTS.md, "models"):

- :func:`prepare_model` ``(role, dest, source, seed=0)``: fetch the real weights (``"pretrained"``) or
  build the tiny stand-in (``"tiny"``) into the folder ``dest``, atomically;
- :func:`load_model` ``(role, folder, device="cpu", dtype="float32", *, components=None, source=None,
  **options)``: load such a folder, or some of its components (the same code for real and tiny weights);
- :func:`resolve_device` / :func:`resolve_dtype`: the config's ``models.device`` / ``models.dtype``
  as torch objects (CPU always computes in float32).

Importing this package is cheap (no torch). The registry's names (``ROLES``, ``Components``,
``load_role``, ``build_tiny``, ...) are importable from here too and load on first use.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .plan import DEVICES, DTYPES, MODEL_ROLES, SOURCES, check_role

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

# names re-exported lazily from submodules (first access imports torch)
_LAZY = {
    "ROLES": "registry", "Components": "registry", "build_tiny": "registry", "fetch_model": "registry",
    "load_role": "registry", "prepare_role": "registry", "get_role": "registry",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- device / dtype
def resolve_device(device="auto") -> "torch.device":
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``/``"cuda:N"`` or a torch.device.

    Raises ``RuntimeError`` if CUDA is asked for but not available, ``ValueError`` for other names.
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"model device must be one of {list(DEVICES)} (or 'cuda:N'), got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"model device must be one of {list(DEVICES)} (or 'cuda:N'), got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model device {device!r} requested but CUDA is not available on this machine "
                           f"(set models.device to 'auto' or 'cpu')")
    return dev


def resolve_dtype(dtype="float32", device="cpu") -> "torch.dtype":
    """A torch dtype from a name (``float32|float16|bfloat16``) or a dtype; on CPU always ``float32``
    (half-precision CPU kernels are slow or missing, and the CPU path is the reference)."""
    import torch

    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"model dtype must be one of {list(DTYPES)}, got {dtype!r}")
        dtype = names[dtype]
    elif dtype not in names.values():
        raise ValueError(f"model dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if torch.device(device).type == "cpu" and dtype != torch.float32:
        log.info("dtype %s requested on CPU: computing in float32", dtype)
        dtype = torch.float32
    return dtype


# ----------------------------------------------------------------------------- prepare / load
def prepare_model(role: str, dest, source: str, seed: int = 0, **kwargs) -> Path:
    """Write the folder ``dest`` of ``role`` atomically: real weights (``source="pretrained"``, needs
    internet) or the tiny stand-in with seeded random weights (``"tiny"``). Returns ``dest``.

    ``kwargs`` go to the fetcher (:func:`brainrecon.models.registry.prepare_role`; VDVAE: ``url``,
    ``retries``, ``progress``, ...; HF roles: ``revision``).
    """
    check_role(role)
    if source not in SOURCES:
        raise ValueError(f"model source must be one of {list(SOURCES)}, got {source!r}")
    from .registry import prepare_role

    return prepare_role(role, dest, source, seed=seed, **kwargs)


def load_model(role: str, folder, device="cpu", dtype="float32", *, components=None, source=None, **options):
    """Load ``role`` from ``folder`` (written by :func:`prepare_model`) -> a ``Components`` namespace.

    :func:`brainrecon.models.registry.load_role` with ``path=folder``.
    device, dtype: see :func:`resolve_device` / :func:`resolve_dtype` (models in eval mode, no grads).
    components: load just these components (e.g. ``["image_encoder", "image_feature_extractor"]``),
        without the role's post-load step; default: the whole role (``options`` go to its post-load
        step; VDVAE: :class:`~brainrecon.models.vdvae.VDVAEConfig` overrides such as ``num_latent_layers``).
    source: label stored on the result; roles that can tell infer it from the folder (VDVAE:
        ``vdvae_config.json`` = tiny), the others get ``"unspecified"`` unless given.
    Returns attributes per component (VDVAE: ``model`` :class:`~brainrecon.models.vdvae.VDVAE` and
    ``config``), plus ``role``, ``source``, ``path``, ``component_names``.
    Raises ``FileNotFoundError`` naming the folder when it (or a component folder) is missing.
    """
    check_role(role)
    from .registry import folder_source, load_role

    parts = load_role(role, source="pretrained", path=folder, device=device, dtype=dtype, components=components,
                      **options)
    parts.source = source or folder_source(role, folder) or "unspecified"
    return parts


__all__ = [
    "MODEL_ROLES", "SOURCES", "DEVICES", "DTYPES",
    "resolve_device", "resolve_dtype", "prepare_model", "load_model",
    *_LAZY,
]
