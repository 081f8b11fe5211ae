"""Takagi & Nishimoto's decoded inputs: +T captions (BLIP) and +D depth maps (DPT), per subject.

+T (:func:`decode_captions`): BLIP's text decoder generates from the predicted visual tokens
(cross-attention keys/values), beam search with ``num_beams`` 3, ``max_length`` 20, ``min_length`` 5
(lengths in tokens of the whole sequence, BOS and prompt included, as in HF/BLIP ``generate``),
``repetition_penalty`` 1.5, prompt "a picture of " (the BLIP decoder's prompt in the reference,
stripped from the caption). Special tokens other than [SEP] (end) are suppressed, so a caption is
never empty (a trained BLIP never emits them anyway). Captions are decoded once per image and shared
by the 5 samples.

+D (:func:`decode_depth`): the DPT neck + head turn predicted hidden states (4 layers of 577 tokens)
into a depth map (384×384 for DPT-large), bicubic-resized to the latent size of the SD2-depth UNet
(64×64 at 512 px) and min–max normalised per image to [-1, 1] (constant maps become 0), as the
reference ``dptemb2dpt.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ...io import atomic_dir, atomic_path, write_text_atomic
from ..run import Predictions, rows_of, finite, load_components
from .plan import CaptionSettings


# ----------------------------------------------------------------------------- +T captions
@torch.no_grad()
def decode_captions(blip_parts, visual_tokens, settings: CaptionSettings,
                    progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Captions from predicted BLIP ViT tokens.

    blip_parts: role ``blip`` (``model`` BlipForConditionalGeneration, ``processor``).
    visual_tokens: (n, T, D) array-like (T = 226 at 240 px for the real model; any T works: the
        tokens are cross-attention keys/values); D must be the vision hidden size.
    Returns (captions: n strings without the prompt, n_tokens: (n,) int64 lengths of the generated
    token sequences, BOS + prompt + new tokens + [SEP] if emitted — the unit of min/max_length).
    """
    s = settings
    model = blip_parts.model
    tok = blip_parts.processor.tokenizer
    tcfg = model.config.text_config
    dim = int(model.config.vision_config.hidden_size)
    n = len(visual_tokens)
    if n == 0:
        raise ValueError("no visual tokens to caption")
    first = np.asarray(visual_tokens[0:1])
    if first.ndim != 3 or first.shape[-1] != dim:
        raise ValueError(f"BLIP visual tokens must be (n, tokens, {dim}), got rows of shape {first.shape[1:]}")
    p = next(model.parameters())
    prompt_ids = tok([s.prompt], return_tensors="pt").input_ids
    prompt_ids[:, 0] = tcfg.bos_token_id
    prompt_ids = prompt_ids[:, :-1]  # drop [SEP]: the decoder continues the prompt
    if prompt_ids.shape[1] >= s.max_length:
        raise ValueError(f"caption prompt {s.prompt!r} has {prompt_ids.shape[1]} tokens, max_length is {s.max_length}")
    special = {int(i) for i in tok.all_special_ids} | {int(tcfg.bos_token_id), int(tcfg.pad_token_id)}
    suppress = sorted(special - {int(tcfg.sep_token_id)})
    captions: list[str] = []
    lengths: list[int] = []
    prefix = " ".join(tok.decode(prompt_ids[0], skip_special_tokens=True).split())
    for i0 in tqdm(range(0, n, s.batch_size), desc="BLIP captions", disable=not progress):
        emb = torch.as_tensor(finite(np.asarray(visual_tokens[i0:i0 + s.batch_size], dtype=np.float32),
                                      "predicted BLIP tokens")).to(p.device, p.dtype)
        b = emb.shape[0]
        out = model.text_decoder.generate(
            input_ids=prompt_ids.repeat(b, 1).to(p.device),
            encoder_hidden_states=emb,
            encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long, device=p.device),
            eos_token_id=tcfg.sep_token_id, pad_token_id=tcfg.pad_token_id,
            num_beams=s.num_beams, max_length=s.max_length, min_length=s.min_length,
            repetition_penalty=s.repetition_penalty, do_sample=False, suppress_tokens=suppress,
        )
        for seq in out.cpu():
            seq = seq.tolist()
            # generated length: up to and including the first [SEP] (later positions are padding)
            end = seq.index(tcfg.sep_token_id) + 1 if tcfg.sep_token_id in seq[prompt_ids.shape[1]:] else len(seq)
            lengths.append(end)
            text = " ".join(tok.decode(seq[:end], skip_special_tokens=True).split())
            if prefix and text.startswith(prefix):
                text = text[len(prefix):].strip()
            captions.append(text)
    return captions, np.asarray(lengths, dtype=np.int64)


def write_captions_csv(path, nsd_ids, captions, n_tokens) -> None:
    """Captions table (atomic): columns nsdId, caption, n_tokens."""
    import pandas as pd

    if not (len(nsd_ids) == len(captions) == len(n_tokens)):
        raise ValueError(f"{len(nsd_ids)} nsdIds, {len(captions)} captions, {len(n_tokens)} lengths")
    df = pd.DataFrame({"nsdId": np.asarray(nsd_ids, np.int64), "caption": list(captions),
                       "n_tokens": np.asarray(n_tokens, np.int64)})
    write_text_atomic(path, df.to_csv(index=False))


def read_captions_csv(path, nsd_ids=None) -> list[str]:
    """Captions of ``nsd_ids`` (default: all, file order) from :func:`write_captions_csv`'s table."""
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=False)
    for col in ("nsdId", "caption"):
        if col not in df.columns:
            raise KeyError(f"{path}: no column {col!r} (have {list(df.columns)})")
    table = dict(zip(df["nsdId"].astype(np.int64), df["caption"].astype(str)))
    if nsd_ids is None:
        return list(df["caption"].astype(str))
    missing = [int(k) for k in nsd_ids if int(k) not in table]
    if missing:
        raise KeyError(f"{path}: no caption for nsdId(s) {missing[:10]}")
    return [table[int(k)] for k in nsd_ids]


# ----------------------------------------------------------------------------- +D depth
def dpt_hidden_layout(dpt_model) -> tuple[int, int, int]:
    """(layers, tokens, dim) of the hidden states the DPT neck takes (dpt-large: 4, 577, 1024)."""
    cfg = dpt_model.config
    layers = len(cfg.backbone_out_indices)
    image = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
    tokens = (image // cfg.patch_size) ** 2 + 1
    return layers, tokens, int(cfg.hidden_size)


@torch.no_grad()
def decode_depth(dpt_model, hidden, size: int | tuple[int, int]) -> np.ndarray:
    """Depth maps from predicted DPT hidden states.

    hidden: (b, L·T, D), (b, L, T, D) or flat (b, L·T·D) (L backbone layers, T tokens incl. CLS, D hidden
        size; layer-major, as the ``dpt`` feature space stores them).
    size: output side(s) — the latent size of the depth-conditioned UNet (64 at 512 px).
    Returns (b, 1, h, w) float32 in [-1, 1]: neck + head → bicubic resize → per-image min–max
    to [-1, 1] (constant maps → 0).
    """
    L, T, D = dpt_hidden_layout(dpt_model)
    h = finite(np.asarray(hidden, dtype=np.float32), "predicted DPT hidden states")
    if (h.ndim == 3 and h.shape[1:] == (L * T, D)) or (h.ndim == 2 and h.shape[1] == L * T * D):
        h = h.reshape(h.shape[0], L, T, D)
    if h.ndim != 4 or h.shape[1:] != (L, T, D):
        raise ValueError(f"DPT hidden states must be (b, {L * T}, {D}) or (b, {L}, {T}, {D}), got {h.shape}")
    p = next(dpt_model.parameters())
    x = torch.from_numpy(h).to(p.device, p.dtype)
    feats = dpt_model.neck([x[:, i] for i in range(L)])
    depth = dpt_model.head(feats).float()  # (b, H, W)
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    cc = torch.nn.functional.interpolate(depth[:, None], size=size, mode="bicubic", align_corners=False)
    lo = cc.amin(dim=(1, 2, 3), keepdim=True)
    hi = cc.amax(dim=(1, 2, 3), keepdim=True)
    rng = hi - lo
    out = torch.where(rng > 1e-12, 2.0 * (cc - lo) / rng.clamp_min(1e-12) - 1.0, torch.zeros_like(cc))
    return out.cpu().numpy().astype(np.float32)


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """(b, 1, h, w) in [-1, 1] → (b, h, w) uint8 greyscale for inspection."""
    d = np.asarray(depth, dtype=np.float32)[:, 0]
    return np.round((np.clip(d, -1, 1) + 1) * 127.5).astype(np.uint8)


def write_depth(path, png_dir, nsd_ids, depth, attrs: Mapping | None = None) -> None:
    """Depth maps (atomic): ``depth`` (n, 1, h, w) float32, ``nsd_ids``; and ``png_dir/<nsdId>.png``."""
    from PIL import Image

    depth = np.asarray(depth, np.float32)
    if depth.ndim != 4 or depth.shape[0] != len(nsd_ids):
        raise ValueError(f"depth must be (n, 1, h, w) for {len(nsd_ids)} nsdIds, got {depth.shape}")
    with atomic_path(path) as tmp, atomic_dir(png_dir) as ptmp:
        with h5py.File(tmp, "w") as f:
            f["depth"] = depth
            f["nsd_ids"] = np.asarray(nsd_ids, np.int64)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
        for k, im in zip(nsd_ids, depth_to_uint8(depth)):
            Image.fromarray(im).save(Path(ptmp) / f"{int(k)}.png")


def read_depth(path, nsd_ids) -> np.ndarray:
    """Depth maps of ``nsd_ids`` (in that order) from :func:`write_depth`'s file."""
    with h5py.File(path, "r") as f:
        for key in ("depth", "nsd_ids"):
            if key not in f:
                raise KeyError(f"{path}: missing {key!r}")
        ids = f["nsd_ids"][:].astype(np.int64)
        rows = rows_of(ids, nsd_ids, str(path))
        return f["depth"][:][rows]


def captions_subject(inputs: Mapping, out_csv, *, settings: CaptionSettings, prediction_key: str, device: str,
                     dtype: str, progress=True) -> dict:
    """+T first step for one subject: predicted BLIP tokens → captions CSV (nsdId, caption, n_tokens).

    inputs: ``blip`` (the regression output of the blip space), ``blip_model`` (the role's folder)."""
    regression_blip = inputs["blip"]
    parts = load_components({"blip": inputs["blip_model"]}, device, dtype)[0]["blip"]
    with Predictions(regression_blip, prediction_key) as pred:
        caps, lengths = decode_captions(parts, pred, settings, progress=progress)
        write_captions_csv(out_csv, pred.nsd_ids, caps, lengths)
        return dict(n=len(caps), out=str(out_csv), mean_tokens=float(np.mean(lengths)))


def depth_subject(inputs: Mapping, outputs: Mapping, *, image_size: int, prediction_key: str, device: str, dtype: str,
                  batch_size: int = 16, progress=True) -> dict:
    """+D first step for one subject: predicted DPT hidden states → depth maps at the SD2-depth latent
    size for ``image_size`` (``image_size / vae factor``; 64 at 512 px).

    inputs: ``dpt`` (the regression output of the dpt space), ``dpt_model``, ``sd2_model`` (folders);
    outputs: ``h5`` (depth maps) and ``png`` (one greyscale PNG per image)."""
    regression_dpt, dpt_dir, sd2_dir = inputs["dpt"], inputs["dpt_model"], inputs["sd2_model"]
    out_h5, png_dir = outputs["h5"], outputs["png"]
    dpt = load_components({"dpt": dpt_dir}, device, dtype)[0]["dpt"].model
    vae_cfg = json.loads((Path(sd2_dir) / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not a multiple of the SD2-depth VAE factor {factor}")
    side = image_size // factor
    with Predictions(regression_dpt, prediction_key) as pred:
        out = [decode_depth(dpt, pred[i0:i0 + batch_size], side)
               for i0 in tqdm(range(0, len(pred), batch_size), desc="DPT depth", disable=not progress)]
        depth = np.concatenate(out)
        write_depth(out_h5, png_dir, pred.nsd_ids, depth,
                    attrs=dict(size=side, image_size=image_size, source=str(regression_dpt),
                               prediction_key=prediction_key))
    return dict(n=int(depth.shape[0]), size=side, out=str(out_h5))


__all__ = ["decode_captions", "write_captions_csv", "read_captions_csv", "dpt_hidden_layout", "decode_depth",
           "depth_to_uint8", "write_depth", "read_depth", "captions_subject", "depth_subject"]
