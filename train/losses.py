"""Losses: soft-target cross-entropy, LEAF's ambiguous-label ranking loss, and the SimCLR/SupCon loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability distributions (FER+ vote distributions or one-hot)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def ambiguous_positive_mask(probs: torch.Tensor, cumulative: float = 0.9, max_positive: int = 3) -> torch.Tensor:
    """Positive set per row: the smallest top-k (k ≤ ``max_positive``) whose probability mass reaches ``cumulative``."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass = sorted_probs.cumsum(dim=-1)
    reached = mass >= cumulative
    first = torch.where(reached.any(dim=-1), reached.float().argmax(dim=-1), torch.full_like(mass[:, 0], max_positive - 1, dtype=torch.long))
    k = (first + 1).clamp(max=max_positive)
    ranks = torch.arange(probs.shape[1], device=probs.device).expand_as(probs)
    positive_sorted = ranks < k.unsqueeze(1)
    mask = torch.zeros_like(positive_sorted)
    return mask.scatter(1, order, positive_sorted)


def ranking_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per-row ``log(1 + Σ_pos exp(-s_p) · Σ_neg exp(s_n))``: every positive class ranked above every negative."""
    logits = logits.float()
    large = torch.finfo(logits.dtype).max / 4
    neg_pos = torch.where(positive, -logits, -large).logsumexp(dim=-1)
    pos_neg = torch.where(~positive, logits, -large).logsumexp(dim=-1)
    return F.softplus(neg_pos + pos_neg)


def category_level_loss(strong_logits: torch.Tensor, probs: torch.Tensor, confident: torch.Tensor,
                        cumulative: float = 0.9, rescale: bool = True) -> torch.Tensor:
    """LEAF's category-level loss on the chosen (confident) unlabeled rows, weighted by the positive set's margin and,
    with ``rescale``, rescaled to the magnitude of hard-label cross-entropy on the same rows."""
    if not confident.any():
        return strong_logits.sum() * 0.0
    logits, p = strong_logits[confident], probs[confident]
    positive = ambiguous_positive_mask(p, cumulative)
    weights = (torch.where(positive, p, 1.0).amin(dim=-1) - torch.where(positive, 0.0, p).amax(dim=-1)).clamp(0.0, 1.0)
    per_row = ranking_loss(logits, positive) * weights
    if not rescale:
        return per_row.mean()
    hard_ce = F.cross_entropy(logits.float(), p.argmax(dim=-1))
    scale = (hard_ce.detach() / per_row.mean().detach().clamp_min(1e-6)).clamp(max=10.0)
    return per_row.mean() * scale


def contrastive_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR (NT-Xent) between two views' L2-normalised embeddings; each row's positive is its other view."""
    if len(view_a) < 2:
        return view_a.sum() * 0.0
    z = torch.cat([view_a, view_b]).float()
    similarity = z @ z.t() / temperature
    n = len(view_a)
    similarity.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, target)
