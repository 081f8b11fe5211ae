"""The evaluation stage's plan (no torch): the metric columns, their nets and layers, the
preprocessing conventions, and which evaluation files a config asks for.

Columns (CSV headers; values are floats, identification as fractions in [0, 1]):

Brain-Diffuser Table 1 (:data:`BRAINDIFFUSER_COLUMNS`)
  ``PixCorr``      pixel correlation (higher is better)
  ``SSIM``         grayscale SSIM (higher)
  ``AlexNet(2)``   two-way identification, AlexNet ``features.4`` (higher)
  ``AlexNet(5)``   two-way identification, AlexNet ``features.11`` (higher)
  ``Inception``    two-way identification, Inception-v3 ``avgpool`` (higher)
  ``CLIP``         two-way identification, CLIP ViT-L/14 ``image_embeds`` (higher)
  ``EffNet-B``     correlation distance, EfficientNet-B1 ``avgpool`` (lower)
  ``SwAV``         correlation distance, SwAV ResNet-50 ``avgpool`` (lower)
Takagi & Nishimoto identification over samples (:data:`TAKAGI_COLUMNS`, "TN-" prefix)
  ``TN-CLIP-early`` / ``-mid`` / ``-late``     CLIP ``hidden_states.6`` / ``hidden_states.12`` / ``image_embeds``
  ``TN-AlexNet-early`` / ``-mid`` / ``-late``  AlexNet ``features.5`` / ``features.12`` / ``classifier.5``
  ``TN-Inception``                              Inception-v3 ``avgpool``
CnD (optional)
  ``{n}-way-top1`` e.g. ``50-way-top1``: n-way top-1 with an ImageNet classifier's logits
  (``nway_net``; default Inception-v3 ``fc``; CnD/MinD-Vis used a ViT-H/14 classifier).
Metadata (:data:`META_COLUMNS`): ``convention`` (the convention of the Brain-Diffuser / MindEye / n-way
columns, :data:`CONVENTIONS`), ``tn_convention`` (of the TN- columns, when computed), ``n_images``,
``n_samples``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..models.plan import model_dir
from ..nsd.plan import STIMULI, brick
from ..nsd.plan import subjects as nsd_subjects
from ..reconstruct.plan import MULTI_SAMPLE, RECON, method_plans

#: evaluation networks
NET_NAMES = ("alexnet", "inception_v3", "efficientnet_b1", "swav", "clip")
TORCHVISION_NETS = ("alexnet", "inception_v3", "efficientnet_b1", "swav")
EVAL_WEIGHTS = ("tiny", "pretrained")


@dataclass(frozen=True)
class NetPrep:
    """How a net's input is made from a uint8 image: resized to ``size`` by ``mode``, then /255 and the net's
    mean/std normalisation (ImageNet, CLIP's for clip).

    modes: ``square`` / ``shorter`` — torch bilinear, anti-aliased, on float [0, 1] (torchvision's tensor
    ``Resize((S, S))`` / ``Resize(S)``); ``pil_square`` — PIL bilinear on the uint8 image to (S, S)
    (torchvision ``functional.resize(pil_image, (S, S))``, Brain-Diffuser's ``eval_extract_features.py``);
    ``pil_shorter_crop`` — PIL bilinear shorter edge to S, then the centre S x S (torchvision ``Resize(S)`` +
    ``CenterCrop(S)`` on PIL images, Takagi's ``img2feat_decoded.py``); ``clip_processor`` — PIL bicubic
    shortest edge to S, centre crop S (Hugging Face ``CLIPImageProcessor``, Takagi's CLIP).
    """

    size: int
    mode: str


NET_PREP_MODES = ("square", "shorter", "pil_square", "pil_shorter_crop", "clip_processor")
PIXEL_RESIZES = ("tensor_bilinear", "pil_bicubic")
SSIM_KINDS = ("2d", "columns_1d")


@dataclass(frozen=True)
class Convention:
    """A named evaluation convention: the nets' preprocessing, and (for the Brain-Diffuser/MindEye columns)
    how PixCorr / SSIM resize and compute, and which pretrained weights a net takes.

    pixel_resize: the reconstruction to the GT size — ``tensor_bilinear`` (anti-aliased, float, MindEye) or
    ``pil_bicubic`` (PIL's default ``resize`` on the uint8 image, Brain-Diffuser's script); ``None`` for a
    convention of net columns only. ssim: ``2d`` (scikit-image >= 0.19 on the grey image) or ``columns_1d``
    (scikit-image 0.17.2 with ``multichannel=True`` on a 2-D grey image = the mean of per-column 1-D SSIMs,
    Brain-Diffuser's published numbers). weights: ``{net: torchvision weights member}`` where the convention
    differs from the nets' default (``IMAGENET1K_V1``).
    """

    name: str
    nets: Mapping[str, NetPrep]
    pixel_resize: str | None
    ssim: str | None
    weights: Mapping[str, str]
    description: str

    def __post_init__(self):
        bad = {n: p.mode for n, p in self.nets.items() if p.mode not in NET_PREP_MODES}
        if bad or set(self.nets) != set(NET_NAMES) and self.pixel_resize is not None:
            raise ValueError(f"convention {self.name}: bad net preprocessing {bad or self.nets}")
        if self.pixel_resize not in (None, *PIXEL_RESIZES) or self.ssim not in (None, *SSIM_KINDS):
            raise ValueError(f"convention {self.name}: pixel_resize {self.pixel_resize!r} / ssim {self.ssim!r}")


_MINDEYE_SIZES = {"alexnet": 256, "inception_v3": 342, "efficientnet_b1": 255, "swav": 224, "clip": 224}
#: every convention, by name (evaluate.convention: the Brain-Diffuser / MindEye / n-way columns;
#: evaluate.takagi_convention: the TN- columns)
CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("braindiffuser_published", {n: NetPrep(224, "pil_square") for n in NET_NAMES}, "pil_bicubic",
               "columns_1d", {},
               "Brain-Diffuser's published numbers (scripts/evaluate_reconstruction.py, eval_extract_features.py, "
               "scikit-image 0.17.2, Pillow 9): nets get PIL bilinear 224 x 224; PixCorr on RGB after PIL's default "
               "(bicubic) resize of the reconstruction to 425 px; SSIM = scikit-image 0.17.2's multichannel=True on "
               "the 2-D grey image, i.e. the mean over columns of 1-D (vertical) gaussian SSIMs"),
    Convention("braindiffuser", {n: NetPrep(224, "square") for n in NET_NAMES}, "tensor_bilinear", "2d", {},
               "Brain-Diffuser's net inputs (224 x 224) resized as tensors (bilinear, anti-aliased); PixCorr after a "
               "bilinear tensor resize; modern 2-D SSIM (ours: the SSIM the paper meant)"),
    Convention("mindeye", {n: NetPrep(s, "shorter") for n, s in _MINDEYE_SIZES.items()}, "tensor_bilinear", "2d",
               {"efficientnet_b1": "IMAGENET1K_V2"},
               "MindEye's Reconstruction_Metrics: torchvision Resize(S) per net (AlexNet 256, Inception 342, "
               "EffNet-B1 255, SwAV 224, CLIP 224), EffNet-B1 DEFAULT (= IMAGENET1K_V2) weights, bilinear PixCorr "
               "resize, 2-D SSIM"),
    Convention("takagi", {"alexnet": NetPrep(299, "pil_shorter_crop"), "inception_v3": NetPrep(299, "pil_shorter_crop"),
                          "clip": NetPrep(224, "clip_processor")}, None, None, {},
               "Takagi & Nishimoto's img2feat_decoded.py: AlexNet and Inception get Resize(299) + CenterCrop(299) "
               "(PIL bilinear), CLIP the Hugging Face CLIPProcessor (PIL bicubic shortest edge 224, centre crop 224)"),
)}
#: conventions of the Brain-Diffuser / MindEye columns (with pixel metrics)
PIXEL_CONVENTIONS = tuple(n for n, c in CONVENTIONS.items() if c.pixel_resize is not None)


def convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise ValueError(f"unknown evaluation convention {name!r}; known: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


@dataclass(frozen=True)
class MetricSpec:
    """One column: ``kind`` in pixcorr | ssim | two_way | corr_dist | takagi | nway."""

    column: str
    kind: str
    net: str | None
    layer: str | None
    higher_is_better: bool
    description: str


_SPECS = [
    MetricSpec("PixCorr", "pixcorr", None, None, True, "pixel Pearson r, recon resized to GT size"),
    MetricSpec("SSIM", "ssim", None, None, True, "grayscale SSIM (gaussian, sigma 1.5), recon resized to GT size"),
    MetricSpec("AlexNet(2)", "two_way", "alexnet", "features.4", True, "two-way identification"),
    MetricSpec("AlexNet(5)", "two_way", "alexnet", "features.11", True, "two-way identification"),
    MetricSpec("Inception", "two_way", "inception_v3", "avgpool", True, "two-way identification"),
    MetricSpec("CLIP", "two_way", "clip", "image_embeds", True, "two-way identification"),
    MetricSpec("EffNet-B", "corr_dist", "efficientnet_b1", "avgpool", False, "mean correlation distance"),
    MetricSpec("SwAV", "corr_dist", "swav", "avgpool", False, "mean correlation distance"),
    MetricSpec("TN-CLIP-early", "takagi", "clip", "hidden_states.6", True, "Takagi identification over samples"),
    MetricSpec("TN-CLIP-mid", "takagi", "clip", "hidden_states.12", True, "Takagi identification over samples"),
    MetricSpec("TN-CLIP-late", "takagi", "clip", "image_embeds", True, "Takagi identification over samples"),
    MetricSpec("TN-AlexNet-early", "takagi", "alexnet", "features.5", True, "Takagi identification over samples"),
    MetricSpec("TN-AlexNet-mid", "takagi", "alexnet", "features.12", True, "Takagi identification over samples"),
    MetricSpec("TN-AlexNet-late", "takagi", "alexnet", "classifier.5", True, "Takagi identification over samples"),
    MetricSpec("TN-Inception", "takagi", "inception_v3", "avgpool", True, "Takagi identification over samples"),
]
#: Fixed columns, in table order.
METRICS: dict[str, MetricSpec] = {s.column: s for s in _SPECS}
BRAINDIFFUSER_COLUMNS = ("PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "EffNet-B", "SwAV")
TAKAGI_COLUMNS = tuple(c for c in METRICS if c.startswith("TN-"))
META_COLUMNS = ("convention", "tn_convention", "n_images", "n_samples")
#: ImageNet logits layer per classifier net, for ``{n}-way-top1``.
NWAY_LAYERS = {"inception_v3": "fc", "alexnet": "classifier.6", "efficientnet_b1": "classifier.1"}
NWAY_RE = re.compile(r"^(\d+)-way-top1$")


def metric_spec(column: str, nway_net: str = "inception_v3") -> MetricSpec:
    """The :class:`MetricSpec` of ``column`` (fixed columns or ``{n}-way-top1``); ValueError if unknown."""
    if column in METRICS:
        return METRICS[column]
    m = NWAY_RE.match(str(column))
    if m:
        if nway_net not in NWAY_LAYERS:
            raise ValueError(f"{column}: nway_net {nway_net!r} has no ImageNet logits; use one of {list(NWAY_LAYERS)}")
        n = int(m.group(1))
        return MetricSpec(column, "nway", nway_net, NWAY_LAYERS[nway_net], True, f"{n}-way top-1 accuracy")
    raise ValueError(f"unknown metric {column!r}; known: {', '.join(METRICS)} and '<n>-way-top1' (e.g. 50-way-top1)")


def default_metrics(with_samples: bool) -> list[str]:
    """Brain-Diffuser columns, plus the Takagi (TN-) columns when there is a sample axis."""
    return list(BRAINDIFFUSER_COLUMNS) + (list(TAKAGI_COLUMNS) if with_samples else [])


def required_nets(metrics, nway_net: str = "inception_v3") -> list[str]:
    """Evaluation nets (names of :data:`NET_NAMES`) that ``metrics`` need, in :data:`NET_NAMES` order."""
    nets = {metric_spec(m, nway_net).net for m in metrics} - {None}
    return [n for n in NET_NAMES if n in nets]


def resolve_metrics(metrics=None, with_samples: bool = False, add_takagi: bool = True, nway_n=()) -> list[str]:
    """Metric columns to compute: ``metrics`` (default the Brain-Diffuser Table 1 columns), plus the
    Takagi (TN-) columns when the reconstructions have a sample axis and ``add_takagi``, plus
    ``{n}-way-top1`` for each n of ``nway_n``. Unknown names raise ``ValueError``."""
    out = list(BRAINDIFFUSER_COLUMNS if metrics is None else metrics)
    if with_samples and add_takagi:
        out += [c for c in TAKAGI_COLUMNS if c not in out]
    out += [f"{int(n)}-way-top1" for n in nway_n if f"{int(n)}-way-top1" not in out]
    for m in out:
        metric_spec(m, "inception_v3")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate metrics in {out}")
    return out


@dataclass(frozen=True)
class EvalSettings:
    """What changes the numbers of an evaluation (the ``evaluate`` config section).

    convention: the Brain-Diffuser / MindEye / n-way columns' convention (:data:`PIXEL_CONVENTIONS`);
    takagi_convention: the TN- columns' (:data:`CONVENTIONS`, default ``takagi``); metrics: the columns asked
    for (``evaluate.metrics``); takagi_for_samples: add the TN- columns to multi-sample reconstructions;
    nway_n, nway_trials, nway_net: the optional ``{n}-way-top1`` columns; seed: of the n-way distractors.
    """

    convention: str
    takagi_convention: str | None
    metrics: tuple[str, ...]
    takagi_for_samples: bool
    nway_n: tuple[int, ...]
    nway_trials: int
    nway_net: str
    seed: int

    def __post_init__(self):
        if self.convention not in PIXEL_CONVENTIONS:
            raise ValueError(f"evaluate.convention {self.convention!r} is not a convention of the Brain-Diffuser "
                             f"columns; known: {', '.join(PIXEL_CONVENTIONS)}")
        if self.takagi_convention is not None:
            convention(self.takagi_convention)
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "nway_n", tuple(int(n) for n in self.nway_n))

    @classmethod
    def from_section(cls, ev: Mapping) -> "EvalSettings":
        """From a validated ``evaluate`` section (``nway`` optional)."""
        from ..schema import defaults

        nway = {**defaults("evaluate.nway"), "n": (), **(ev.get("nway") or {})}
        return cls(convention=ev["convention"], takagi_convention=ev["takagi_convention"], metrics=tuple(ev["metrics"]),
                   takagi_for_samples=bool(ev["takagi_for_samples"]), nway_n=tuple(nway["n"]),
                   nway_trials=int(nway["trials"]), nway_net=nway["net"], seed=int(ev["seed"]))

    @classmethod
    def build(cls, **values) -> "EvalSettings":
        """From some ``evaluate`` keys (``nway`` as in the config), the rest the schema's defaults."""
        from ..schema import section_settings

        return cls.from_section(section_settings("evaluate", values))

    def as_params(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)

    def convention_of(self, column: str) -> str:
        """The convention a metric column is computed with: ``takagi_convention`` for TN- columns."""
        if metric_spec(column, self.nway_net).kind != "takagi":
            return self.convention
        if self.takagi_convention is None:
            raise ValueError(f"{column}: these settings have no takagi_convention (no TN- columns were planned)")
        return self.takagi_convention

    def net_weights(self) -> dict:
        """``{net: torchvision weights member}`` the main convention asks for (e.g. MindEye's EffNet V2)."""
        return dict(CONVENTIONS[self.convention].weights)

    def columns(self, with_samples: bool) -> list[str]:
        """The columns of one evaluation: the metrics, the TN- columns for several samples (if asked),
        the n-way columns."""
        cols = resolve_metrics(list(self.metrics), with_samples, self.takagi_for_samples, self.nway_n)
        tn = [c for c in cols if c in TAKAGI_COLUMNS]
        if tn and self.takagi_convention is None:
            raise ValueError(f"TN- columns {tn} need evaluate.takagi_convention (the settings have none: the "
                             "workflow planned no TN- columns for this method)")
        return cols

    def for_method(self, multi_sample: bool) -> "EvalSettings":
        """The settings one method's evaluations depend on: without ``takagi_convention`` when they compute no
        TN- column (single-sample reconstructions, TN- columns not asked for), so switching it reruns only
        the evaluations that use it."""
        import dataclasses

        uses_tn = any(c in TAKAGI_COLUMNS for c in self.metrics) or (multi_sample and self.takagi_for_samples)
        return self if uses_tn else dataclasses.replace(self, takagi_convention=None)


def exclusion_tag(path) -> str:
    """File-name suffix of results without an exclusion list: ``excl-<file stem>`` (safe chars)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(path).name.split(".")[0]).strip("_") or "list"
    return f"excl-{stem}"


# ----------------------------------------------------------------------------- workflow
#: one method × variant × subject's evaluation (+ ``_excl-<tag>``, ``_images`` twins)
EVAL = "results/evaluate/{method}/{variant}/subj{subject}"


def weights(config: Mapping) -> str:
    """Evaluation nets' weights: ``evaluate.weights``, by default the models' source (``tiny`` demo nets are
    seeded random). ``pretrained`` evaluation needs pretrained models (CLIP is the models' clip folder)."""
    w = config["evaluate"].get("weights") or config["models"]["source"]
    if w == "pretrained" and config["models"]["source"] != "pretrained":
        raise ValueError("config key evaluate.weights: 'pretrained' needs models.source: pretrained "
                         "(CLIP is read from the models' clip folder)")
    return w


def nets_needed(config: Mapping) -> list[str]:
    """Evaluation nets (in :data:`NET_NAMES` order) the configured metrics need: ``evaluate.metrics``, the TN-
    columns if a configured method is multi-sample and ``takagi_for_samples``, and the n-way net."""
    ev = config["evaluate"]
    cols = list(ev["metrics"])
    if ev["takagi_for_samples"] and any(p.multi_sample for p in method_plans(config)):
        cols += list(TAKAGI_COLUMNS)
    nets = {metric_spec(c).net for c in cols} - {None}
    if ev.get("nway"):
        net = ev["nway"]["net"]
        if net not in NWAY_LAYERS:
            raise ValueError(f"config key evaluate.nway.net: {net!r} has no ImageNet logits; "
                             f"use one of {tuple(NWAY_LAYERS)}")
        nets.add(net)
    return [n for n in NET_NAMES if n in nets]


def evaluation_files(config: Mapping, excluded: bool = False, per_image: bool = False, methods=None) -> list[str]:
    """Evaluation CSVs of every configured method/variant/subject: the main ones, or (``excluded``) their
    ``_excl-<tag>`` twins, or (``per_image``) the per-image CSVs. ``methods`` filters."""
    ev = config["evaluate"]
    suffix = ""
    if excluded:
        if not ev["exclude"]:
            return []
        suffix = "_" + exclusion_tag(ev["exclude"])
    elif per_image:
        if not ev["per_image"]:
            return []
        suffix = "_images"
    return [EVAL.format(method=p.method, variant=v, subject=s) + suffix + ".csv"
            for p in method_plans(config) if methods is None or p.method in methods
            for v in p.variants for s in p.subjects]


def targets(config: Mapping) -> list[str]:
    """Every evaluation CSV (+ ``_excl-<tag>`` twins, + per-image CSVs)."""
    return (evaluation_files(config) + evaluation_files(config, excluded=True)
            + evaluation_files(config, per_image=True))


def inputs(config: Mapping, method: str, variant: str, subject: str) -> dict:
    """images.h5, the stimulus brick, the stimulus tables defining the test split (every subject's for
    "avg"), the evaluation model folders (pretrained), the exclusion list (if any)."""
    subs = nsd_subjects(config) if subject == "avg" else [subject]
    out = {"images": RECON.format(method=method, variant=variant, subject=subject), "brick": brick(config),
           "stimuli": [STIMULI.format(subject=x) for x in subs]}
    if weights(config) == "pretrained":
        nets = nets_needed(config)
        if set(nets) - {"clip"}:
            out["evalnets"] = evalnets_dir(config)
        if "clip" in nets:
            out["clip"] = model_dir(config["models"], "clip")
    if config["evaluate"]["exclude"]:
        out["exclude"] = config["evaluate"]["exclude"]
    return out


def rule_settings(config: Mapping, method: str) -> dict:
    """The evaluate rule's settings params for ``method`` (:meth:`EvalSettings.for_method`)."""
    return EvalSettings.from_section(config["evaluate"]).for_method(method in MULTI_SAMPLE).as_params()


def evalnets_dir(config: Mapping) -> str:
    """Folder of the pretrained torchvision / SwAV evaluation weights (local rule ``evaluate_fetch_nets``)."""
    return f"{config['models']['root']}/evalnets"


def outputs(config: Mapping) -> dict:
    """The evaluate rule's outputs (wildcards method, variant, subject)."""
    ev = config["evaluate"]
    out = {"csv": f"{EVAL}.csv"}
    if ev["exclude"]:
        out["excluded"] = f"{EVAL}_{exclusion_tag(ev['exclude'])}.csv"
    if ev["per_image"]:
        out["per_image"] = f"{EVAL}_images.csv"
    return out


__all__ = [
    "NET_NAMES", "TORCHVISION_NETS", "EVAL_WEIGHTS", "NetPrep", "Convention", "CONVENTIONS", "PIXEL_CONVENTIONS",
    "NET_PREP_MODES", "PIXEL_RESIZES", "SSIM_KINDS", "convention", "MetricSpec", "METRICS", "BRAINDIFFUSER_COLUMNS",
    "TAKAGI_COLUMNS", "META_COLUMNS", "NWAY_LAYERS", "NWAY_RE", "metric_spec", "default_metrics", "required_nets",
    "resolve_metrics", "EvalSettings", "exclusion_tag", "EVAL", "weights", "nets_needed", "evaluation_files", "targets", "inputs",
    "evalnets_dir", "outputs", "rule_settings",
]
