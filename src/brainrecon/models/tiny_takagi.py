"""Tiny stand-ins of the Takagi & Nishimoto +T / +D roles (``blip``, ``dpt``, ``sd2_depth``).

The same classes as the real models from small configs with seeded random weights; the registry
(:mod:`brainrecon.models.registry`) saves them in the real repositories' file layout and loads them
with the same code as real weights:

- ``blip``: ViT 32 px / patch 8 (17 tokens at the native size; the features stage reads it at any
  size with ``interpolate_pos_encoding``), hidden 32; BERT text decoder hidden 32, 2 layers,
  cross-attention to the 32-d visual tokens. Tokenizer: a ``BertTokenizer`` over an in-memory
  WordPiece vocabulary of a few dozen caption words (no download), with BLIP's extra tokens
  ``[DEC]`` (= BOS of the decoder) and ``[ENC]``; files ``vocab.txt``, ``tokenizer.json``,
  ``tokenizer_config.json``, ``special_tokens_map.json`` and ``preprocessor_config.json`` at the
  root as in the hub repo (written by :func:`write_tiny_blip`, since ``BlipProcessor.save_pretrained``
  would write a ``processor_config.json`` the hub repo does not have).
- ``dpt``: ViT 32 px / patch 8, hidden 32, 4 layers, ``backbone_out_indices`` (0, 1, 2, 3), readout
  ``project``, neck/fusion 8..32 / 16 channels -> predicted depth 64×64 (the real one: 24×24 patches,
  ``backbone_out_indices`` (5, 11, 17, 23), 4×577×1024 hidden states, depth 384×384).
- ``sd2_depth``: the tiny SD UNet of :mod:`brainrecon.models.tiny` with ``in_channels=5``, the tiny
  VAE (factor 4), CLIP text encoder and byte-level tokenizer, the SD PNDM scheduler config, and a
  tiny DPT as ``depth_estimator`` (not used by Takagi +D, which takes its depth from the ``dpt``
  role's decoded hidden states, but part of the repo's layout).
"""

from __future__ import annotations

import json
from pathlib import Path

#: tokenizer files of the BLIP repo root (fetched along with the processor's preprocessor_config.json)
BLIP_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

#: words of the tiny BLIP vocabulary (BLIP's prompt "a picture of" plus COCO-ish caption words)
TINY_BLIP_WORDS = (
    "a picture of the an man woman person people dog cat bird horse giraffe elephant bus train car "
    "plane boat table plate pizza food cake kitchen room street field grass water sky snow beach "
    "on in with and at near next to sitting standing walking riding holding two three red blue green "
    "white black large small"
).split()
TINY_IMAGE = 32
TINY_DIM = 32


# ----------------------------------------------------------------------------- tiny BLIP
def tiny_blip_vocab() -> dict[str, int]:
    """WordPiece vocabulary: BERT's 5 special tokens, :data:`TINY_BLIP_WORDS`, then ``[DEC]``, ``[ENC]``."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(TINY_BLIP_WORDS))
    tokens += ["[DEC]", "[ENC]"]
    return {t: i for i, t in enumerate(tokens)}


def tiny_blip_tokenizer():
    """``BertTokenizer`` over :func:`tiny_blip_vocab` with BLIP's ``[DEC]`` BOS and ``[ENC]`` tokens."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=tiny_blip_vocab(), bos_token="[DEC]", additional_special_tokens=["[ENC]"],
                         model_max_length=512)


def build_blip_components(seed: int = 0) -> dict:
    """Tiny BLIP captioner: ``model`` (BlipForConditionalGeneration) and ``processor`` (BlipProcessor)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from .tiny import seeded

    vocab = tiny_blip_vocab()
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=TINY_DIM, encoder_hidden_size=TINY_DIM, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
            bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[CLS]"],
        ),
        vision_config=dict(hidden_size=TINY_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=TINY_IMAGE, patch_size=8),
        projection_dim=TINY_DIM,
    )
    with seeded(seed):
        model = BlipForConditionalGeneration(config)
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return {"model": model, "processor": BlipProcessor(image_processor=image_processor,
                                                       tokenizer=tiny_blip_tokenizer())}


def write_tiny_blip(folder: Path, seed: int = 0) -> None:
    """Save the tiny BLIP in the hub repo's root layout: ``config.json`` + ``model.safetensors``,
    ``preprocessor_config.json`` and the tokenizer files (:data:`BLIP_TOKENIZER_FILES`)."""
    folder = Path(folder)
    parts = build_blip_components(seed)
    parts["model"].save_pretrained(str(folder))
    proc = parts["processor"]
    proc.image_processor.save_pretrained(str(folder))
    tok = proc.tokenizer
    tok.save_pretrained(str(folder))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab))
    specials = {k: str(getattr(tok, k)) for k in ("bos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                                                  "mask_token")}
    specials["additional_special_tokens"] = ["[ENC]"]
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    (folder / "processor_config.json").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- tiny DPT
def tiny_dpt_config():
    """``DPTConfig`` of the tiny DPT (ViT 32 px / patch 8, 4 layers, all four are backbone outputs)."""
    from transformers import DPTConfig

    return DPTConfig(
        hidden_size=TINY_DIM, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
        image_size=TINY_IMAGE, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
        readout_type="project", head_in_index=-1,
    )


def tiny_dpt_processor():
    """``DPTImageProcessor`` with the settings of Intel/dpt-large (bicubic resize to a fixed square,
    no aspect ratio kept, mean = std = 0.5) at the tiny size."""
    from transformers import DPTImageProcessor

    return DPTImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE}, keep_aspect_ratio=False,
                             image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)


def build_dpt_components(seed: int = 0) -> dict:
    """Tiny DPT: ``model`` (DPTForDepthEstimation) and ``image_processor``."""
    from transformers import DPTForDepthEstimation

    from .tiny import seeded

    with seeded(seed):
        model = DPTForDepthEstimation(tiny_dpt_config())
    return {"model": model, "image_processor": tiny_dpt_processor()}


# ----------------------------------------------------------------------------- tiny SD2-depth
def build_sd2_depth_components(seed: int = 0) -> dict:
    """Tiny SD2-depth: the tiny SD parts with a 5-channel UNet, plus a tiny DPT depth estimator."""
    from transformers import CLIPTextModel, DPTForDepthEstimation

    from .tiny import _clip_text_config, seeded, tiny_clip_tokenizer, tiny_pndm_scheduler, tiny_unet, tiny_vae

    with seeded(seed):
        return {
            "unet": tiny_unet(in_channels=5),
            "vae": tiny_vae(),
            "text_encoder": CLIPTextModel(_clip_text_config()),
            "tokenizer": tiny_clip_tokenizer(),
            "scheduler": tiny_pndm_scheduler(),
            "depth_estimator": DPTForDepthEstimation(tiny_dpt_config()),
            "feature_extractor": tiny_dpt_processor(),
        }


__all__ = [
    "BLIP_TOKENIZER_FILES", "tiny_blip_vocab", "tiny_blip_tokenizer",
    "build_blip_components", "write_tiny_blip", "tiny_dpt_config", "tiny_dpt_processor", "build_dpt_components",
    "build_sd2_depth_components",
]
