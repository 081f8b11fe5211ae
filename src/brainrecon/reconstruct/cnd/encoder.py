"""CnD Phase 1's model: a masked autoencoder over the fMRI voxel vector (Sun, Li, Moens 2023, §3.2, §8.2).

The voxel vector (V values) is wrap-padded to a whole number of patches (the reference's
``pad_to_patch_size``: the first voxels are repeated at the end, always ``p - V mod p`` of them), cut into
L patches of p = 16 voxels and embedded by a 1-D convolution with kernel = stride = p (embedding D = 1024).
A fixed 1-D sin-cos position table (row 0, the cls slot, all zeros) is added; per sample a random 75 % of
the patch tokens are dropped (MAE's per-sample argsort masking); a learned cls token is prepended; 24 pre-norm
transformer blocks (multi-head attention with qkv bias, MLP ratio 1.0, GELU, LayerNorm eps 1e-5, no dropout)
and a final LayerNorm make the encoder. The asymmetric decoder (width 512, 8 blocks) puts a learned mask token
in every dropped slot, adds its own sin-cos table and predicts the p raw voxel values of every patch.

:meth:`FmriMAE.reconstruct` gives a view's whole reconstruction (N, V_padded) — what the double contrastive
loss compares (:mod:`.losses`); :meth:`FmriMAE.embed` gives the unmasked encoder tokens without cls
(N, L, D), what Phase 2 conditions on, and :meth:`FmriMAE.pooled` their mean (N, D).

Saved like a Hugging Face model: a folder with ``config.json`` (:class:`MAEConfig`) and ``model.safetensors``
(:meth:`FmriMAE.save_pretrained` / :meth:`FmriMAE.from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class MAEConfig:
    """Sizes of the masked fMRI autoencoder. ``num_voxels``: the subject's voxel count V (before padding)."""

    num_voxels: int
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 1.0

    def __post_init__(self):
        for name in ("num_voxels", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                     "decoder_depth", "decoder_num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads or self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(f"embed dims ({self.embed_dim}, {self.decoder_embed_dim}) must divide by their heads "
                             f"({self.num_heads}, {self.decoder_num_heads})")
        if self.embed_dim % 2 or self.decoder_embed_dim % 2:
            raise ValueError("embed dims must be even (sin-cos position tables)")

    @property
    def padded_voxels(self) -> int:
        """V + (p - V mod p): the reference always pads, a whole patch when V divides by p."""
        return self.num_voxels + self.patch_size - self.num_voxels % self.patch_size

    @property
    def num_patches(self) -> int:
        return self.padded_voxels // self.patch_size

    def to_json(self) -> str:
        return json.dumps({"model_type": "brainrecon-cnd-fmri-mae", **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "MAEConfig":
        d = json.loads(text)
        if d.pop("model_type", None) != "brainrecon-cnd-fmri-mae":
            raise ValueError(f"{source}: not a brainrecon CnD fMRI encoder config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}")
        return cls(**d)


def pad_voxels(x: torch.Tensor, config: MAEConfig) -> torch.Tensor:
    """(N, V) -> (N, V_padded): the first ``p - V mod p`` voxels repeated at the end (numpy ``wrap`` padding)."""
    if x.ndim != 2 or x.shape[1] != config.num_voxels:
        raise ValueError(f"expected fMRI patterns (N, {config.num_voxels}), got shape {tuple(x.shape)}")
    extra = config.padded_voxels - config.num_voxels
    reps = math.ceil(extra / config.num_voxels)
    return torch.cat([x, x.repeat(1, reps)[:, :extra]], dim=1)


def sincos_table(n_positions: int, dim: int) -> torch.Tensor:
    """(1 + n, dim) float32: row 0 zeros (cls), row 1 + t = [sin(t ω), cos(t ω)], ω_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    pos = np.arange(n_positions, dtype=np.float64)[:, None] * omega[None]
    table = np.concatenate([np.zeros((1, dim)), np.concatenate([np.sin(pos), np.cos(pos)], 1)], 0)
    return torch.from_numpy(table.astype(np.float32))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (MLP: fc, GELU, fc)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class FmriMAE(nn.Module):
    """The masked fMRI autoencoder (module docstring); ``config``: :class:`MAEConfig`."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv1d(1, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.register_buffer("pos_embed", sincos_table(c.num_patches, c.embed_dim)[None], persistent=False)
        self.blocks = nn.ModuleList([Block(c.embed_dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.embed_dim)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_table(c.num_patches, c.decoder_embed_dim)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList([Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio)
                                             for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size)
        self._init_weights()

    def _init_weights(self):
        """Linear: xavier-uniform, bias 0; LayerNorm: 1, 0; patch conv, cls and mask tokens: N(0, 0.02) (the
        reference's effective initialisation). Draws from torch's global RNG: seed it first."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.xavier_uniform_(m.in_proj_weight)
                nn.init.zeros_(m.in_proj_bias)
        nn.init.normal_(self.patch_embed.weight, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ pieces
    def patchify(self, x_padded: torch.Tensor) -> torch.Tensor:
        """(N, V_padded) -> (N, L, p)."""
        return x_padded.reshape(x_padded.shape[0], self.config.num_patches, self.config.patch_size)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        xp = pad_voxels(x, self.config)
        t = self.patch_embed(xp[:, None, :]).transpose(1, 2)  # (N, L, D)
        return t + self.pos_embed[:, 1:, :].to(t.dtype)

    def random_masking(self, tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """Keep ``int(L (1 - mask_ratio))`` tokens per sample (MAE): returns (kept (N, K, D), mask (N, L) with
        1 = dropped, ids_restore (N, L))."""
        n, L, d = tokens.shape
        keep = int(L * (1.0 - float(mask_ratio)))
        if keep < 1:
            raise ValueError(f"mask_ratio {mask_ratio} keeps no token of {L}")
        noise = torch.rand(n, L, generator=generator, device="cpu").to(tokens.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
        mask = torch.ones(n, L, device=tokens.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def _encode_tokens(self, t: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1, :]).to(t.dtype).expand(t.shape[0], -1, -1)
        h = torch.cat([cls, t], dim=1)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """(N, V) -> (latent (N, 1 + K, D) incl. cls, mask (N, L), ids_restore (N, L))."""
        kept, mask, ids_restore = self.random_masking(self._tokens(x), mask_ratio, generator)
        return self._encode_tokens(kept), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """-> (N, L, p): predicted raw voxel values of every patch (visible and dropped)."""
        h = self.decoder_embed(latent)
        n, L = ids_restore.shape
        fill = self.mask_token.to(h.dtype).expand(n, L + 1 - h.shape[1], -1)
        body = torch.cat([h[:, 1:, :], fill], dim=1)
        body = torch.gather(body, 1, ids_restore[..., None].expand(-1, -1, h.shape[2]))
        h = torch.cat([h[:, :1, :], body], dim=1) + self.decoder_pos_embed.to(h.dtype)
        for blk in self.decoder_blocks:
            h = blk(h)
        return self.decoder_pred(self.decoder_norm(h))[:, 1:, :]

    def reconstruct(self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """One masked view: (reconstruction (N, V_padded), mask (N, L))."""
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return pred.reshape(pred.shape[0], -1), mask

    def masked_patch_loss(self, x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE over each patch's p values, averaged over the dropped patches (MAE; raw targets)."""
        target = self.patchify(pad_voxels(x, self.config))
        err = ((self.patchify(recon) - target) ** 2).mean(-1)
        return (err * mask).sum() / mask.sum().clamp_min(1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unmasked encoder tokens without cls: (N, L, D) — Phase 2's conditioning input."""
        return self._encode_tokens(self._tokens(x))[:, 1:, :]

    @torch.no_grad()
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of :meth:`embed` over the tokens: (N, D)."""
        return self.embed(x).mean(1)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, folder) -> Path:
        """``folder/config.json`` + ``folder/model.safetensors`` (the caller writes the folder atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(self.config.to_json() + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        return folder

    @classmethod
    def from_pretrained(cls, folder, device="cpu") -> "FmriMAE":
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: no {name} (a CnD fMRI encoder folder has {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE})")
        config = MAEConfig.from_json((folder / CONFIG_FILE).read_text(), str(folder / CONFIG_FILE))
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_FILE))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit {config}: {exc}") from exc
        return model.to(device).eval()


__all__ = ["MAEConfig", "FmriMAE", "Block", "pad_voxels", "sincos_table", "CONFIG_FILE", "WEIGHTS_FILE"]
