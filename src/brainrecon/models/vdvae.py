"""Very Deep VAE (Child 2021), ImageNet64 model, written for brainrecon.

The module layout and parameter names follow the official release (openai/vdvae), so that the official
checkpoint ``imagenet64-iter-1600000-model-ema.th`` loads unchanged with ``load_state_dict(strict=True)``:

``encoder.in_conv.*``, ``encoder.enc_blocks.{i}.c{1..4}.*``,
``decoder.dec_blocks.{i}.{enc,prior,resnet}.c{1..4}.*``, ``decoder.dec_blocks.{i}.z_proj.*``,
``decoder.bias_xs.{j}``, ``decoder.out_net.out_conv.*``, ``decoder.gain``, ``decoder.bias``.

Architecture (facts of the reference model, re-implemented here):

* A *bottleneck block* is four convolutions ``c1`` (1×1, in→mid), ``c2``/``c3`` (3×3 mid→mid, or 1×1 at
  resolution ≤ 2), ``c4`` (1×1, mid→out), each preceded by a GELU; optionally residual, optionally followed by
  average pooling (``"{res}d{rate}"`` encoder blocks). ``mid = int(width * bottleneck_multiple)``.
* Encoder: 3×3 ``in_conv`` (3→width) on the channels-last input permuted to NCHW, then the residual encoder blocks;
  the last activation seen at each resolution is handed to the decoder.
* Decoder block at resolution ``r`` (optionally "mixing in" the state of a lower resolution ``m`` by
  nearest-neighbour upsampling of its first ``width`` channels, ``"{r}m{m}"``):
  ``prior(x)`` → prior mean, prior log-std (``zdim`` each) and a residual added to ``x``;
  posterior ``enc(cat[x, acts])`` → posterior mean, log-std; ``x += z_proj(z)``; ``x = resnet(x)``.
  The state of each resolution starts from a learned bias ``bias_xs`` (resolutions ≤ ``no_bias_above``).
* Output: ``x * gain + bias`` at the image resolution, then a 1×1 conv to the parameters of a mixture of
  ``num_mixtures`` discretised logistics (DMoL, PixelCNN++ channel coupling), sampled to 8-bit RGB.
* Temperature ``t`` scales the prior standard deviation (``log σ + log t``); ``t = 0`` uses the prior mean.

Input normalisation (ImageNet64): ``(x − 115.92961967) / 69.37404`` on 0..255 pixel values, channels-last.

Why one long module: the network must mirror the official checkpoint's module tree exactly (every parameter
name above), and the tree is only checkable as a whole; splitting encoder and decoder would scatter one layout
over files that must change together.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..randomness import per_row_noise

__all__ = [
    "IMAGENET64_SHIFT",
    "IMAGENET64_SCALE",
    "VDVAEConfig",
    "VDVAE",
    "parse_layer_string",
    "latent_shapes",
    "latent_dims",
    "flatten_latents",
    "unflatten_latents",
    "preprocess",
    "load_vdvae",
    "dmol_sample",
]

#: ImageNet64 pixel normalisation of the reference (data.py): x_norm = (x + shift) * scale, x in 0..255.
IMAGENET64_SHIFT = -115.92961967
IMAGENET64_SCALE = 1.0 / 69.37404


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


def parse_layer_string(s: str) -> list[tuple[int, int | None]]:
    """Parse a VDVAE block string (e.g. ``"64x11,64d2,1x5"`` or ``"1x2,4m1,4x3"``).

    Tokens: ``"{res}x{count}"`` → ``count`` blocks at ``res`` with no extra argument; ``"{res}d{rate}"`` → one
    encoder block at ``res`` followed by average pooling by ``rate``; ``"{res}m{mixin}"`` → one decoder block at
    ``res`` that mixes in the upsampled state of resolution ``mixin``; ``"{res}"`` → one block.

    Returns a list of ``(res, arg)`` with ``arg`` the down rate / mixin resolution or ``None``.
    Raises ``ValueError`` naming the offending token.
    """
    if not isinstance(s, str) or not s.strip():
        raise ValueError(f"VDVAE block string must be a non-empty string, got {s!r}")
    layers: list[tuple[int, int | None]] = []
    for token in s.split(","):
        tok = token.strip()
        try:
            if "x" in tok:
                res, count = (int(a) for a in tok.split("x"))
                if count < 1:
                    raise ValueError
                layers += [(res, None)] * count
            elif "m" in tok:
                res, mixin = (int(a) for a in tok.split("m"))
                layers.append((res, mixin))
            elif "d" in tok:
                res, rate = (int(a) for a in tok.split("d"))
                layers.append((res, rate))
            else:
                res = int(tok)
                layers.append((res, None))
        except ValueError:
            raise ValueError(f"bad token {tok!r} in VDVAE block string {s!r}") from None
        if layers[-1][0] < 1 or (layers[-1][1] is not None and layers[-1][1] < 1):
            raise ValueError(f"bad token {tok!r} in VDVAE block string {s!r}: values must be positive")
    return layers


@dataclass(frozen=True)
class VDVAEConfig:
    """Hyperparameters of a VDVAE. Defaults: the official ImageNet64 model (``hps.py`` ``imagenet64``).

    ``num_latent_layers``: how many leading decoder blocks' latents are used as features (31 in Brain-Diffuser).
    """

    width: int = 512
    zdim: int = 16
    bottleneck_multiple: float = 0.25
    no_bias_above: int = 64
    num_mixtures: int = 10
    image_size: int = 64
    image_channels: int = 3
    enc_blocks: str = "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5"
    dec_blocks: str = "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12"
    num_latent_layers: int = 31

    def __post_init__(self) -> None:
        for name in ("width", "zdim", "num_mixtures", "image_size", "no_bias_above"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VDVAEConfig.{name} must be ≥ 1, got {getattr(self, name)!r}")
        if self.image_channels != 3:
            raise ValueError(f"VDVAEConfig.image_channels must be 3 (DMoL output is RGB), got {self.image_channels}")
        if int(self.width * self.bottleneck_multiple) < 1:
            raise ValueError(f"VDVAEConfig: width*bottleneck_multiple = {self.width * self.bottleneck_multiple} < 1")
        enc = parse_layer_string(self.enc_blocks)
        dec = parse_layer_string(self.dec_blocks)
        # The encoder must walk down from image_size by its pooling blocks; every decoder resolution must be seen.
        res = self.image_size
        seen = {res}
        for i, (r, rate) in enumerate(enc):
            if r != res:
                raise ValueError(
                    f"VDVAEConfig.enc_blocks {self.enc_blocks!r}: block {i} is at resolution {r}, "
                    f"but the activation there has resolution {res}"
                )
            if rate is not None:
                if res % rate:
                    raise ValueError(f"VDVAEConfig.enc_blocks: block {i} pools {res} by {rate} (not a divisor)")
                res //= rate
            seen.add(res)
        for i, (r, mixin) in enumerate(dec):
            if r not in seen:
                raise ValueError(
                    f"VDVAEConfig.dec_blocks {self.dec_blocks!r}: block {i} at resolution {r} has no encoder "
                    f"activation (encoder resolutions: {sorted(seen)})"
                )
            if mixin is not None and (r % mixin or mixin >= r):
                raise ValueError(f"VDVAEConfig.dec_blocks: block {i} {r}m{mixin}: mixin must be a smaller divisor")
        if self.image_size not in {r for r, _ in dec}:
            raise ValueError(f"VDVAEConfig.dec_blocks {self.dec_blocks!r} never reaches image_size {self.image_size}")
        if not 0 <= self.num_latent_layers <= len(dec):
            raise ValueError(
                f"VDVAEConfig.num_latent_layers={self.num_latent_layers} not in [0, {len(dec)}] (decoder blocks)"
            )

    @classmethod
    def tiny(cls) -> "VDVAEConfig":
        """A small random-weight variant for tests and demo runs (same classes, 64×64 images).

        Its first 31 decoder blocks sit at the same resolutions as the ImageNet64 model's (1×2, 4×4, 8×8, 16×16,
        32×1), so ``num_latent_layers=31`` works; width 16, zdim 4 → 22792 latent dims for 31 layers.
        """
        return cls(
            width=16,
            zdim=4,
            num_mixtures=5,
            enc_blocks="64x1,64d2,32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
            dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x1,64m32,64x1",
        )

    @property
    def middle_width(self) -> int:
        return int(self.width * self.bottleneck_multiple)

    def replace(self, **changes) -> "VDVAEConfig":
        return dataclasses.replace(self, **changes)


def latent_shapes(config: VDVAEConfig, num_layers: int | None = None) -> list[tuple[int, int, int]]:
    """Per-layer latent shapes ``(zdim, res, res)`` of the first ``num_layers`` decoder blocks."""
    dec = parse_layer_string(config.dec_blocks)
    n = config.num_latent_layers if num_layers is None else int(num_layers)
    if not 0 <= n <= len(dec):
        raise ValueError(f"num_layers={num_layers} not in [0, {len(dec)}] (decoder blocks of {config.dec_blocks!r})")
    return [(config.zdim, res, res) for res, _ in dec[:n]]


def latent_dims(config: VDVAEConfig, num_layers: int | None = None) -> int:
    """Total number of latent dimensions of the first ``num_layers`` decoder blocks (91168 for ImageNet64, 31)."""
    return sum(c * h * w for c, h, w in latent_shapes(config, num_layers))


def flatten_latents(latents: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """Concatenate per-layer latents ``[(B, zdim, h, w), ...]`` into ``(B, D)`` (C-order per layer, layer order).

    Same layout as the reference (``z.reshape(B, -1)`` per layer, then ``hstack``).
    """
    if len(latents) == 0:
        raise ValueError("flatten_latents: empty latent list")
    ts = [torch.as_tensor(z) for z in latents]
    b = ts[0].shape[0]
    for i, z in enumerate(ts):
        if z.ndim != 4 or z.shape[0] != b:
            raise ValueError(f"flatten_latents: layer {i} has shape {tuple(z.shape)}, expected (B={b}, zdim, h, w)")
    return torch.cat([z.reshape(b, -1) for z in ts], dim=1)


def unflatten_latents(
    vec: torch.Tensor | np.ndarray, config: VDVAEConfig, num_layers: int | None = None
) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_latents`: ``(B, D)`` → ``[(B, zdim, res, res)]`` for the first ``num_layers`` blocks."""
    t = torch.as_tensor(vec)
    shapes = latent_shapes(config, num_layers)
    total = sum(c * h * w for c, h, w in shapes)
    if t.ndim != 2 or t.shape[1] != total:
        raise ValueError(
            f"unflatten_latents: expected shape (B, {total}) for {len(shapes)} layers, got {tuple(t.shape)}"
        )
    out, start = [], 0
    for c, h, w in shapes:
        n = c * h * w
        out.append(t[:, start : start + n].reshape(t.shape[0], c, h, w))
        start += n
    return out


# --------------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------------


def _conv(in_ch: int, out_ch: int, kernel: int, zero_weights: bool = False) -> nn.Conv2d:
    """Conv2d with 'same' padding and zero bias (zero weights too if asked), as initialised by the reference."""
    c = nn.Conv2d(in_ch, out_ch, kernel, stride=1, padding=kernel // 2)
    with torch.no_grad():
        c.bias.zero_()
        if zero_weights:
            c.weight.zero_()
    return c


class Block(nn.Module):
    """Bottleneck block: GELU→c1(1×1)→GELU→c2(3×3|1×1)→GELU→c3(3×3|1×1)→GELU→c4(1×1) [+ input] [→ avg-pool].

    Input/output ``(B, C, H, W)``; output ``(B, out, H/down_rate, W/down_rate)``.
    """

    def __init__(
        self,
        in_width: int,
        middle_width: int,
        out_width: int,
        down_rate: int | None = None,
        residual: bool = False,
        use_3x3: bool = True,
        zero_last: bool = False,
    ):
        super().__init__()
        self.down_rate = down_rate
        self.residual = residual
        k = 3 if use_3x3 else 1
        self.c1 = _conv(in_width, middle_width, 1)
        self.c2 = _conv(middle_width, middle_width, k)
        self.c3 = _conv(middle_width, middle_width, k)
        self.c4 = _conv(middle_width, out_width, 1, zero_weights=zero_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = x + h if self.residual else h
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


class Encoder(nn.Module):
    """Bottom-up encoder. ``forward(x (B, H, W, 3) normalised, channels-last)`` → ``{res: (B, width, res, res)}``."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.config = config
        w, mid = config.width, config.middle_width
        self.in_conv = _conv(config.image_channels, w, 3)
        blocks = parse_layer_string(config.enc_blocks)
        self.enc_blocks = nn.ModuleList(
            Block(w, mid, w, down_rate=rate, residual=True, use_3x3=res > 2) for res, rate in blocks
        )
        with torch.no_grad():
            for b in self.enc_blocks:
                b.c4.weight.mul_(math.sqrt(1.0 / len(blocks)))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        h = self.in_conv(x.permute(0, 3, 1, 2).contiguous())
        acts = {h.shape[2]: h}
        for block in self.enc_blocks:
            h = block(h)
            acts[h.shape[2]] = h
        return acts


class DecBlock(nn.Module):
    """One top-down block at resolution ``res`` with prior, posterior (``enc``), ``z_proj`` and ``resnet``."""

    def __init__(self, config: VDVAEConfig, res: int, mixin: int | None, n_blocks: int):
        super().__init__()
        self.res = res
        self.mixin = mixin
        self.zdim = config.zdim
        w, mid, use_3x3 = config.width, config.middle_width, res > 2
        self.enc = Block(2 * w, mid, 2 * config.zdim, residual=False, use_3x3=use_3x3)
        self.prior = Block(w, mid, 2 * config.zdim + w, residual=False, use_3x3=use_3x3, zero_last=True)
        self.z_proj = _conv(config.zdim, w, 1)
        self.resnet = Block(w, mid, w, residual=True, use_3x3=use_3x3)
        with torch.no_grad():
            self.z_proj.weight.mul_(math.sqrt(1.0 / n_blocks))
            self.resnet.c4.weight.mul_(math.sqrt(1.0 / n_blocks))

    def prior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, width, r, r)`` → prior mean, prior log-std ``(B, zdim, r, r)`` and the updated state ``x``."""
        feats = self.prior(x)
        zd = self.zdim
        return feats[:, :zd], feats[:, zd : 2 * zd], x + feats[:, 2 * zd :]

    def posterior_params(self, x: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-std ``(B, zdim, r, r)`` from the state ``x`` (before the prior residual) and acts."""
        qm, qv = self.enc(torch.cat([x, acts], dim=1)).chunk(2, dim=1)
        return qm, qv

    def finish(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.resnet(x + self.z_proj(z))


class DmolNet(nn.Module):
    """1×1 conv ``width → 10·num_mixtures`` DMoL parameters; ``forward`` returns them channels-last."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.num_mixtures = config.num_mixtures
        self.out_conv = _conv(config.width, config.num_mixtures * 10, 1)

    def forward(self, px_z: torch.Tensor) -> torch.Tensor:
        return self.out_conv(px_z).permute(0, 2, 3, 1)


class Decoder(nn.Module):
    """Top-down decoder (blocks, per-resolution learned initial states, gain/bias, DMoL output net)."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.config = config
        blocks = parse_layer_string(config.dec_blocks)
        self.dec_blocks = nn.ModuleList(DecBlock(config, res, mixin, len(blocks)) for res, mixin in blocks)
        self.resolutions = sorted({res for res, _ in blocks})
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, config.width, res, res))
            for res in self.resolutions
            if res <= config.no_bias_above
        )
        self.out_net = DmolNet(config)
        self.gain = nn.Parameter(torch.ones(1, config.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, config.width, 1, 1))

    def initial_states(self) -> dict[int, torch.Tensor]:
        """``{res: (1, width, res, res)}`` learned starting states (batch 1, broadcast on use)."""
        return {b.shape[-1]: b for b in self.bias_xs}

    def block_input(self, block: DecBlock, xs: dict[int, torch.Tensor], n: int) -> torch.Tensor:
        """State entering ``block`` for a batch of ``n``: current state at its resolution (zeros if none) plus the
        nearest-upsampled first ``width`` channels of the mixin resolution's state."""
        ref = self.gain
        x = xs.get(block.res)
        if x is None:
            x = torch.zeros(n, self.config.width, block.res, block.res, device=ref.device, dtype=ref.dtype)
        elif x.shape[0] != n:
            x = x.expand(n, -1, -1, -1)
        if block.mixin is not None:
            low = xs[block.mixin][:, : x.shape[1]]
            x = x + F.interpolate(low, size=(block.res, block.res), mode="nearest")
        return x

    def final(self, xs: dict[int, torch.Tensor]) -> torch.Tensor:
        return xs[self.config.image_size] * self.gain + self.bias


#: one generator for the whole batch, or one per batch row (row i's noise drawn from generator i)
Generators = torch.Generator | Sequence[torch.Generator] | None


def _check_generators(generator: Generators, n: int, what: str) -> None:
    """Raise ``ValueError`` unless ``generator`` is None, one generator, or ``n`` generators (one per row)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    gens = list(generator)
    if len(gens) != n or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"{what}: generator must be one torch.Generator or a list of {n} (one per batch row), "
                         f"got {len(gens)} item(s)")


def _noise(shape, like: torch.Tensor, generator: Generators, kind: str = "normal") -> torch.Tensor:
    """Standard normal (or U(0,1)) noise shaped ``shape`` on ``like``'s device/dtype.

    With a generator, the draw happens on the generator's device in float32 and is then moved, so a seed gives
    the same numbers whatever device the model runs on. With a list of generators (one per row,
    ``len == shape[0]``), row i is drawn from generator i with shape ``shape[1:]`` — the same numbers a batch of
    one would get from that generator, so a row does not depend on the other rows of the batch.
    """
    fn = torch.randn if kind == "normal" else torch.rand
    if generator is None:
        return fn(shape, device=like.device, dtype=like.dtype)
    if isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(like.device, like.dtype)
    _check_generators(generator, shape[0], "noise")
    return per_row_noise(generator, shape[1:], like.device, like.dtype, kind)


def dmol_sample(
    params: torch.Tensor,
    num_mixtures: int,
    generator: Generators = None,
    mode: Literal["sample", "mode"] = "sample",
) -> torch.Tensor:
    """Sample RGB values in [-1, 1] from discretised-mixture-of-logistics parameters.

    ``params``: ``(B, H, W, 10·M)`` channels-last — M mixture logits, then per colour channel (reshaped to
    ``(3, 3M)``): M locations, M log-scales (clamped at −7), M coupling coefficients (tanh). Channel coupling
    (PixelCNN++): g += c0·r, b += c1·r + c2·g, each clamped to [-1, 1].

    ``mode="sample"``: Gumbel-max choice of the component, logistic sample (as the reference).
    ``mode="mode"``: the most probable component and its location (no noise; deterministic).
    ``generator``: one generator, or a list of ``B`` (row b's noise from generator b).
    Returns float32 ``(B, H, W, 3)``.
    """
    p = params.float()
    b, h, w, c = p.shape
    m = int(num_mixtures)
    if c != 10 * m:
        raise ValueError(f"dmol_sample: last dim {c} != 10 * num_mixtures ({m})")
    logits = p[..., :m]
    rest = p[..., m:].reshape(b, h, w, 3, 3 * m)
    if mode == "sample":
        u = 1e-5 + (1.0 - 2e-5) * _noise(logits.shape, logits, generator, "uniform")
        k = torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)
    elif mode == "mode":
        k = torch.argmax(logits, dim=-1)
    else:
        raise ValueError(f"dmol_sample: mode must be 'sample' or 'mode', got {mode!r}")
    idx = k[..., None, None].expand(b, h, w, 3, 1)
    loc = torch.gather(rest[..., :m], -1, idx).squeeze(-1)
    log_scale = torch.gather(rest[..., m : 2 * m], -1, idx).squeeze(-1).clamp(min=-7.0)
    coef = torch.tanh(torch.gather(rest[..., 2 * m : 3 * m], -1, idx).squeeze(-1))
    if mode == "sample":
        u = 1e-5 + (1.0 - 2e-5) * _noise(loc.shape, loc, generator, "uniform")
        x = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
    else:
        x = loc
    x0 = x[..., 0].clamp(-1.0, 1.0)
    x1 = (x[..., 1] + coef[..., 0] * x0).clamp(-1.0, 1.0)
    x2 = (x[..., 2] + coef[..., 1] * x0 + coef[..., 2] * x1).clamp(-1.0, 1.0)
    return torch.stack([x0, x1, x2], dim=-1)


class VDVAE(nn.Module):
    """VDVAE with the official parameter layout (``.encoder``, ``.decoder``).

    Built with random weights (the reference initialisation); use :func:`load_vdvae` for a checkpoint.
    """

    def __init__(self, config: VDVAEConfig | None = None):
        super().__init__()
        self.config = config if config is not None else VDVAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    @property
    def num_dec_blocks(self) -> int:
        return len(self.decoder.dec_blocks)

    def _as_input(self, x) -> torch.Tensor:
        ref = self.decoder.gain
        t = torch.as_tensor(x).to(device=ref.device, dtype=ref.dtype)
        s = self.config.image_size
        if t.ndim != 4 or tuple(t.shape[1:]) != (s, s, self.config.image_channels):
            raise ValueError(
                f"VDVAE input must be preprocessed channels-last (B, {s}, {s}, 3) floats, got {tuple(t.shape)}"
            )
        return t

    @torch.no_grad()
    def encode_latents(
        self,
        x: torch.Tensor | np.ndarray,
        num_layers: int | None = None,
        generator: Generators = None,
        sample: bool = True,
    ) -> list[torch.Tensor]:
        """Posterior latents of the first ``num_layers`` decoder blocks (default ``config.num_latent_layers``).

        ``x``: ``(B, 64, 64, 3)`` from :func:`preprocess`. Each block's z is drawn from its posterior with
        ``generator`` (``sample=True``; the reference samples) or is the posterior mean (``sample=False``); later
        blocks are conditioned on the z chosen for earlier ones. Returns ``[(B, zdim, res, res)]``.
        Only the needed decoder blocks are run.

        ``generator``: one ``torch.Generator`` for the batch, or a list of ``B`` generators — row b's noise then
        comes from generator b (float32, on that generator's device, drawn block by block), so row b equals
        encoding image b alone with that generator, whatever the rest of the batch (up to floating-point
        reassociation of batched kernels).
        """
        n_layers = self.config.num_latent_layers if num_layers is None else int(num_layers)
        if not 0 <= n_layers <= self.num_dec_blocks:
            raise ValueError(f"num_layers={num_layers} not in [0, {self.num_dec_blocks}]")
        x = self._as_input(x)
        n = x.shape[0]
        if sample:
            _check_generators(generator, n, "encode_latents")
        acts = self.encoder(x)
        xs = self.decoder.initial_states()
        out = []
        for block in self.decoder.dec_blocks[:n_layers]:
            h = self.decoder.block_input(block, xs, n)
            qm, qv = block.posterior_params(h, acts[block.res])
            _, _, h = block.prior_params(h)
            z = qm + torch.exp(qv) * _noise(qm.shape, qm, generator) if sample else qm
            xs[block.res] = block.finish(h, z)
            out.append(z)
        return out

    @torch.no_grad()
    def decode_px(
        self,
        latents: Sequence[torch.Tensor | np.ndarray] = (),
        temperature: float | Sequence[float] = 1.0,
        generator: Generators = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Run the top-down pass; return the final feature map ``(B, width, 64, 64)`` (after gain/bias).

        The first ``len(latents)`` blocks use the given z ``(B, zdim, res, res)`` (numpy or tensors); the others
        draw z from the prior with std scaled by ``temperature`` (a float, or one value per decoder block), from
        ``generator``: one generator, or a list of ``B`` (row b's noise from generator b, as a batch of one).
        """
        ref = self.decoder.gain
        k = len(latents)
        if k > self.num_dec_blocks:
            raise ValueError(f"decode: got {k} latent layers, the decoder has {self.num_dec_blocks} blocks")
        shapes = latent_shapes(self.config, k)
        zs = [torch.as_tensor(z).to(device=ref.device, dtype=ref.dtype) for z in latents]
        if k:
            n = zs[0].shape[0]
            if batch_size is not None and batch_size != n:
                raise ValueError(f"decode: batch_size={batch_size} but latents have batch {n}")
        elif batch_size is None:
            raise ValueError("decode: batch_size is required when no latents are given")
        else:
            n = int(batch_size)
        for i, (z, shp) in enumerate(zip(zs, shapes)):
            if tuple(z.shape) != (n, *shp):
                raise ValueError(f"decode: latent layer {i} has shape {tuple(z.shape)}, expected {(n, *shp)}")
        if isinstance(temperature, (int, float)):
            temps = [float(temperature)] * self.num_dec_blocks
        else:
            temps = [float(t) for t in temperature]
            if len(temps) != self.num_dec_blocks:
                raise ValueError(f"decode: {len(temps)} temperatures for {self.num_dec_blocks} decoder blocks")
        if any(t < 0 for t in temps):
            raise ValueError(f"decode: temperatures must be ≥ 0, got {temperature!r}")
        _check_generators(generator, n, "decode")
        xs = self.decoder.initial_states()
        for i, block in enumerate(self.decoder.dec_blocks):
            h = self.decoder.block_input(block, xs, n)
            pm, pv, h = block.prior_params(h)
            if i < k:
                z = zs[i]
            elif temps[i] == 0.0:
                z = pm
            else:
                z = pm + torch.exp(pv) * temps[i] * _noise(pm.shape, pm, generator)
            xs[block.res] = block.finish(h, z)
        return self.decoder.final(xs)

    @torch.no_grad()
    def decode_from_latents(
        self,
        latents: Sequence[torch.Tensor | np.ndarray] = (),
        temperature: float | Sequence[float] = 1.0,
        generator: Generators = None,
        output: Literal["sample", "mode"] = "sample",
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Decode to uint8 images ``(B, 64, 64, 3)`` (numpy, RGB).

        The first ``len(latents)`` decoder blocks use the given z, the remaining ones sample from the prior at
        ``temperature``; the output is a DMoL sample (``output="sample"``, as the reference) or the location of
        the most probable mixture component (``"mode"``). Pixels: ``(x + 1) · 127.5`` clipped to [0, 255] and
        truncated to uint8 as in the reference. Deterministic for a given ``generator`` state; with a list of
        ``B`` generators (one per row) row b equals decoding row b alone with generator b (prior noise, then the
        DMoL draws, in the same order), up to floating-point reassociation of batched kernels.
        """
        px = self.decode_px(latents, temperature=temperature, generator=generator, batch_size=batch_size)
        params = self.decoder.out_net(px)
        im = dmol_sample(params, self.config.num_mixtures, generator=generator, mode=output)
        im = ((im + 1.0) * 127.5).clamp(0.0, 255.0)
        return im.to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------------------------------------------------
# Pre-processing and loading
# --------------------------------------------------------------------------------------------------------------------


def preprocess(images, size: int = 64) -> torch.Tensor:
    """uint8 RGB images ``(B, H, W, 3)`` (numpy or tensor) → normalised float32 ``(B, size, size, 3)``.

    Resizing (when ``H, W != size``) uses PIL ``Image.resize(..., BILINEAR)``, which is what the reference gets from
    ``torchvision.transforms.functional.resize(pil_image, (64, 64))`` (PIL path, bilinear with its
    antialiasing support for down-scaling). Then ``(x − 115.92961967) / 69.37404``.
    """
    from PIL import Image

    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"preprocess: expected images (B, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"preprocess: expected uint8 images (0..255), got dtype {arr.dtype}")
    if arr.shape[1:3] != (size, size):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((size, size), resample=Image.BILINEAR)) for a in arr])
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
    return (x + IMAGENET64_SHIFT) * IMAGENET64_SCALE


def _describe_config(config: VDVAEConfig) -> str:
    return (
        f"width={config.width}, zdim={config.zdim}, enc_blocks={config.enc_blocks!r}, "
        f"dec_blocks={config.dec_blocks!r}"
    )


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def load_vdvae(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    config: VDVAEConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VDVAE:
    """Load an official VDVAE checkpoint (a plain state dict ``.th``) strictly into :class:`VDVAE`.

    A ``module.`` prefix (non-EMA, DistributedDataParallel files) is stripped from the keys that carry it. Keys and
    shapes must match the model built from ``config`` (default: ImageNet64) exactly; otherwise ``ValueError``
    naming the checkpoint and listing the missing / unexpected keys and shape mismatches. The model is built on
    the meta device and the checkpoint tensors are assigned (no random initialisation of 125 M parameters),
    then moved to ``device``/``dtype``; returned in eval mode with gradients off.
    """
    config = config if config is not None else VDVAEConfig()
    if isinstance(path_or_state_dict, Mapping):
        name = "<state dict>"
        sd = path_or_state_dict
    else:
        name = os.fspath(path_or_state_dict)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"VDVAE checkpoint not found: {name}")
        try:
            sd = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"VDVAE checkpoint {name}: cannot be read as a tensor state dict ({e})") from e
        if not isinstance(sd, Mapping):
            raise ValueError(f"VDVAE checkpoint {name}: expected a state dict, got {type(sd).__name__}")
    state: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"VDVAE checkpoint {name}: entry {k!r} is not a tensor ({type(v).__name__})")
        key = k[len("module.") :] if k.startswith("module.") else k
        if key in state:
            raise ValueError(f"VDVAE checkpoint {name}: key {key!r} appears with and without 'module.' prefix")
        state[key] = v

    with torch.device("meta"):
        model = VDVAE(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
        raise ValueError(
            f"VDVAE checkpoint {name} does not match the model ({_describe_config(config)}): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.requires_grad_(False)
    return model.eval()
