"""VDVAE as a model role: the official ImageNet64 checkpoint, or a tiny seeded stand-in, in one folder layout.

Folder layout (``model_dir("vdvae")`` of the workflow)::

    <folder>/imagenet64-iter-1600000-model-ema.th   plain state dict (official key layout, see vdvae.py)
    <folder>/vdvae_config.json                      tiny folder only: the VDVAEConfig fields it was built with

The real folder holds only the official file, downloaded from :data:`VDVAE_URL` with
:func:`brainrecon.fetch.download_file` (retries, resume, size check, atomic) and then checked
structurally: every key and shape of the ImageNet64 model must be present (loaded memory-mapped, so the
check costs no 500 MB copy). A folder without ``vdvae_config.json`` is read with the ImageNet64
hyperparameters (:class:`VDVAEConfig` defaults); with it, with the hyperparameters it records.
Loading goes through :func:`brainrecon.models.vdvae.load_vdvae` in both cases (strict keys and shapes).

:func:`fetch`, :func:`write_tiny`, :func:`load` and :func:`folder_source` are the ``fetch`` /
``write_tiny`` / ``load`` / ``folder_source`` hooks of the registry's ``vdvae`` role
(:class:`brainrecon.models.registry.RoleSpec`): they work in an existing folder, and the registry's
generic code (:func:`~brainrecon.models.registry.fetch_model`, :func:`~brainrecon.models.registry.build_tiny`,
:func:`~brainrecon.models.registry.load_role`, reached through :func:`brainrecon.models.prepare_model` /
:func:`brainrecon.models.load_model`) makes the folder atomic and checks roles, sources and folders.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from .plan import VDVAE_BASE_URL, VDVAE_FILE, VDVAE_URL
from .vdvae import VDVAE, VDVAEConfig, load_vdvae

log = logging.getLogger(__name__)

ROLE = "vdvae"
#: only tiny folders have it (the real folder -> ImageNet64 hyperparameters)
CONFIG_FILE = "vdvae_config.json"

__all__ = [
    "ROLE", "VDVAE_FILE", "VDVAE_BASE_URL", "VDVAE_URL", "CONFIG_FILE",
    "checkpoint_path", "read_config", "folder_source", "write_tiny", "fetch", "check_checkpoint", "load",
]


def checkpoint_path(folder) -> Path:
    return Path(folder) / VDVAE_FILE


def folder_source(folder) -> str:
    """"tiny" if the folder records its own hyperparameters (``vdvae_config.json``), else "pretrained"."""
    return "tiny" if (Path(folder) / CONFIG_FILE).is_file() else "pretrained"


def read_config(folder) -> VDVAEConfig:
    """Hyperparameters of the model in ``folder``: ``vdvae_config.json`` if present, else ImageNet64.

    Raises ``ValueError`` naming the json file if it is unreadable or has keys VDVAEConfig does not know.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return VDVAEConfig()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of VDVAEConfig fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(VDVAEConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown VDVAEConfig field(s) {unknown}; known: {sorted(known)}")
    try:
        return VDVAEConfig(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid VDVAE hyperparameters: {e}") from e


# ----------------------------------------------------------------------------- hooks (folder exists)
def write_tiny(folder, seed: int = 0, config: VDVAEConfig | None = None) -> None:
    """Write the tiny stand-in into the existing ``folder``: seeded random weights (the reference
    initialisation of :class:`VDVAE`) saved with ``torch.save`` as a plain state dict under the official
    file name, plus ``vdvae_config.json``. Deterministic in ``seed``."""
    from .tiny import seeded

    config = config if config is not None else VDVAEConfig.tiny()
    with seeded(seed):
        model = VDVAE(config)
    folder = Path(folder)
    torch.save(model.state_dict(), folder / VDVAE_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def check_checkpoint(path, config: VDVAEConfig | None = None, what: str | None = None) -> None:
    """Check that ``path`` is a state dict with every key and shape of ``config``'s model (default ImageNet64).

    The file is memory-mapped where possible, so nothing of its size is copied. Raises ``ValueError``
    naming ``what`` (default: the path).
    """
    what = what or str(path)
    config = config if config is not None else VDVAEConfig()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be memory-mapped; read them plainly
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the name
            raise ValueError(f"{what}: cannot be read as a tensor state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{what}: expected a state dict, got {type(state).__name__}")
    try:
        load_vdvae(state, config)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from e


def fetch(
    folder,
    revision=None,
    *,
    url: str = VDVAE_URL,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    config: VDVAEConfig | None = None,
    progress: bool = True,
) -> None:
    """Download the official checkpoint into the existing ``folder`` and check its keys/shapes.

    ``revision`` is accepted for the registry hook signature and must be ``None`` (the file has no
    versions). ``config``: the hyperparameters the file must match (default ImageNet64).
    """
    from ..fetch import download_file

    if revision is not None:
        raise ValueError(f"the VDVAE checkpoint has no revisions; got revision={revision!r}")
    dest = checkpoint_path(folder)
    download_file(url, dest, key=VDVAE_FILE, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s,
                  progress=progress)
    check_checkpoint(dest, config, what=f"{VDVAE_FILE} downloaded from {url}")


def load(folder, device="cpu", dtype: torch.dtype = torch.float32, **options) -> dict:
    """Load the model of ``folder`` -> ``{"model": VDVAE, "config": VDVAEConfig}`` (eval mode, no grads).

    ``options`` override :class:`VDVAEConfig` fields that do not change the weights' layout (e.g.
    ``num_latent_layers``). Raises ``FileNotFoundError`` naming the folder / file when missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"VDVAE model folder {folder} does not exist (create it with prepare_model)")
    ckpt = checkpoint_path(folder)
    if not ckpt.is_file():
        raise FileNotFoundError(f"VDVAE model folder {folder} has no {VDVAE_FILE}")
    config = read_config(folder)
    if options:
        known = {f.name for f in dataclasses.fields(VDVAEConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unexpected option(s) for role 'vdvae': {unknown}")
        config = config.replace(**options)
    return {"model": load_vdvae(ckpt, config, device=device, dtype=dtype), "config": config}
