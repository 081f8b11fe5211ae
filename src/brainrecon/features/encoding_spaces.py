"""Feature spaces of the encoding analysis (Takagi & Nishimoto, CVPR 2023, "Encoding"): ``zc`` at
noise levels and U-Net activations at denoising steps (importable without torch).

The encoding analysis (:mod:`brainrecon.encoding.stage`) predicts voxel responses from

* **z** = the existing space ``sdz`` (SD VAE posterior mean × scaling factor of the image at
  ``sdz_size`` px, 4×40×40 at 320 px) and **c** = the existing space ``sdc`` (SD text encoder
  ``last_hidden_state`` 77×768, mean over the image's captions);
* **zc at noise level s** — space ``zc_s<s>`` (e.g. ``zc_s0.4``): the image's z (the same
  preprocessing as ``sdz``: PIL Lanczos resize to ``image_size`` px, VAE posterior **mean** ×
  scaling factor) is put through the shared img2img loop
  (:func:`brainrecon.models.diffusion.sd_img2img`) conditioned on the image's own c (its row
  of the ``sdc`` features file) with strength s: DDIM grid of ``num_inference_steps``, z noised to
  the first kept timestep, then ``int(s · num_inference_steps)`` denoising steps with
  classifier-free guidance ``guidance_scale`` against the empty prompt, ``eta``. The feature is the
  loop's returned ``latents``: the **final denoised latent of the partial schedule** (scaled, i.e.
  in z's units, before VAE decoding), (4, h, w) = (4, 40, 40) at 320 px. The noise of image
  ``nsdId`` is drawn from a CPU generator seeded with
  :func:`brainrecon.features.extractors.image_seed` ``(seed, nsdId)``, so the features do not depend
  on batching or device RNG. Strength 0 would run no step and return z itself.
* **U-Net activations** — space ``unet_<block>_t<step>`` (e.g. ``unet_mid_t10``): the same
  img2img of z conditioned on c, at strength ``unet_strength`` (its own setting), with a forward
  hook on one U-Net block; the activation is taken at the ``step``-th denoising step (1-based:
  the ``step``-th UNet call of the run, 1 ≤ step ≤ ``int(unet_strength · num_inference_steps)``),
  from the **conditional** half of the classifier-free-guidance batch (``[uncond; cond]``), and
  the run stops right after it (later steps would not change it). Blocks: ``down<i>`` =
  ``unet.down_blocks[i]`` (its output hidden states — after its downsampler if it has one — not the
  residuals), ``mid`` = ``unet.mid_block``, ``up<i>`` = ``unet.up_blocks[i]`` (after its upsampler
  if any). Real SD v1-4 has down0..down3, mid, up0..up3; at 320 px (40×40 latents) their outputs
  are down0 320×20×20, down1 640×10×10, down2/down3/mid 1280×5×5, up0 1280×10×10, up1 1280×20×20,
  up2 640×40×40, up3 320×40×40 (128 000 … 1 024 000 values).
  Storage: ``pool`` = 1 keeps the activation **flattened** (C·h·w, the paper's features, reduced to
  6,400 PCA components later by the encoding stage); an integer k > 1 average-pools to
  (ceil(h/k), ceil(w/k)) cells (adaptive average pooling), ``"global"`` to the C channel means.
  Values are stored as ``storage_dtype`` (float16 by default: up2 flattened at 320 px is 2 MB per
  image, 20 GB for the 9841 images of subject 1; float32 doubles it).

Names are the ``{space}`` wildcard and folder name, so they use only ``[a-z0-9_.]``:

=================================  ===========================================================
``zc_s<strength>``                 strength in (0, 1] with 1 to 3 decimals, canonical form of
                                   :func:`format_strength` (``0.4``, ``0.25``, ``1.0``; not
                                   ``0.40`` or ``.4``)
``unet_<block>_t<step>``           block ``down<i>`` / ``mid`` / ``up<i>`` (i without leading
                                   zeros), step a positive integer without leading zeros
=================================  ===========================================================

:data:`ENCODING_SPACE_RE` is the regular expression of both (the workflow's wildcard constraint);
:func:`zc_space_name` / :func:`unet_space_name` build names, :func:`parse_encoding_space` reads one.
Spaces are registered into :data:`brainrecon.features.SPACES` on demand
(:func:`register_encoding_space`), since which strengths / blocks / steps exist is configuration;
the features are written by the features stage's one writer
(:func:`brainrecon.features.extract_features`) through :func:`extract_encoding_features`.

c is read from the subject's ``sdc`` features file (option ``c_features``), which is exactly the
encoding analysis' c space; the space therefore reads images (from the brick) and that file.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from .spaces import SPACES, FeatureSpace, register_space

_X = "brainrecon.features.encoding_spaces"

#: block names: down<i>, mid, up<i>
BLOCK_RE = r"(?:down(?:0|[1-9]\d*)|mid|up(?:0|[1-9]\d*))"
ZC_RE = r"zc_s\d\.\d{1,3}"
UNET_RE = rf"unet_{BLOCK_RE}_t[1-9]\d*"
#: wildcard constraint of every encoding-only feature space name
ENCODING_SPACE_RE = rf"(?:{ZC_RE}|{UNET_RE})"

#: the components of role ``sd`` these spaces load
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
POOL_GLOBAL = "global"
STORAGE_DTYPES = ("float16", "float32")

#: img2img settings shared by zc and U-Net spaces (option name -> default: the Takagi settings)
IMG2IMG_DEFAULTS = {
    "num_inference_steps": 50,
    "guidance_scale": 5.0,
    "eta": 0.0,
    "seed": 0,
    "image_size": 320,
}
UNET_DEFAULTS = {"unet_strength": 0.8, "pool": 1, "storage_dtype": "float16"}


# ----------------------------------------------------------------------------- names
def format_strength(strength: float) -> str:
    """Canonical text of a noise level: 0.4 -> ``"0.4"``, 0.25 -> ``"0.25"``, 1 -> ``"1.0"``.

    Raises ``ValueError`` outside (0, 1] or when more than 3 decimals are needed.
    """
    s = float(strength)
    if not (0.0 < s <= 1.0) or not math.isfinite(s):
        raise ValueError(f"zc strength must be in (0, 1], got {strength!r}")
    text = f"{s:.3f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    if abs(float(text) - s) > 1e-12:
        raise ValueError(f"zc strength {strength!r} needs more than 3 decimals (file names hold at most 3)")
    return text


def zc_space_name(strength: float) -> str:
    """``zc_s<strength>`` (see :func:`format_strength`)."""
    return f"zc_s{format_strength(strength)}"


def check_block(block: str) -> str:
    if not isinstance(block, str) or not re.fullmatch(BLOCK_RE, block):
        raise ValueError(f"U-Net block must be 'down<i>', 'mid' or 'up<i>' (e.g. down1, mid, up2), got {block!r}")
    return block


def unet_space_name(block: str, step: int) -> str:
    """``unet_<block>_t<step>``; step is the 1-based denoising step."""
    check_block(block)
    if isinstance(step, bool) or int(step) != step or int(step) < 1:
        raise ValueError(f"U-Net step must be a positive integer (1-based denoising step), got {step!r}")
    return f"unet_{block}_t{int(step)}"


def is_encoding_space(name: str) -> bool:
    return isinstance(name, str) and re.fullmatch(ENCODING_SPACE_RE, name) is not None


def parse_encoding_space(name: str) -> dict:
    """``{"kind": "zc", "strength": float}`` or ``{"kind": "unet", "block": str, "step": int}``.

    Raises ``ValueError`` naming the space for anything else, including non-canonical spellings
    (``zc_s0.40``), so one setting has one file name.
    """
    m = re.fullmatch(r"zc_s(\d\.\d{1,3})", name or "")
    if m:
        s = float(m.group(1))
        try:
            canonical = zc_space_name(s)
        except ValueError as e:
            raise ValueError(f"feature space {name!r}: {e}") from None
        if canonical != name:
            raise ValueError(f"feature space {name!r}: write this noise level as {canonical!r}")
        return {"kind": "zc", "strength": s}
    m = re.fullmatch(rf"unet_({BLOCK_RE})_t([1-9]\d*)", name or "")
    if m:
        return {"kind": "unet", "block": m.group(1), "step": int(m.group(2))}
    raise ValueError(
        f"{name!r} is not an encoding feature space name: expected zc_s<strength> (e.g. zc_s0.4) or "
        f"unet_<block>_t<step> (e.g. unet_mid_t10)"
    )


def describe_space(name: str) -> dict:
    """Labels of any space of the encoding analysis, for tables and figures (no registry needed).

    Returns ``{"kind", "label", "strength", "block", "step"}``: sdz -> kind ``z``, sdc -> ``c``,
    ``zc_s0.4`` -> kind ``zc``, label ``zc s=0.4``; ``unet_mid_t10`` -> kind ``unet``, label
    ``mid t=10``; other spaces -> kind ``other``, label = name. Missing parts are None.
    """
    out = {"kind": "other", "label": name, "strength": None, "block": None, "step": None}
    if name == "sdz":
        out.update(kind="z", label="z")
    elif name == "sdc":
        out.update(kind="c", label="c")
    elif is_encoding_space(name):
        p = parse_encoding_space(name)
        if p["kind"] == "zc":
            out.update(kind="zc", label=f"zc s={format_strength(p['strength'])}", strength=p["strength"])
        else:
            out.update(kind="unet", label=f"{p['block']} t={p['step']}", block=p["block"], step=p["step"])
    return out


#: the r-by-ROI figures of the encoding stage (:func:`brainrecon.encoding.stage.figure_table`)
FIGURE_NAMES = ("spaces", "noise_levels", "unet_steps", "unet_layers")


def encoding_figure_names(names: Sequence[str]) -> list[str]:
    """The r-by-ROI figures (:data:`FIGURE_NAMES`) that spaces ``names`` support:
    ``spaces`` (any non-U-Net space), ``noise_levels`` (a zc space), ``unet_steps`` and ``unet_layers``
    (a U-Net space)."""
    kinds = [describe_space(n)["kind"] for n in names]
    out = []
    if any(k != "unet" for k in kinds):
        out.append("spaces")
    if "zc" in kinds:
        out.append("noise_levels")
    if "unet" in kinds:
        out += ["unet_steps", "unet_layers"]
    return out


# ----------------------------------------------------------------------------- config -> names / options
def encoding_space_names(enc: Mapping, known: Sequence[str] | None = None) -> list[str]:
    """Every feature space of an ``encoding`` config section, in order: ``spaces`` (e.g. sdz, sdc),
    then ``zc_s<s>`` for ``zc_strengths``, then ``unet_<block>_t<step>`` for ``unet.blocks`` ×
    ``unet.steps`` (blocks outer).

    Raises ``ValueError`` naming the config key for a strength that needs more than 3 decimals, a
    step beyond the U-Net run (``int(unet.strength · img2img.num_inference_steps)`` steps), a name
    listed twice, an entry of ``spaces`` that is neither in ``known`` (the registered feature spaces,
    when given) nor an encoding space name, or a ``figure_roi_file`` missing from ``roi_files``.
    """
    names = []
    for i, name in enumerate(enc.get("spaces", [])):
        if known is not None and name not in known and not is_encoding_space(name):
            raise ValueError(f"config key encoding.spaces[{i}]: unknown feature space {name!r}; "
                             f"known: {sorted(known)} or zc_s<strength> / unet_<block>_t<step>")
        names.append(name)
    for i, s in enumerate(enc.get("zc_strengths", [])):
        try:
            names.append(zc_space_name(s))
        except ValueError as e:
            raise ValueError(f"config key encoding.zc_strengths[{i}]: {e}") from None
    unet = enc.get("unet", {}) or {}
    blocks, steps = list(unet.get("blocks", [])), list(unet.get("steps", []))
    if blocks and steps:
        n_run = int(float(unet.get("strength", UNET_DEFAULTS["unet_strength"]))
                    * int((enc.get("img2img") or {}).get("num_inference_steps", IMG2IMG_DEFAULTS["num_inference_steps"])))
        late = [s for s in steps if int(s) > n_run]
        if late:
            raise ValueError(
                f"config key encoding.unet.steps: step(s) {late} exceed the {n_run} denoising steps of the U-Net "
                f"run (int(encoding.unet.strength x encoding.img2img.num_inference_steps))"
            )
        for b in blocks:
            try:
                check_block(b)
            except ValueError as e:
                raise ValueError(f"config key encoding.unet.blocks: {e}") from None
        names += [unet_space_name(b, s) for b in blocks for s in steps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"config key encoding: feature space(s) {dup} listed twice")
    fig, rois = enc.get("figure_roi_file"), enc.get("roi_files")
    if fig is not None and rois is not None and fig not in rois:
        raise ValueError(f"config key encoding.figure_roi_file: {fig!r} is not one of encoding.roi_files {list(rois)}")
    return names


def encoding_feature_options(name: str, enc: Mapping) -> dict:
    """Options of encoding space ``name`` from an ``encoding`` config section (what the workflow passes
    as params, so changing a U-Net setting reruns only U-Net spaces). ``c_features`` (a file) is
    not included: the rule passes its input."""
    kind = parse_encoding_space(name)["kind"]
    i2i = {**IMG2IMG_DEFAULTS, **dict(enc.get("img2img") or {})}
    opts = {k: i2i[k] for k in IMG2IMG_DEFAULTS}
    if kind == "unet":
        unet = dict(enc.get("unet") or {})
        opts["unet_strength"] = float(unet.get("strength", UNET_DEFAULTS["unet_strength"]))
        opts["pool"] = unet.get("pool", UNET_DEFAULTS["pool"])
        opts["storage_dtype"] = unet.get("storage_dtype", UNET_DEFAULTS["storage_dtype"])
    return opts


# ----------------------------------------------------------------------------- workflow helpers (read by encoding.smk)
ENCODING_OUT = "results/encoding"
#: files of one map: statistics, r map, significance map, ROI table, slice mosaic
MAP_SUFFIXES = (".h5", "_r.nii.gz", "_sig.nii.gz", "_rois.csv", "_mosaic.png")


def encoding_backend(config: Mapping) -> str:
    """Ridge/PCA backend of the encoding fits: ``encoding.backend``, or ``regression.backend`` when null."""
    return config["encoding"].get("backend") or config.get("regression", {}).get("backend", "numpy")


def encoding_fit_settings(config: Mapping) -> dict:
    """Every setting that changes the statistics of a map (the rule's params: changing one reruns the fits)."""
    e = config["encoding"]
    return {
        "n_components": e["n_components"], "alphas": list(e["alphas"]), "cv": e["cv"],
        "backend": encoding_backend(config), "train_on": e["train_on"], "standardize_X": e["standardize_X"],
        "q": e["q"], "target_batch": e["target_batch"], "roi_files": list(e["roi_files"]),
    }


def encoding_model_dtype(config: Mapping) -> str:
    """Compute dtype of the img2img jobs: float32 on CPU, else ``models.dtype``."""
    m = config["models"]
    return "float32" if m["device"] == "cpu" else m["dtype"]


def encoding_targets_for(config: Mapping, subjects: Sequence[str], out: str = ENCODING_OUT) -> list[str]:
    """Every encoding output of a config: per voxel set, the files of every space × subject
    (:data:`MAP_SUFFIXES`), ``roi_summary.csv`` and ``figures/r_by_roi_<figure>.png``."""
    e = config["encoding"]
    if not e.get("enabled", True):
        return []
    names = encoding_space_names(e)
    if not names:
        return []
    files = []
    for v in e["voxels"]:
        files += [f"{out}/{v}/{n}/subj{s}{x}" for n in names for s in subjects for x in MAP_SUFFIXES]
        files.append(f"{out}/{v}/roi_summary.csv")
        files += [f"{out}/{v}/figures/r_by_roi_{f}.png" for f in encoding_figure_names(names)]
    return files


# ----------------------------------------------------------------------------- registry
def encoding_space(name: str) -> FeatureSpace:
    """The :class:`FeatureSpace` of an encoding space name (not registered; see
    :func:`register_encoding_space`)."""
    p = parse_encoding_space(name)
    common = {**IMG2IMG_DEFAULTS, "c_features": None}
    if p["kind"] == "zc":
        return FeatureSpace(
            name=name, role="sd", inputs="images", setup=f"{_X}:setup_zc", components=COMPONENTS,
            options={"strength": p["strength"], **common},
            description=f"SD img2img of the image's z conditioned on its c (sdc) at strength {p['strength']}: "
                        f"final denoised latent of the int(strength*num_inference_steps)-step partial schedule",
        )
    return FeatureSpace(
        name=name, role="sd", inputs="images", setup=f"{_X}:setup_unet", components=COMPONENTS,
        options={"block": p["block"], "step": p["step"], **common, **UNET_DEFAULTS},
        description=f"SD U-Net block {p['block']} output (conditional half of the CFG batch) at denoising step "
                    f"{p['step']} of an img2img of the image's z conditioned on its c (sdc)",
    )


def register_encoding_space(name: str) -> FeatureSpace:
    """Register ``name`` into :data:`brainrecon.features.SPACES` (idempotent) and return it."""
    space = encoding_space(name)
    have = SPACES.get(name)
    if have is None:
        register_space(space)
        return space
    if have != space:
        raise ValueError(f"feature space {name!r} is already registered with another definition: {have}")
    return have


def register_encoding_spaces(names: Sequence[str]) -> list[FeatureSpace]:
    return [register_encoding_space(n) for n in names if is_encoding_space(n)]


def extract_encoding_features(space: str, out_h5, stimuli_csv, brick_path, model_folder, c_features, *,
                              options: Mapping[str, Any] | None = None, **kwargs):
    """Register ``space`` and write its features with :func:`brainrecon.features.extract_features`.

    c_features: the subject's ``results/features/sdc/subjXX.h5`` (the image's c). options: from
    :func:`encoding_feature_options`. kwargs: ``batch_size``, ``device``, ``dtype``, ``model_source``,
    ``progress`` of the writer.
    """
    from .extract import extract_features

    register_encoding_space(space)
    return extract_features(space, out_h5, stimuli_csv, brick_path=brick_path, model_folder=model_folder,
                            c_features=str(c_features), **dict(options or {}), **kwargs)


# ----------------------------------------------------------------------------- extractors (torch from here on)
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


def _check_common(parts, c_table: CTable, strength: float, num_inference_steps: int, guidance_scale: float,
                  eta: float, seed: int, image_size: int) -> None:
    if int(num_inference_steps) < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if float(guidance_scale) < 0 or float(eta) < 0:
        raise ValueError(f"guidance_scale and eta must be >= 0, got {guidance_scale}, {eta}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8 px, got {image_size}")
    dim = int(parts.unet.config.cross_attention_dim)
    if len(c_table.shape) != 2 or c_table.shape[-1] != dim:
        raise ValueError(f"{c_table.path}: c features have shape {c_table.shape}; this UNet needs (tokens, {dim}) "
                         f"(is it the sdc features file of the same model?)")


class _Img2ImgExtractor:
    """Shared part of the zc and U-Net extractors: z of the images -> img2img conditioned on c."""

    def __init__(self, parts, strength, num_inference_steps, guidance_scale, eta, seed, image_size, c_features):
        self.parts = parts
        self.c_table = CTable(c_features)
        _check_common(parts, self.c_table, strength, num_inference_steps, guidance_scale, eta, seed, image_size)
        self.strength, self.steps = float(strength), int(num_inference_steps)
        self.guidance, self.eta, self.seed, self.size = float(guidance_scale), float(eta), int(seed), int(image_size)
        self.n_run = int(self.strength * self.steps)  # the loop's reference truncation
        self._uncond = None
        self.settings = {
            "strength": self.strength, "num_inference_steps": self.steps, "denoising_steps": self.n_run,
            "guidance_scale": self.guidance, "eta": self.eta, "seed": self.seed, "image_size": self.size,
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

        from ..models.diffusion import Sampler, sd_img2img
        from .extractors import _resize_unit, image_generators

        x = _resize_unit(images, self.size)
        c = torch.from_numpy(self.c_table.rows(nsd_ids))
        sampler = Sampler(steps=self.steps, strength=self.strength, guidance_scale=self.guidance, eta=self.eta,
                          posterior="mean")
        return sd_img2img(self.parts, x, c, uncond=self.uncond(), generator=image_generators(self.seed, nsd_ids),
                          sampler=sampler)


class ZcExtractor(_Img2ImgExtractor):
    """zc: the final latent of the partial img2img schedule, (b, C, h, w) float32."""

    storage_dtype = "float32"

    def __init__(self, parts, strength, **kw):
        super().__init__(parts, strength, **kw)
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

    def __init__(self, parts, block, step, unet_strength, pool=1, storage_dtype="float16", **kw):
        super().__init__(parts, unet_strength, **kw)
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


def setup_zc(parts, strength, num_inference_steps=50, guidance_scale=5.0, eta=0.0, seed=0, image_size=320,
             c_features=None) -> ZcExtractor:
    return ZcExtractor(parts, strength, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       eta=eta, seed=seed, image_size=image_size, c_features=c_features)


def setup_unet(parts, block, step, unet_strength=0.8, pool=1, storage_dtype="float16", num_inference_steps=50,
               guidance_scale=5.0, eta=0.0, seed=0, image_size=320, c_features=None) -> UNetExtractor:
    return UNetExtractor(parts, block, step, unet_strength, pool=pool, storage_dtype=storage_dtype,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                         seed=seed, image_size=image_size, c_features=c_features)
