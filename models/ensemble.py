"""HetComp-style rank ensemble of member scorers (ccd-method.md §2.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models.metrics import Scorer, SizedScorer


def ranks_descending(scores: Tensor) -> Tensor:
    """0-based position of each item in its row's descending order, shape (B, I).

    Ties keep index order (stable sort), so the result is deterministic.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1]).expand_as(order)
    return ranks.scatter_(1, order, positions)


def rank_ensemble_scorer(member_scorers: Sequence[Scorer], power: float = 0.05) -> Scorer:
    """Scorer of the ensemble: mean over members of (1 / (rank + 1)) ** power, shape (B, I).

    The caller chunks users; each call holds one (B, I) block per member at a time. If every
    member scorer knows its sizes (``SizedScorer``), so does the result (the smallest ones).
    """
    if not member_scorers:
        raise ValueError("an ensemble needs at least one member")

    def score(users: Tensor) -> Tensor:
        total = None
        for scorer in member_scorers:
            part = (1.0 / (ranks_descending(scorer(users)).float() + 1.0)).pow(power)
            total = part if total is None else total + part
        return total / len(member_scorers)

    if all(isinstance(s, SizedScorer) for s in member_scorers):
        n_users = min(s.n_users for s in member_scorers)
        n_items = min(s.n_items for s in member_scorers)
        return SizedScorer(score, n_users, n_items)
    return score
