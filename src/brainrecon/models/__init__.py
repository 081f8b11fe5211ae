"""brainrecon.models: pretrained models by *role*, real weights or tiny random-weight stand-ins.

Roles (:data:`MODEL_ROLES`): ``vd`` (Versatile Diffusion), ``clip`` (CLIP ViT-L/14), ``sd`` (Stable
Diffusion v1-4) — Hugging Face repositories handled by :mod:`brainrecon.models.registry` — and ``vdvae``
(the official VDVAE ImageNet64 checkpoint, :mod:`brainrecon.models.vdvae_role`).

The workflow's entry points (docs/DATA_PRODUCTS.md, "models"):

- :func:`prepare_model` ``(role, dest, source, seed=0)``: fetch the real weights (``"pretrained"``) or
  build the tiny stand-in (``"tiny"``) into the folder ``dest``, atomically;
- :func:`load_model` ``(role, folder, device="cpu", dtype=torch.float32, **options)``: load such a
  folder (the same code for real and tiny weights);
- :func:`resolve_device` / :func:`resolve_dtype`: the config's ``models.device`` / ``models.dtype``
  as torch objects (CPU always computes in float32).

Importing this package is cheap (no torch): the Snakefile reads :data:`MODEL_ROLES`. The registry's
names (``ROLES``, ``Components``, ``load_role``, ``build_tiny``, ...) are importable from here too and
load on first use.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

#: Hugging Face roles of the registry, and every role the workflow can prepare (keep in sync with
#: registry.ROLES; tests/test_models_vdvae_role.py checks it)
# blip, dpt, sd2_depth: Takagi +T/+D roles (brainrecon.models.takagi_roles, registered when the registry loads)
HF_ROLES = ("vd", "clip", "sd", "blip", "dpt", "sd2_depth")
MODEL_ROLES = HF_ROLES + ("vdvae",)
SOURCES = ("pretrained", "tiny")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")

# names re-exported lazily from submodules (first access imports torch)
_LAZY = {
    "ROLES": "registry", "Components": "registry", "build_tiny": "registry", "fetch_model": "registry",
    "load_role": "registry", "prepare_role": "registry", "register_role": "registry", "get_role": "registry",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_role(role: str) -> None:
    if role not in MODEL_ROLES:
        raise KeyError(f"unknown model role {role!r}; known roles: {list(MODEL_ROLES)}")


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

    ``kwargs`` go to the fetcher (VDVAE: ``url``, ``retries``, ...; HF roles: ``revision``).
    """
    _check_role(role)
    if source not in SOURCES:
        raise ValueError(f"model source must be one of {list(SOURCES)}, got {source!r}")
    if role == "vdvae":
        from .vdvae_role import prepare_vdvae

        return prepare_vdvae(dest, source, seed=seed, **kwargs)
    from .registry import prepare_role

    return prepare_role(role, dest, source, seed=seed, **kwargs)


def load_model(role: str, folder, device="cpu", dtype="float32", *, components=None, source=None, **options):
    """Load ``role`` from ``folder`` (written by :func:`prepare_model`) -> a ``Components`` namespace.

    device, dtype: see :func:`resolve_device` / :func:`resolve_dtype` (models in eval mode, no grads).
    components: HF roles only — load just these components (e.g. ``["image_encoder",
        "image_feature_extractor"]``), without the role's post-load step; default: the whole role
        through :func:`brainrecon.models.registry.load_role` (``options`` go to its post-load step).
    source: label stored on the result; VDVAE infers it from the folder (``vdvae_config.json`` =
        tiny), HF roles get ``"unspecified"`` unless given.
    Returns attributes per component (VDVAE: ``model`` :class:`~brainrecon.models.vdvae.VDVAE` and
    ``config``), plus ``role``, ``source``, ``path``, ``component_names``.
    Raises ``FileNotFoundError`` naming the folder when it (or a component folder) is missing.
    """
    _check_role(role)
    from .registry import Components

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model folder {folder} for role {role!r} does not exist; create it with prepare_model "
            f"(workflow rules fetch_models / models_build_tiny)"
        )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if role == "vdvae":
        from . import vdvae_role

        if components is not None and list(components) != ["model"]:
            raise ValueError(f"role 'vdvae' has one component 'model', asked for {list(components)}")
        loaded = vdvae_role.load(folder, device=dev, dtype=dt, **options)
        return Components(role=role, source=source or vdvae_role.folder_source(folder), path=str(folder),
                          component_names=["model"], **loaded)
    if components is not None:
        if options:
            raise TypeError(f"options {sorted(options)} need the whole role (components=None)")
        return _load_components(role, folder, list(components), dev, dt, source or "unspecified")
    from .registry import load_role

    parts = load_role(role, source="pretrained", path=folder, device=dev, dtype=dt, **options)
    parts.source = source or "unspecified"
    return parts


def _resolve(ref: str):
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _load_components(role: str, folder: Path, names: list[str], device, dtype, source: str):
    """Load only ``names`` of an HF role from ``folder`` (same classes and settings as load_role)."""
    from .registry import DDIM_OVERRIDES, Components, get_role

    spec = get_role(role)
    if not names:
        raise ValueError(f"no components asked for role {role!r}")
    parts = Components(role=role, source=source, path=str(folder), component_names=list(names))
    for name in names:
        comp = spec.component(name)  # KeyError listing the role's components
        sub = folder / comp.subfolder if comp.subfolder else folder
        if not sub.is_dir():
            raise FileNotFoundError(f"model folder {folder} (role {role!r}) has no {comp.subfolder!r} folder")
        kwargs = {"local_files_only": True}
        if comp.subfolder:
            kwargs["subfolder"] = comp.subfolder
        if comp.kind == "scheduler":
            kwargs.update(DDIM_OVERRIDES)
        if comp.kind == "model":
            kwargs["dtype" if comp.load_class.startswith("transformers:") else "torch_dtype"] = dtype
        try:
            obj = _resolve(comp.load_class).from_pretrained(str(folder), **kwargs)
        except Exception as e:
            raise RuntimeError(f"loading component {name!r} of role {role!r} from {folder} failed: {e}") from e
        if comp.kind == "model":
            obj = obj.to(device).eval()
            obj.requires_grad_(False)
        setattr(parts, name, obj)
    return parts


__all__ = [
    "HF_ROLES", "MODEL_ROLES", "SOURCES", "DEVICES", "DTYPES",
    "resolve_device", "resolve_dtype", "prepare_model", "load_model",
    *_LAZY,
]
