"""CnD Phase 1's double contrastive loss (§3.2, Eqs. 3-5) and its augmentation.

For a batch of n fMRI patterns v (after random sparsification: 20 % of each pattern's voxels set to 0, drawn
per pattern), two independent random maskings give the views m1 and m2; each goes through the same encoder
and decoder, giving whole reconstructions v^{dm1}, v^{dm2} (N, V_padded). With cosine similarities s(a, b)
and temperature τ (InfoNCE, in-batch negatives, one direction: query -> key, as the reference code):

* cross-contrastive L_C: query v_i^{dm1}, positive v_i^{dm2};
* self-contrastive L_S: query v_i^{dm1}, positive the unmasked input v_i (padded like the reconstruction);
  with ``duplicate_self`` the second view's term is added too (the reference's ``sep_loss``: a sum);
* L = α_C L_C + α_S L_S (+ ``mask_loss_weight`` × the MAE loss on the dropped patches of view 1, 0 by default).

Negatives (``negatives``): ``"keys"`` — the other samples' keys (the reference code: other inputs for L_S,
other second-view reconstructions for L_C); ``"queries"`` — the other samples' queries (the paper's Eqs. 3-4:
other first-view reconstructions), i.e. denominator exp(s(q_i, k_i)/τ) + Σ_{k≠i} exp(s(q_i, q_k)/τ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEGATIVES = ("keys", "queries")


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float, negatives: str = "keys") -> torch.Tensor:
    """Mean over i of -log softmax: positive s(q_i, k_i), negatives s(q_i, k_j) (``keys``) or s(q_i, q_j)
    (``queries``) for j ≠ i; s = cosine similarity / τ. query, key: (N, D); N >= 2."""
    if query.shape != key.shape or query.ndim != 2:
        raise ValueError(f"info_nce: query and key must be (N, D) of one shape, got {tuple(query.shape)}, "
                         f"{tuple(key.shape)}")
    if query.shape[0] < 2:
        raise ValueError("info_nce needs at least 2 samples (in-batch negatives)")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    q = F.normalize(query.float(), dim=1, eps=1e-8)
    k = F.normalize(key.float(), dim=1, eps=1e-8)
    pos = (q * k).sum(1, keepdim=True)  # (N, 1)
    other = q @ (k if negatives == "keys" else q).T  # (N, N)
    n = q.shape[0]
    off = other.masked_fill(torch.eye(n, dtype=torch.bool, device=q.device), float("-inf"))
    logits = torch.cat([pos, off], dim=1) / float(temperature)
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device))


def sparsify(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random sparsification: per pattern (row), ``int(rate · V)`` voxels drawn without replacement set to 0."""
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"sparsification rate must be in [0, 1), got {rate}")
    k = int(float(rate) * x.shape[1])
    if k == 0:
        return x
    scores = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    idx = scores.topk(k, dim=1).indices
    return x.scatter(1, idx, 0.0)


def double_contrastive_loss(model, x: torch.Tensor, settings, generator: torch.Generator | None = None) -> dict:
    """The Phase 1 loss of one batch x (N, V) (module docstring). ``settings``: mask_ratio, sparsify,
    temperature, alpha_self, alpha_cross, mask_loss_weight, duplicate_self, negatives. Returns the tensors
    ``loss``, ``self``, ``cross``, ``mask``."""
    from .encoder import pad_voxels

    x = sparsify(x, settings.sparsify, generator)
    r1, m1 = model.reconstruct(x, settings.mask_ratio, generator)
    target = pad_voxels(x, model.config)
    zero = r1.new_zeros(())
    l_self = l_cross = l_mask = zero
    r2 = None
    if settings.alpha_cross or settings.duplicate_self:
        r2, _ = model.reconstruct(x, settings.mask_ratio, generator)
    if settings.alpha_cross:
        l_cross = info_nce(r1, r2, settings.temperature, settings.negatives)
    if settings.alpha_self:
        l_self = info_nce(r1, target, settings.temperature, settings.negatives)
        if settings.duplicate_self:
            l_self = l_self + info_nce(r2, target, settings.temperature, settings.negatives)
    if settings.mask_loss_weight:
        l_mask = model.masked_patch_loss(x, r1, m1)
    loss = settings.alpha_cross * l_cross + settings.alpha_self * l_self + settings.mask_loss_weight * l_mask
    return {"loss": loss, "self": l_self.detach(), "cross": l_cross.detach(), "mask": l_mask.detach()}


__all__ = ["NEGATIVES", "info_nce", "sparsify", "double_contrastive_loss"]
