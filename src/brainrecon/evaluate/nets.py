"""Feature-extraction networks of the evaluation suite, their preprocessing and layers.

Networks (``name``: architecture class -> pretrained weights):

* ``alexnet``: ``torchvision.models.alexnet`` -> ``AlexNet_Weights.IMAGENET1K_V1``
* ``inception_v3``: ``torchvision.models.inception_v3`` built as torchvision does for its
  weights (``aux_logits=True, transform_input=True``) -> ``Inception_V3_Weights.IMAGENET1K_V1``
* ``efficientnet_b1``: ``torchvision.models.efficientnet_b1`` -> ``EfficientNet_B1_Weights.IMAGENET1K_V1``
  (Brain-Diffuser's ``pretrained=True``; MindEye used ``DEFAULT`` = V2: ``"torchvision:IMAGENET1K_V2"``)
* ``swav``: ``torchvision.models.resnet50`` -> SwAV ResNet-50 of torch.hub ``facebookresearch/swav``
  ``resnet50`` (file ``swav_800ep_pretrain.pth.tar``, loaded by :func:`load_swav_state_dict`)
* ``clip``: ``transformers.CLIPVisionModelWithProjection`` -> ``openai/clip-vit-large-patch14``

``weights``:
  * ``"tiny"``: the same architecture class with seeded random weights (full-size torchvision
    architectures - they run on CPU for a handful of images; CLIP with :data:`TINY_CLIP_CONFIG`,
    12 layers so ``hidden_states.6`` / ``.12`` exist);
  * ``"pretrained"``: the weights above, read from the local cache only - nothing is
    downloaded; a missing file raises ``FileNotFoundError`` naming the URL and the paths searched
    (torchvision / SwAV files in ``<cache_dir>`` or ``<cache_dir>/checkpoints``, default
    ``torch.hub.get_dir()/checkpoints``; CLIP in the Hugging Face cache, or ``cache_dir``);
  * ``"torchvision:<ENUM>"`` (torchvision nets): that member of the net's weights enum, same caching;
  * a local path: a state-dict file (``.pth``/``.pt``/``.tar``; SwAV files go through
    :func:`load_swav_state_dict`) or, for CLIP, a ``save_pretrained`` directory.

Layers (``extract_features(..., layers=[...])``): any module name of a torchvision net
(``dict(model.named_modules())``), captured with a forward hook and flattened; for CLIP,
``"image_embeds"`` (projected CLS embedding = OpenAI ``encode_image``) and
``"hidden_states.K"`` (``hidden_states[K]`` with ``output_hidden_states=True``; 0 = the embeddings after
``pre_layrnorm``, K = output of block K).
The layers the metrics use are listed in :data:`STANDARD_LAYERS`.

Preprocessing conventions (:data:`~.plan.CONVENTIONS`, each net's :class:`~.plan.NetPrep`):
  * ``"braindiffuser_published"``: PIL bilinear resize of the uint8 image to (224, 224), then /255 —
    Brain-Diffuser's ``eval_extract_features.py`` (``T.functional.resize(img, (224, 224))`` on PIL images);
  * ``"braindiffuser"``: the same size as a float tensor resize (bilinear, anti-aliased);
  * ``"mindeye"``: ``torchvision.transforms.Resize(S)`` semantics on tensors (shorter edge to S, aspect kept)
    with S = AlexNet 256, Inception 342, EffNet-B1 255, SwAV 224, CLIP 224, no centre crop (MindEye's
    Reconstruction_Metrics), EffNet-B1 ``IMAGENET1K_V2`` weights (MindEye's ``DEFAULT``);
  * ``"takagi"``: AlexNet / Inception ``Resize(299)`` + ``CenterCrop(299)`` on PIL images (bilinear), CLIP
    the Hugging Face ``CLIPImageProcessor`` (PIL bicubic shortest edge 224, centre crop 224) — Takagi's
    ``img2feat_decoded.py``.
  Normalisation: ImageNet mean/std, CLIP's own for CLIP.

Why one long module: five networks, each with its weights resolution, preprocessing and layer names; the
tables only make sense next to each other (the metrics name their layers).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import as_uint8_images
from .plan import CONVENTIONS, NET_NAMES

__all__ = [
    "NET_NAMES",
    "CONVENTIONS",
    "STANDARD_LAYERS",
    "TINY_CLIP_CONFIG",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "SWAV_URL",
    "CLIP_REPO",
    "build_eval_net",
    "load_swav_state_dict",
    "preprocess",
    "preprocess_size",
    "extract_features",
    "check_layers",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The layers the metric suite reads, with what they are.
STANDARD_LAYERS: dict[str, dict[str, str]] = {
    "alexnet": {
        "features.4": "AlexNet(2): ReLU after conv2 (Brain-Diffuser/MindEye)",
        "features.11": "AlexNet(5): ReLU after conv5 (Brain-Diffuser/MindEye)",
        "features.5": "Takagi AlexNet early: max-pool after conv2",
        "features.12": "Takagi AlexNet mid: max-pool after conv5",
        "classifier.5": "Takagi AlexNet late: ReLU after fc7",
    },
    "inception_v3": {"avgpool": "Inception: global average pool (2048)", "fc": "ImageNet logits (n-way)"},
    "efficientnet_b1": {"avgpool": "EffNet-B: global average pool (1280)", "classifier.1": "ImageNet logits"},
    "swav": {"avgpool": "SwAV: ResNet-50 global average pool (2048)"},
    "clip": {
        "image_embeds": "CLIP: projected image embedding (= encode_image); Takagi CLIP late",
        "hidden_states.6": "Takagi CLIP early: residual stream after block 6",
        "hidden_states.12": "Takagi CLIP mid: residual stream after block 12",
    },
}

_TV_WEIGHTS = {
    "alexnet": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "inception_v3": ("Inception_V3_Weights", "IMAGENET1K_V1"),
    "efficientnet_b1": ("EfficientNet_B1_Weights", "IMAGENET1K_V1"),
}
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"
CLIP_REPO = "openai/clip-vit-large-patch14"

#: Tiny CLIP vision config for tests/demo: same class as ViT-L/14, 12 blocks (hidden_states.12 exists).
TINY_CLIP_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=12,
    num_attention_heads=4,
    image_size=224,
    patch_size=14,
    projection_dim=16,
)


# --------------------------------------------------------------------------- building
def _check_name(name):
    if name not in NET_NAMES:
        raise ValueError(f"unknown evaluation net {name!r}; known: {', '.join(NET_NAMES)}")


def _tv_arch(name: str, init_weights: bool = True):
    import torchvision.models as tvm

    if name == "alexnet":
        return tvm.alexnet(weights=None)
    if name == "inception_v3":
        # the configuration torchvision uses with its ImageNet weights
        return tvm.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=init_weights)
    if name == "efficientnet_b1":
        return tvm.efficientnet_b1(weights=None)
    if name == "swav":
        return tvm.resnet50(weights=None)
    raise AssertionError(name)


def _cached_file(url: str, cache_dir, what: str) -> Path:
    fname = os.path.basename(url)
    roots = (
        [Path(cache_dir), Path(cache_dir) / "checkpoints"] if cache_dir else [Path(torch.hub.get_dir()) / "checkpoints"]
    )
    for root in roots:
        if (root / fname).is_file():
            return root / fname
    raise FileNotFoundError(
        f"{what}: weights file {fname!r} is not cached (searched {', '.join(str(r) for r in roots)}); "
        f"nothing is downloaded here - fetch {url} on a machine with internet into one of those folders "
        "(the models fetch rule), or pass weights=<path to the file>"
    )


def _load_state_dict_file(path: Path, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{what}: cannot read a state dict from {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{what}: {path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def _strip_module(sd: dict) -> dict:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def _load_tv_strict(model, sd: dict, source, name: str):
    sd = _strip_module(sd)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{name}: weights {source} do not fit the torchvision architecture: {exc}") from exc
    return model


#: Keys a SwAV checkpoint may hold beyond the ResNet-50 trunk (SwAV's head, not used here).
_SWAV_EXTRA_PREFIXES = ("projection_head.", "prototypes.")


def load_swav_state_dict(model: torch.nn.Module, state_dict: dict, source: str = "state dict") -> torch.nn.Module:
    """Load a SwAV ResNet-50 checkpoint into a torchvision ``resnet50`` (in place; returns it).

    What ``torch.hub.load("facebookresearch/swav:main", "resnet50")`` does, checked:
    the checkpoint (``swav_800ep_pretrain.pth.tar``, saved from DistributedDataParallel)
    prefixes every key with ``module.``; it holds the ResNet-50 trunk plus SwAV's
    ``projection_head.*`` and ``prototypes.*`` but **no** ``fc.*`` (SwAV is self-supervised:
    there is no ImageNet classifier). So the prefix is stripped, the head keys are dropped,
    and the load is non-strict **only** for ``fc.weight``/``fc.bias``: they keep the model's
    (seeded) initial values, which never matter because the metric reads ``avgpool``, the input
    of ``fc``. Any other missing key, any other unexpected key, or a shape mismatch raises
    ``ValueError`` - a silently half-loaded trunk would give plausible but wrong SwAV numbers.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    sd = _strip_module(state_dict)
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own and not k.startswith(_SWAV_EXTRA_PREFIXES)]
    if unexpected:
        raise ValueError(f"swav: {source} has keys that are not ResNet-50 nor SwAV head keys: {unexpected[:8]}")
    sd = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(sd))
    allowed_missing = {"fc.weight", "fc.bias"}
    if set(missing) - allowed_missing:
        raise ValueError(
            f"swav: {source} lacks ResNet-50 trunk weights {sorted(set(missing) - allowed_missing)[:8]} "
            "(only fc.* may be missing)"
        )
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(
            f"swav: {source} shape mismatch for {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:5]]}"
        )
    result = model.load_state_dict(sd, strict=False)
    assert set(result.missing_keys) <= allowed_missing and not result.unexpected_keys
    return model


def _build_clip(weights, seed, cache_dir):
    """CLIP vision tower + projection: tiny, or from a repo id / folder (CLIPModel or vision-only).

    A full ``CLIPModel`` checkpoint (the openai repo, the models registry's ``clip`` folder)
    keeps ``projection_dim`` at the top level of its config; transformers does not pass it on
    to the vision config, so it is copied here before loading (otherwise ``visual_projection``
    would not match). The text tower's weights are ignored.
    """
    from transformers import AutoConfig, CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    if weights == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_CONFIG))
    src = CLIP_REPO if weights == "pretrained" else str(weights)
    kw = dict(local_files_only=True, cache_dir=None if cache_dir is None else str(cache_dir))
    try:
        cfg = AutoConfig.from_pretrained(src, **kw)
        if isinstance(cfg, CLIPConfig):
            vcfg = cfg.vision_config
            vcfg.projection_dim = cfg.projection_dim
        elif isinstance(cfg, CLIPVisionConfig):
            vcfg = cfg
        else:
            raise ValueError(f"clip: {src!r} holds a {type(cfg).__name__}, not a CLIP model")
        return CLIPVisionModelWithProjection.from_pretrained(src, config=vcfg, **kw)
    except OSError as exc:
        raise FileNotFoundError(
            f"clip: {src!r} is not available locally (Hugging Face cache {cache_dir or 'default'}); nothing is "
            f"downloaded here - fetch {CLIP_REPO} on a machine with internet (the models fetch rule) or pass a "
            f"save_pretrained directory: {exc}"
        ) from exc


def build_eval_net(name: str, weights="tiny", seed: int = 0, cache_dir=None) -> torch.nn.Module:
    """Build evaluation net ``name`` (see :data:`NET_NAMES`) with ``weights``; eval mode, no grad, CPU.

    weights: ``"tiny"`` (seeded random), ``"pretrained"``, ``"torchvision:<ENUM>"`` or a local
    path (module docstring). ``seed`` only affects random initial values (tiny weights and,
    for SwAV, the unused fc). ``cache_dir``: where cached weight files are looked up.
    The caller's global RNG state is left untouched.
    """
    _check_name(name)
    if weights is None:
        weights = "tiny"
    if isinstance(weights, Path):
        weights = str(weights)
    if not isinstance(weights, str):
        raise TypeError(
            f"{name}: weights must be 'tiny', 'pretrained', 'torchvision:<ENUM>' or a path, got {weights!r}"
        )

    if name == "clip":
        if weights.startswith("torchvision:"):
            raise ValueError("clip: torchvision weights do not apply to CLIP")
        if weights not in ("tiny", "pretrained") and not Path(weights).exists():
            raise FileNotFoundError(f"clip: weights path {weights!r} does not exist")
        model = _build_clip(weights, seed, cache_dir)
    else:
        is_named = weights in ("tiny", "pretrained") or weights.startswith("torchvision:")
        if not is_named and not Path(weights).is_file():
            raise FileNotFoundError(
                f"{name}: weights {weights!r} is neither 'tiny', 'pretrained', 'torchvision:<ENUM>' nor an existing file"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _tv_arch(name, init_weights=(weights == "tiny"))
        if weights == "tiny":
            pass
        elif name == "swav":
            if weights.startswith("torchvision:"):
                raise ValueError("swav: torchvision weights enums do not apply; use 'pretrained' or a SwAV file")
            path = _cached_file(SWAV_URL, cache_dir, "swav") if weights == "pretrained" else Path(weights)
            load_swav_state_dict(model, _load_state_dict_file(Path(path), "swav"), source=str(path))
        elif weights == "pretrained" or weights.startswith("torchvision:"):
            import torchvision.models as tvm

            enum_name, default_member = _TV_WEIGHTS[name]
            enum = getattr(tvm, enum_name)
            member = default_member if weights == "pretrained" else weights.split(":", 1)[1]
            try:
                w = enum[member]
            except KeyError:
                raise ValueError(
                    f"{name}: {enum_name} has no member {member!r}; known: {[m.name for m in enum]}"
                ) from None
            path = _cached_file(w.url, cache_dir, f"{name} ({enum_name}.{member})")
            _load_tv_strict(model, _load_state_dict_file(path, name), path, name)
        else:
            path = Path(weights)
            _load_tv_strict(model, _load_state_dict_file(path, name), path, name)
    model.eval().requires_grad_(False)
    return model


# --------------------------------------------------------------------------- preprocessing
def _prep(net_name: str, convention: str):
    _check_name(net_name)
    conv = CONVENTIONS.get(convention)
    if conv is None:
        raise ValueError(f"unknown preprocessing convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    if net_name not in conv.nets:
        raise ValueError(f"convention {convention!r} defines no preprocessing for {net_name} "
                         f"(it covers {', '.join(conv.nets)})")
    return conv.nets[net_name]


def _shorter_edge(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)`` / HF ``shortest_edge``: the shorter edge -> size, the longer int(size·long/short)."""
    if height == width:
        return size, size
    if height < width:
        return size, int(size * width / height)
    return int(size * height / width), size


def preprocess_size(height: int, width: int, net_name: str, convention: str) -> tuple[int, int]:
    """Output (H, W) of :func:`preprocess` for an input of (height, width)."""
    prep = _prep(net_name, convention)
    if prep.mode in ("square", "pil_square", "pil_shorter_crop", "clip_processor"):
        return prep.size, prep.size
    return _shorter_edge(height, width, prep.size)


def _center_crop(a: np.ndarray, size: int, hf: bool) -> np.ndarray:
    """Centre ``size`` x ``size`` of an (H, W, 3) array: torchvision's offsets ``int(round((H - S) / 2))`` or
    Hugging Face's ``(H - S) // 2``."""
    h, w = a.shape[:2]
    top = (h - size) // 2 if hf else int(round((h - size) / 2.0))
    left = (w - size) // 2 if hf else int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def _pil_resize(arr: np.ndarray, prep) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, S, S, 3) by a PIL mode of :class:`~.plan.NetPrep`."""
    from PIL import Image

    out = []
    for a in arr:
        h, w = a.shape[:2]
        img = Image.fromarray(np.ascontiguousarray(a))
        if prep.mode == "pil_square":
            out.append(np.asarray(img.resize((prep.size, prep.size), resample=Image.BILINEAR)))
            continue
        nh, nw = _shorter_edge(h, w, prep.size)
        resample = Image.BICUBIC if prep.mode == "clip_processor" else Image.BILINEAR
        r = np.asarray(img.resize((nw, nh), resample=resample)) if (nh, nw) != (h, w) else a
        out.append(_center_crop(r, prep.size, hf=prep.mode == "clip_processor"))
    return np.stack(out)


def preprocess(images, net_name: str, convention: str, device=None) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> normalised float32 tensor (N, 3, H', W') for ``net_name``.

    Steps (the convention's :class:`~.plan.NetPrep`): PIL modes resize (and crop) the uint8 image with PIL,
    then /255; tensor modes /255, then resize bilinearly with anti-aliasing; then ``(x - mean) / std`` with
    ImageNet statistics, or CLIP's for ``clip``.
    """
    prep = _prep(net_name, convention)
    arr = as_uint8_images(images, "images")
    dev = torch.device("cpu") if device is None else torch.device(device)
    if prep.mode.startswith("pil_") or prep.mode == "clip_processor":
        arr = _pil_resize(arr, prep)
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(dev).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    size = preprocess_size(x.shape[2], x.shape[3], net_name, convention)
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean, std = (CLIP_MEAN, CLIP_STD) if net_name == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    mean = torch.tensor(mean, dtype=x.dtype, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- extraction
def _clip_layers(model) -> list[str]:
    n = model.config.num_hidden_layers
    return ["image_embeds"] + [f"hidden_states.{k}" for k in range(n + 1)]


def check_layers(net_name: str, model: torch.nn.Module, layers) -> list[str]:
    """Validate ``layers`` for ``net_name``/``model``; returns them as a list (ValueError otherwise)."""
    _check_name(net_name)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"{net_name}: no layers requested")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{net_name}: duplicate layers in {layers}")
    if net_name == "clip":
        if not hasattr(model, "config") or not hasattr(model, "visual_projection"):
            raise TypeError(f"clip: expected a CLIPVisionModelWithProjection, got {type(model).__name__}")
        known = _clip_layers(model)
        for layer in layers:
            if layer not in known:
                raise ValueError(
                    f"clip: unknown layer {layer!r}; known: 'image_embeds' and 'hidden_states.K' for K in "
                    f"0..{model.config.num_hidden_layers}"
                )
    else:
        modules = dict(model.named_modules())
        for layer in layers:
            if layer == "" or layer not in modules:
                examples = ", ".join(STANDARD_LAYERS[net_name])
                raise ValueError(
                    f"{net_name}: unknown layer {layer!r} (not a module name of {type(model).__name__}); "
                    f"e.g. {examples}"
                )
    return layers


@torch.inference_mode()
def extract_features(
    net_name: str,
    model: torch.nn.Module,
    images_uint8,
    layers,
    convention: str = "braindiffuser",
    batch_size: int = 32,
    device=None,
) -> dict[str, np.ndarray]:
    """Features of ``images_uint8`` (N, H, W, 3) at ``layers``: ``{layer: float32 (N, D)}``.

    Images are preprocessed with :func:`preprocess` (``convention``), run through ``model``
    in batches of ``batch_size`` on ``device`` (the model is moved there and put in eval
    mode) with a tqdm bar; torchvision layers are captured by forward hooks (outputs copied
    at once, so later in-place ops such as ``ReLU(inplace=True)`` cannot alter them) and
    flattened; CLIP layers come from the model output. Results are float32 on the CPU.
    """
    _prep(net_name, convention)
    layers = check_layers(net_name, model, layers)
    arr = as_uint8_images(images_uint8, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    model.to(dev).eval()
    n = arr.shape[0]
    out: dict[str, np.ndarray] = {}
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if net_name != "clip":
        modules = dict(model.named_modules())

        def make_hook(layer):
            def hook(_module, _inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"{net_name}: layer {layer!r} outputs {type(output).__name__}, not a tensor")
                captured[layer] = output.detach().reshape(output.shape[0], -1).to("cpu", torch.float32, copy=True)

            return hook

        handles = [modules[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    want_hidden = any(layer.startswith("hidden_states.") for layer in layers)
    try:
        for s in tqdm(range(0, n, batch_size), desc=f"features {net_name}", leave=False):
            x = preprocess(arr[s : s + batch_size], net_name, convention, device=dev)
            captured.clear()
            if net_name == "clip":
                res = model(pixel_values=x, output_hidden_states=want_hidden)
                for layer in layers:
                    if layer == "image_embeds":
                        t = res.image_embeds
                    else:
                        t = res.hidden_states[int(layer.split(".", 1)[1])]
                    captured[layer] = t.detach().reshape(t.shape[0], -1).to("cpu", torch.float32, copy=True)
            else:
                model(x)
            for layer in layers:
                feats = captured[layer].numpy()
                if layer not in out:
                    out[layer] = np.empty((n, feats.shape[1]), dtype=np.float32)
                out[layer][s : s + len(feats)] = feats
    finally:
        for h in handles:
            h.remove()
    return out
