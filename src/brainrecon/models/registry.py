"""Model registry: one name ("role") per pretrained model, resolved to real or tiny weights.

A role (:mod:`brainrecon.models.plan` names them and their weight sources) lists the components
the pipeline uses from its repository; :data:`ROLES` is the table of every role:

========= ======================================= ==================================================
role      repository                              components (subfolder)
========= ======================================= ==================================================
vd        shi-labs/versatile-diffusion            image_unet, text_unet, vae, image_encoder,
                                                  text_encoder, tokenizer, image_feature_extractor,
                                                  scheduler
clip      openai/clip-vit-large-patch14           model, tokenizer, image_processor (repo root)
sd        CompVis/stable-diffusion-v1-4           unet, vae, text_encoder, tokenizer, scheduler
blip      Salesforce/blip-image-captioning-base   model (BlipForConditionalGeneration), processor
                                                  (BlipProcessor = BlipImageProcessor + BertTokenizer),
                                                  repo root
dpt       Intel/dpt-large                         model (DPTForDepthEstimation), image_processor, root
sd2_depth stabilityai/stable-diffusion-2-depth    unet (5 input channels: 4 latent + 1 depth), vae,
                                                  text_encoder, tokenizer, scheduler (PNDM config,
                                                  loaded as DDIM), depth_estimator, feature_extractor
vdvae     openaipublic (VDVAE ImageNet64)         model (``imagenet64-iter-1600000-model-ema.th``)
========= ======================================= ==================================================

Three ways to a folder with the real on-disk layout (``model_index.json`` + one folder
per component, ``config.json`` + ``diffusion_pytorch_model.safetensors`` /
``model.safetensors``, tokenizer and processor files):

- :func:`fetch_model` downloads the needed files once (machine with internet; the
  workflow's local rule ``fetch_models`` writes ``resources/models/<role>``);
- :func:`build_tiny` builds the same classes from tiny configs with seeded random
  weights (:mod:`brainrecon.models.tiny`) and saves them with ``save_pretrained``;
- :func:`prepare_role` picks one of the two from ``source``.

:func:`load_role` then loads any such folder component by component with
``from_pretrained`` — the same code for real and tiny weights. (Versatile Diffusion is
loaded one component at a time on purpose: diffusers 0.42 cannot load the saved pipeline
as a whole because of ``text_unet``.) Every scheduler is loaded as ``DDIMScheduler``
from the repo's scheduler config with :data:`DDIM_OVERRIDES` (SD v1-4 ships a PNDM config;
DDIM with that config's ``steps_offset=1`` has the timesteps of the CompVis DDIM sampler).

VDVAE is not a Hugging Face repo: its role uses the custom hooks of
:mod:`brainrecon.models.vdvae_role` (verified download of the official checkpoint; tiny =
:meth:`VDVAEConfig.tiny` with seeded weights saved under the official file name plus
``vdvae_config.json``, which only the tiny folder has; load =
:func:`brainrecon.models.vdvae.load_vdvae`). The tiny stand-ins come from
:mod:`brainrecon.models.tiny` and :mod:`brainrecon.models.tiny_takagi`. The workflow calls
:func:`brainrecon.models.load_model`
``(role, folder, device, dtype)`` (:func:`load_role` with a path; this module's ``load_model`` is
an alias of it) and :func:`brainrecon.models.prepare_model` (:func:`prepare_role`).

Why one long module: it is the declarative table of all seven roles plus, per role, its hooks (tiny-config
builders, loaders, checks); the table is meant to be read in one place.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from ..io import atomic_dir
from . import resolve_device, resolve_dtype, tiny, tiny_takagi, vdvae_role
from .plan import MODEL_ROLES, ROLE_SOURCES, SOURCES

# Every scheduler is loaded as DDIM with these settings, whatever the repo's config says: the
# reference (CompVis / Versatile Diffusion) DDIM samplers never clip the x0 prediction, and
# their last step goes to alphas_cumprod[0] (not 1). DDIMScheduler's own defaults differ
# (clip_sample=True), and a PNDM config (SD v1-4) does not set clip_sample at all.
DDIM_OVERRIDES = {"clip_sample": False, "set_alpha_to_one": False, "thresholding": False}

# file names of one model's weights, in order of preference (safetensors first)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ComponentSpec:
    """One component of a role.

    name: attribute name on the loaded :class:`Components`.
    subfolder: folder inside the repo (``None`` = repo root).
    library, class_name: as written in ``model_index.json``.
    load_class: ``"module:Class"`` of the library class that loads it (``from_pretrained``),
        imported only when the component is loaded (diffusers alone takes seconds to import).
    kind: ``model`` (weights + config.json), ``tokenizer``, ``processor`` or ``scheduler``.
    weights: candidate weight file names, preferred first (models only).
    tokenizer_json: whether the real repo's tokenizer folder has ``tokenizer.json``.
    """

    name: str
    subfolder: str | None
    library: str
    class_name: str
    kind: str
    load_class: str
    weights: tuple[str, ...] = ()
    tokenizer_json: bool = False


@dataclass(frozen=True)
class RoleSpec:
    """A role: where its weights come from, its components, and how to build the tiny stand-in.

    Hugging Face roles list ``components`` and give ``build_tiny``; the generic code
    fetches, saves and loads them. Other roles (VDVAE's single ``.th`` file) give the
    custom hooks instead. Hooks are functions:

    build_tiny: ``function(seed) -> {component name: object}`` (HF roles).
    postprocess: ``function(components, **options) -> components`` applied by
        :func:`load_role` (e.g. Versatile Diffusion's dual-guided UNet).
    pipeline_class: ``_class_name`` of ``model_index.json`` (``None``: no model_index).
    fetch: ``function(folder: Path, revision, **options) -> None`` downloads into ``folder``
        (``options``: what :func:`fetch_model` gets beyond ``revision``, e.g. VDVAE's ``url``, ``retries``).
    write_tiny: ``function(folder: Path, seed) -> None`` writes the tiny stand-in into ``folder``.
    load: ``function(folder: Path, device, dtype, **options) -> {name: object}``; the keys named in
        ``hook_components`` are the role's components, any others plain attributes (VDVAE's ``config``).
    folder_source: ``function(folder: Path) -> "tiny" | "pretrained"``: which kind a folder holds
        (used by :func:`brainrecon.models.load_model` to label what it loads).
    """

    name: str
    repo_id: str
    components: tuple[ComponentSpec, ...] = ()
    build_tiny: Callable | None = None
    postprocess: Callable | None = None
    pipeline_class: str | None = None
    extra_patterns: tuple[str, ...] = field(default_factory=tuple)
    fetch: Callable | None = None
    write_tiny: Callable | None = None
    load: Callable | None = None
    hook_components: tuple[str, ...] = ()
    folder_source: Callable | None = None

    def component_names(self) -> list[str]:
        """The role's component names, registry order (HF roles: ``components``; hook roles: ``hook_components``)."""
        return [c.name for c in self.components] if self.components else list(self.hook_components)

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"role {self.name!r} has no component {name!r}; it has {[c.name for c in self.components]}")


class Components(SimpleNamespace):
    """The loaded components of one role: one attribute per component name, plus
    ``role`` (str), ``source`` ("tiny" | "pretrained"), ``path`` (folder or hub id),
    ``component_names`` and whatever the role's post-load step adds (VD: ``text_len``,
    ``image_len``)."""

    def names(self) -> list[str]:
        """The role's component names (registry order)."""
        return list(self.component_names)


def _diffusers_model(name, sub, cls, library="diffusers", load_class=None):
    return ComponentSpec(name, sub, library, cls, "model", load_class or f"diffusers:{cls}", DIFFUSERS_WEIGHTS)


def _transformers_model(name, sub, cls):
    return ComponentSpec(name, sub, "transformers", cls, "model", f"transformers:{cls}", TRANSFORMERS_WEIGHTS)


def _tokenizer(name, sub, tokenizer_json=False):
    return ComponentSpec(name, sub, "transformers", "CLIPTokenizer", "tokenizer", "transformers:CLIPTokenizer",
                         tokenizer_json=tokenizer_json)


def _processor(name, sub, saved_class="CLIPImageProcessor", load_class="CLIPImageProcessor"):
    return ComponentSpec(name, sub, "transformers", saved_class, "processor", f"transformers:{load_class}")


def _scheduler(name, sub, saved_class):
    # loaded as DDIM whatever class the repo saved
    return ComponentSpec(name, sub, "diffusers", saved_class, "scheduler", "diffusers:DDIMScheduler")


def _vd_dual_guided(parts, **options):
    """Versatile Diffusion's post-load step (:func:`brainrecon.models.vd.prepare_vd_components`)."""
    from .vd import prepare_vd_components

    return prepare_vd_components(parts, **options)


def _role(name: str, **kw) -> RoleSpec:
    return RoleSpec(name=name, repo_id=ROLE_SOURCES[name], **kw)


_VD_TEXT_UNET = "diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet:UNetFlatConditionModel"

#: every role, one declarative entry each (names and weight sources: :mod:`brainrecon.models.plan`)
ROLES: dict[str, RoleSpec] = {spec.name: spec for spec in (
    _role(
        "vd",
        components=(
            _diffusers_model("image_unet", "image_unet", "UNet2DConditionModel"),
            # the hub's model_index names the old pipeline module for text_unet
            _diffusers_model("text_unet", "text_unet", "UNetFlatConditionModel", library="versatile_diffusion",
                             load_class=_VD_TEXT_UNET),
            _diffusers_model("vae", "vae", "AutoencoderKL"),
            _transformers_model("image_encoder", "image_encoder", "CLIPVisionModelWithProjection"),
            _transformers_model("text_encoder", "text_encoder", "CLIPTextModelWithProjection"),
            _tokenizer("tokenizer", "tokenizer"),
            _processor("image_feature_extractor", "image_feature_extractor"),
            _scheduler("scheduler", "scheduler", "DDIMScheduler"),
        ),
        build_tiny=tiny.build_vd_components,
        postprocess=_vd_dual_guided,
        pipeline_class="VersatileDiffusionPipeline",
    ),
    _role(
        "clip",
        components=(
            _transformers_model("model", None, "CLIPModel"),
            _tokenizer("tokenizer", None, tokenizer_json=True),
            _processor("image_processor", None),
        ),
        build_tiny=tiny.build_clip_components,
    ),
    _role(
        "sd",
        components=(
            _diffusers_model("unet", "unet", "UNet2DConditionModel"),
            _diffusers_model("vae", "vae", "AutoencoderKL"),
            _transformers_model("text_encoder", "text_encoder", "CLIPTextModel"),
            _tokenizer("tokenizer", "tokenizer"),
            _scheduler("scheduler", "scheduler", "PNDMScheduler"),
        ),
        build_tiny=tiny.build_sd_components,
        pipeline_class="StableDiffusionPipeline",
    ),
    # Takagi & Nishimoto +T / +D
    _role(
        "blip",
        components=(
            _transformers_model("model", None, "BlipForConditionalGeneration"),
            _processor("processor", None, "BlipProcessor", "BlipProcessor"),
        ),
        extra_patterns=tuple(f.replace(".", r"\.") for f in tiny_takagi.BLIP_TOKENIZER_FILES),
        write_tiny=tiny_takagi.write_tiny_blip,
    ),
    _role(
        "dpt",
        components=(
            _transformers_model("model", None, "DPTForDepthEstimation"),
            _processor("image_processor", None, "DPTImageProcessor", "DPTImageProcessor"),
        ),
        build_tiny=tiny_takagi.build_dpt_components,
    ),
    _role(
        "sd2_depth",
        components=(
            _diffusers_model("unet", "unet", "UNet2DConditionModel"),
            _diffusers_model("vae", "vae", "AutoencoderKL"),
            _transformers_model("text_encoder", "text_encoder", "CLIPTextModel"),
            ComponentSpec("tokenizer", "tokenizer", "transformers", "CLIPTokenizer", "tokenizer",
                          "transformers:CLIPTokenizer"),
            _scheduler("scheduler", "scheduler", "PNDMScheduler"),
            _transformers_model("depth_estimator", "depth_estimator", "DPTForDepthEstimation"),
            # the hub's model_index names the deprecated feature-extractor class; loaded as the image processor
            _processor("feature_extractor", "feature_extractor", "DPTFeatureExtractor", "DPTImageProcessor"),
        ),
        build_tiny=tiny_takagi.build_sd2_depth_components,
        pipeline_class="StableDiffusionDepth2ImgPipeline",
    ),
    # Brain-Diffuser stage 1: the official ImageNet64 EMA checkpoint, one .th state dict (hooks: vdvae_role)
    _role(
        "vdvae",
        fetch=vdvae_role.fetch,
        write_tiny=vdvae_role.write_tiny,
        load=vdvae_role.load,
        hook_components=("model",),
        folder_source=vdvae_role.folder_source,
    ),
)}
if tuple(ROLES) != MODEL_ROLES:  # pragma: no cover - guards an edit of one table without the other
    raise RuntimeError(f"models.registry.ROLES {tuple(ROLES)} must implement the roles of models.plan {MODEL_ROLES}")


def get_role(role: str) -> RoleSpec:
    try:
        return ROLES[role]
    except KeyError:
        raise KeyError(f"unknown model role {role!r}; known roles: {sorted(ROLES)}") from None


def _folder(root: Path, spec: ComponentSpec) -> Path:
    return root / spec.subfolder if spec.subfolder else root


def _prefix(spec: ComponentSpec) -> str:
    return f"{spec.subfolder}/" if spec.subfolder else ""


# ----------------------------------------------------------------------------- fetching
def _weight_files(files_in_folder: set[str], candidates: tuple[str, ...]) -> list[str] | None:
    """Pick one weight set among ``candidates`` (single file, or index + shards)."""
    for name in candidates:
        if name in files_in_folder:
            return [name]
        index = f"{name}.index.json"
        if index in files_in_folder:
            base, ext = name.rsplit(".", 1)
            shard = re.compile(rf"{re.escape(base)}-\d+-of-\d+\.{re.escape(ext)}")
            shards = sorted(f for f in files_in_folder if shard.fullmatch(f))
            if shards:
                return [index, *shards]
    return None


def select_repo_files(role: str, repo_files) -> list[str]:
    """The files of the repo listing ``repo_files`` that :func:`load_role` needs.

    Per model component: its ``config.json`` and one weight set (safetensors preferred
    over ``.bin``; fp16 / non-EMA variants and single-file checkpoints are never taken).
    Tokenizer, processor and scheduler folders: their ``.json`` / ``.txt`` files. Plus
    ``model_index.json`` where the repo has one. Raises ``FileNotFoundError`` naming the
    repo and folder when a component is missing.
    """
    spec = get_role(role)
    repo_files = set(repo_files)
    chosen: list[str] = []
    if "model_index.json" in repo_files:
        chosen.append("model_index.json")
    for comp in spec.components:
        prefix = _prefix(comp)
        here = {f[len(prefix):] for f in repo_files if f.startswith(prefix) and "/" not in f[len(prefix):]}
        if comp.kind == "model":
            if "config.json" not in here:
                raise FileNotFoundError(f"{spec.repo_id}: no {prefix}config.json for component {comp.name!r}")
            weights = _weight_files(here, comp.weights)
            if weights is None:
                raise FileNotFoundError(
                    f"{spec.repo_id}: none of {list(comp.weights)} (or sharded forms) in {prefix or 'repo root'} "
                    f"for component {comp.name!r}"
                )
            chosen += [prefix + "config.json"] + [prefix + w for w in weights]
        else:
            if comp.kind == "tokenizer":
                wanted = {"tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                          "tokenizer.json", "added_tokens.json"}
            elif comp.kind == "processor":
                wanted = {"preprocessor_config.json"}
            else:
                wanted = {"scheduler_config.json"}
            found = sorted(here & wanted)
            if not found:
                raise FileNotFoundError(f"{spec.repo_id}: no {sorted(wanted)} in {prefix or 'repo root'} "
                                        f"for component {comp.name!r}")
            chosen += [prefix + f for f in found]
    for pat in spec.extra_patterns:
        chosen += sorted(f for f in repo_files if re.fullmatch(pat, f))
    return sorted(dict.fromkeys(chosen))


def fetch_model(role: str, dest, revision: str | None = None, token: str | None = None, **options) -> Path:
    """Download the files ``role`` needs into ``dest`` (atomically: all or nothing).

    Hugging Face roles: lists the repository, keeps :func:`select_repo_files`, and calls
    ``huggingface_hub.snapshot_download(allow_patterns=<those files>, local_dir=...)``.
    Roles with a ``fetch`` hook (VDVAE) use it; ``options`` go to the hook (VDVAE: ``url``,
    ``retries``, ``progress``, ... of :func:`brainrecon.models.vdvae_role.fetch`). Needs internet;
    run once (the local rule ``fetch_models``); later jobs load ``dest`` offline (``HF_HUB_OFFLINE=1``).
    """
    spec = get_role(role)
    dest = Path(dest)
    if spec.fetch:
        if token is not None:
            options["token"] = token
        with atomic_dir(dest) as tmp:
            spec.fetch(tmp, revision, **options)
        return dest
    if options:
        raise TypeError(f"unexpected download option(s) for role {role!r}: {sorted(options)}")

    from huggingface_hub import HfApi, snapshot_download

    files = HfApi(token=token).list_repo_files(spec.repo_id, revision=revision)
    wanted = select_repo_files(role, files)
    with atomic_dir(dest) as tmp:
        snapshot_download(spec.repo_id, revision=revision, allow_patterns=wanted, local_dir=str(tmp), token=token)
        missing = [f for f in wanted if not (tmp / f).is_file()]
        if missing:
            raise FileNotFoundError(f"download of {spec.repo_id} into {dest} is missing {missing}")
        # huggingface_hub keeps download metadata in .cache/ inside local_dir; not part of the layout
        cache = tmp / ".cache"
        if cache.exists():
            shutil.rmtree(cache)
    return dest


# ----------------------------------------------------------------------------- tiny
def _model_index(spec: RoleSpec) -> dict:
    import diffusers

    index = {"_class_name": spec.pipeline_class, "_diffusers_version": diffusers.__version__}
    for comp in spec.components:
        index[comp.name] = [comp.library, comp.class_name]
    return index


def save_components(role: str, parts: dict, dest) -> Path:
    """Save ``parts`` ({component name: object}) of ``role`` into ``dest`` in the repo's layout (atomically)."""
    from .tiny import save_clip_tokenizer

    spec = get_role(role)
    missing = [c.name for c in spec.components if c.name not in parts]
    if missing:
        raise ValueError(f"cannot save role {role!r}: components {missing} missing")
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        for comp in spec.components:
            obj = parts[comp.name]
            folder = _folder(tmp, comp)
            folder.mkdir(parents=True, exist_ok=True)
            if comp.kind == "tokenizer":
                save_clip_tokenizer(obj, folder, with_tokenizer_json=comp.tokenizer_json)
            elif comp.kind == "model":
                obj.save_pretrained(str(folder))
            else:
                obj.save_pretrained(str(folder))
        if spec.pipeline_class:
            (tmp / "model_index.json").write_text(json.dumps(_model_index(spec), indent=2) + "\n")
    return dest


def build_tiny(role: str, dest, seed: int = 0) -> Path:
    """Build the tiny stand-in of ``role`` (seeded random weights) and save it in the real layout at ``dest``."""
    spec = get_role(role)
    if spec.write_tiny:
        dest = Path(dest)
        with atomic_dir(dest) as tmp:
            spec.write_tiny(tmp, seed)
        return dest
    if not spec.build_tiny:
        raise ValueError(f"role {role!r} has no tiny stand-in")
    parts = spec.build_tiny(seed)
    return save_components(role, parts, dest)


def prepare_role(role: str, dest, source: str, seed: int = 0, revision: str | None = None, **options) -> Path:
    """Write ``resources/models/<role>``-style folder ``dest``: download (pretrained, :func:`fetch_model` with
    ``revision`` and ``options``) or build (tiny, :func:`build_tiny` with ``seed``; no options)."""
    get_role(role)
    if source == "pretrained":
        return fetch_model(role, dest, revision=revision, **options)
    if source == "tiny":
        if options:
            raise TypeError(f"unexpected option(s) for a tiny {role!r}: {sorted(options)}")
        return build_tiny(role, dest, seed=seed)
    raise ValueError(f"model source must be one of {list(SOURCES)}, got {source!r}")


# ----------------------------------------------------------------------------- loading
_TINY_CACHE: dict[tuple[str, int], Path] = {}
_TINY_TMP: list[tempfile.TemporaryDirectory] = []


def _tiny_folder(role: str, seed: int) -> Path:
    key = (role, int(seed))
    if key not in _TINY_CACHE:
        tmp = tempfile.TemporaryDirectory(prefix=f"brainrecon-tiny-{role}-")
        _TINY_TMP.append(tmp)
        _TINY_CACHE[key] = build_tiny(role, Path(tmp.name) / role, seed=seed)
    return _TINY_CACHE[key]


def _component_class(comp: ComponentSpec):
    """The library class of ``comp.load_class`` (``"module:Class"``), imported now."""
    module, _, name = comp.load_class.partition(":")
    return getattr(importlib.import_module(module), name)


def _load_component(comp: ComponentSpec, where: str, local: bool, dtype, revision):
    cls = _component_class(comp)
    kwargs = {}
    if comp.subfolder:
        kwargs["subfolder"] = comp.subfolder
    if local:
        kwargs["local_files_only"] = True
    elif revision is not None:
        kwargs["revision"] = revision
    if comp.kind == "scheduler":
        kwargs.update(DDIM_OVERRIDES)
    if comp.kind == "model":
        if comp.load_class.startswith("transformers:"):
            kwargs["dtype"] = dtype
        else:
            kwargs["torch_dtype"] = dtype
    return cls.from_pretrained(where, **kwargs)


def resolve_device_dtype(device="auto", dtype="float32") -> tuple[torch.device, torch.dtype]:
    """``(resolve_device(device), resolve_dtype(dtype, that device))``: the one device/dtype policy of
    :mod:`brainrecon.models` ("auto" = CUDA if available; CPU always computes in float32; ``RuntimeError``
    if CUDA is asked for but absent)."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def _asked_components(spec: RoleSpec, components) -> list[str]:
    """The component names to load: all of the role's (``None``) or the given ones, checked."""
    names = spec.component_names()
    if components is None:
        return names
    asked = list(components)
    if not asked:
        raise ValueError(f"no components asked for role {spec.name!r}")
    if spec.components:
        for name in asked:
            spec.component(name)  # KeyError listing the role's components
    elif not set(asked) <= set(names):
        has = f"one component {names[0]!r}" if len(names) == 1 else f"components {names}"
        raise ValueError(f"role {spec.name!r} has {has}, asked for {asked}")
    return asked


def load_role(
    role: str,
    source: str = "tiny",
    path=None,
    device="cpu",
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
    postprocess: bool = True,
    revision: str | None = None,
    components=None,
    **options,
) -> Components:
    """Load the components of ``role``.

    path: a folder written by :func:`fetch_model` / :func:`build_tiny` (the normal case;
        ``source`` then only labels the result). Without ``path``: ``source="tiny"`` builds
        the tiny stand-in into a temporary folder (once per process and seed) and loads it;
        ``source="pretrained"`` loads from the hub id (cache / network).
    device, dtype: see :func:`brainrecon.models.resolve_device` / :func:`~brainrecon.models.resolve_dtype`
        ("auto", dtype names; CPU computes in float32); models in eval mode, gradients off.
    components: load only these components (e.g. ``["image_encoder", "image_feature_extractor"]``),
        without the role's post-load step; default ``None``: all of them.
    postprocess: apply the role's post-load step (Versatile Diffusion: build the
        dual-guided image UNet, see :func:`brainrecon.models.vd.prepare_vd_components`);
        ``options`` are passed to it (hook roles: to the ``load`` hook).
    Raises ``FileNotFoundError`` naming the folder when it (or a needed component folder) is missing.
    """
    spec = get_role(role)
    if source not in SOURCES:
        raise ValueError(f"model source must be one of {list(SOURCES)}, got {source!r}")
    device, dtype = resolve_device_dtype(device, dtype)
    names = _asked_components(spec, components)
    if path is not None:
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"model folder {root} for role {role!r} does not exist; create it with prepare_model "
                f"(workflow rules fetch_models / models_build_tiny)"
            )
        for name in names if spec.components else ():
            comp = spec.component(name)
            if not _folder(root, comp).is_dir():
                raise FileNotFoundError(f"model folder {root} (role {role!r}) has no {comp.subfolder!r} folder")
        where, local = str(root), True
    elif source == "tiny":
        where, local = str(_tiny_folder(role, seed)), True
    elif spec.load:
        raise ValueError(f"role {role!r} loads from a folder only: give path= (fetch_model writes it)")
    else:
        where, local = spec.repo_id, False

    if spec.load:
        loaded = spec.load(Path(where), device, dtype, **options)
        return Components(role=role, source=source, path=where, component_names=names, **loaded)

    whole = components is None
    if options and not (whole and postprocess and spec.postprocess):
        raise TypeError(f"unexpected options for role {role!r}: {sorted(options)}"
                        + ("" if whole else " (options need the whole role: components=None)"))
    parts = Components(role=role, source=source, path=where, component_names=names)
    for name in names:
        comp = spec.component(name)
        try:
            obj = _load_component(comp, where, local, dtype, revision)
        except Exception as exc:
            raise RuntimeError(f"loading component {comp.name!r} of role {role!r} from {where} failed: {exc}") from exc
        if comp.kind == "model":
            obj = obj.to(device).eval()
            obj.requires_grad_(False)
        setattr(parts, comp.name, obj)
    if whole and postprocess and spec.postprocess:
        parts = spec.postprocess(parts, **options)
    return parts


def folder_source(role: str, folder) -> str | None:
    """What ``folder`` of ``role`` holds ("tiny" / "pretrained") if the role can tell (its ``folder_source``
    hook), else ``None``."""
    spec = get_role(role)
    return spec.folder_source(Path(folder)) if spec.folder_source else None


def load_model(role: str, folder, device="cpu", dtype="float32", **options) -> Components:
    """Alias of :func:`brainrecon.models.load_model` (the documented entry point)."""
    from . import load_model as _load_model

    return _load_model(role, folder, device=device, dtype=dtype, **options)


__all__ = [
    "ROLES", "SOURCES", "ComponentSpec", "RoleSpec", "Components", "get_role",
    "select_repo_files", "fetch_model", "save_components", "build_tiny", "prepare_role", "load_role",
    "folder_source", "load_model", "resolve_device_dtype",
]
