"""Vectorised uniform negative sampling with rejection of positives and exclusion lists."""

from __future__ import annotations

import torch
from torch import Tensor

from models.data import CSR


def forbidden_keys(n_items: int, positives_csr: CSR | None, exclusion: Tensor | None) -> Tensor:
    """Sorted unique keys user * n_items + item of every (user, item) a negative must avoid."""
    parts = [torch.empty(0, dtype=torch.long)]
    if positives_csr is not None:
        indptr, indices = positives_csr
        counts = indptr[1:] - indptr[:-1]
        users = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        inside = indices < n_items
        parts.append(users[inside] * n_items + indices[inside])
    if exclusion is not None and exclusion.numel():
        rows = torch.arange(exclusion.shape[0]).unsqueeze(1).expand_as(exclusion)
        valid = (exclusion >= 0) & (exclusion < n_items)
        parts.append(rows[valid] * n_items + exclusion[valid].long())
    return torch.unique(torch.cat(parts))


def _is_forbidden(keys: Tensor, sorted_keys: Tensor) -> Tensor:
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


def sample_negatives(
    users: Tensor,
    n_items: int,
    positives_csr: CSR | None,
    exclusion: Tensor | None,
    n_neg: int,
    generator: torch.Generator | None = None,
    max_rounds: int = 100,
    forbidden: Tensor | None = None,
) -> Tensor:
    """Uniform negatives in [0, n_items) per user, resampling those that hit forbidden items.

    Args:
        users: (n,) user ids (one row per positive interaction).
        positives_csr: ``(indptr, indices)`` of each user's positives (users beyond it: none).
        exclusion: (U_ex, m) item ids to avoid for users < U_ex; -1 = padding.
        forbidden: precomputed ``forbidden_keys(n_items, positives_csr, exclusion)`` to reuse
            across epochs (then ``positives_csr`` / ``exclusion`` are ignored).
        max_rounds: a user whose every item is forbidden keeps a forbidden draw after this many
            rounds instead of looping forever.

    Returns:
        (n, n_neg) long item ids.
    """
    if forbidden is None:
        forbidden = forbidden_keys(n_items, positives_csr, exclusion)
    user_keys = users.long().unsqueeze(1) * n_items
    negatives = torch.randint(0, n_items, (users.numel(), n_neg), generator=generator)
    redo = _is_forbidden(user_keys + negatives, forbidden)
    for _ in range(max_rounds):
        n_redo = int(redo.sum())
        if n_redo == 0:
            break
        negatives[redo] = torch.randint(0, n_items, (n_redo,), generator=generator)
        redo = _is_forbidden(user_keys + negatives, forbidden)
    return negatives
