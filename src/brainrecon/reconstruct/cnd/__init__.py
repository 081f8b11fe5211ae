"""CnD (Sun, Li, Moens 2023, "Contrast and Diffuse"): Phase 1, the double-contrastive masked fMRI encoder.

- :mod:`.plan` (no torch): settings, each job's inputs and outputs;
- :mod:`.encoder`: the masked fMRI autoencoder (1-D patch embedding, ViT encoder, asymmetric decoder);
- :mod:`.losses`: the cross- and self-contrastive InfoNCE losses and the random sparsification;
- :mod:`.train`: seeded, checkpointed, resumable training;
- :mod:`.stage`: one subject's job (prepared betas -> encoder, loss log, embeddings).

Phase 2 (concept-aware conditioning of a label-conditioned LDM) is not built yet. Importing the package is cheap.
"""

import importlib

from .plan import METHOD, Phase1Settings  # noqa: F401

_LAZY = {
    **dict.fromkeys(("MAEConfig", "FmriMAE", "pad_voxels", "sincos_table"), "encoder"),
    **dict.fromkeys(("info_nce", "sparsify", "double_contrastive_loss"), "losses"),
    **dict.fromkeys(("build_model", "param_groups", "lr_at", "train_encoder"), "train"),
    **dict.fromkeys(("read_patterns", "read_pretrain", "embed_rows", "train_subject"), "stage"),
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", "Phase1Settings", *_LAZY]
