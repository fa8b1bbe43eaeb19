"""Vectorised uniform negative sampling with rejection of positives and exclusion lists."""

from __future__ import annotations

import torch
from torch import Tensor

from models.api import BlockData
from models.data import CSR, user_item_lists
from models.device import rand, randint


def forbidden_keys(n_items: int, positives_csr: CSR | None, exclusion: Tensor | None) -> Tensor:
    """Sorted unique keys user * n_items + item of every (user, item) a negative must avoid, on
    the device of ``positives_csr`` (else of ``exclusion``; else the CPU)."""
    device = (
        positives_csr[0].device
        if positives_csr is not None
        else exclusion.device
        if exclusion is not None
        else torch.device("cpu")
    )
    parts = [torch.empty(0, dtype=torch.long, device=device)]
    if positives_csr is not None:
        indptr, indices = positives_csr
        counts = indptr[1:] - indptr[:-1]
        users = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
        inside = indices < n_items
        parts.append(users[inside] * n_items + indices[inside])
    if exclusion is not None and exclusion.numel():
        exclusion = exclusion.to(device)
        rows = torch.arange(exclusion.shape[0], device=device).unsqueeze(1).expand_as(exclusion)
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
        (n, n_neg) long item ids, on the device of ``users`` (drawn on the CPU).
    """
    if forbidden is None:
        forbidden = forbidden_keys(n_items, positives_csr, exclusion)
    device = users.device
    user_keys = users.long().unsqueeze(1) * n_items
    negatives = randint(0, n_items, (users.numel(), n_neg), generator, device)
    redo = _is_forbidden(user_keys + negatives, forbidden)
    for _ in range(max_rounds):
        n_redo = int(redo.sum())
        if n_redo == 0:
            break
        negatives[redo] = randint(0, n_items, (n_redo,), generator, device)
        redo = _is_forbidden(user_keys + negatives, forbidden)
    return negatives


def mix_hard_negatives(
    users: Tensor,
    negatives: Tensor,
    hard: CSR,
    rate: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``negatives`` (n, m) with the first column replaced, with probability ``rate``, by one of
    the user's explicit negatives (a dislike, an impression without a click) where the user
    has any: the pairs the user told us about are harder and surer than uniform draws.

    Args:
        users: (n,) user ids, one per row of ``negatives``.
        hard: ``(indptr, indices)`` of each user's explicit negatives (users beyond it: none).

    >>> hard = (torch.tensor([0, 0, 2]), torch.tensor([7, 9]))  # user 1 dislikes 7 and 9
    >>> out = mix_hard_negatives(torch.tensor([0, 1]), torch.tensor([[3], [4]]), hard, 1.0)
    >>> out[0].item(), out[1].item() in (7, 9)
    (3, True)
    """
    indptr, indices = hard
    n_rows = indptr.numel() - 1
    known = users.long().clamp(max=max(n_rows - 1, 0))
    counts = torch.where(users.long() < n_rows, indptr[known + 1] - indptr[known], 0)
    draw = rand((users.numel(),), generator, users.device)
    chosen = (counts > 0) & (draw < rate)
    if not bool(chosen.any()):
        return negatives
    pick = rand((users.numel(),), generator, users.device)
    slot = indptr[known] + (pick * counts).long().clamp(max=(counts - 1).clamp(min=0))
    out = negatives.clone()
    column = out[:, 0] if out.dim() == 2 else out
    column[chosen] = indices[slot[chosen]].to(out.dtype)
    return out


def explicit_negatives(block: BlockData) -> CSR | None:
    """``block.negatives`` as per-user lists (``mix_hard_negatives``'s ``hard``), or None."""
    if len(block.negatives) == 0:
        return None
    return user_item_lists(block.negatives, block.n_users)
