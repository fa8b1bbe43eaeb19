"""Rank ensemble on a hand-worked 1 x 3 example."""

from __future__ import annotations

import pytest
import torch

from models.ensemble import rank_ensemble_scorer
from models.metrics import SizedScorer


def direct_rank_ensemble(member_scores: list[torch.Tensor], power: float) -> torch.Tensor:
    """The formula itself: ranks from a stable sort, mean of (1 / (rank + 1)) ** power."""
    total = torch.zeros_like(member_scores[0])
    for scores in member_scores:
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        positions = torch.arange(scores.shape[1]).expand_as(order)
        ranks = torch.empty_like(order).scatter_(1, order, positions)
        total += (1.0 / (ranks.float() + 1.0)).pow(power)
    return total / len(member_scores)


def test_ties_rank_by_item_id() -> None:
    tied = torch.tensor([[1.0, 1.0, 0.0]])  # ranks 0, 1, 2
    got = rank_ensemble_scorer([lambda u: tied[u]], power=1.0)(torch.tensor([0]))
    assert got[0].tolist() == pytest.approx([1.0, 1 / 2, 1 / 3])


def test_matches_the_formula_on_random_scores_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    members = [torch.randint(0, 6, (7, 40), generator=g).float() for _ in range(3)]  # many ties
    scorer = rank_ensemble_scorer([lambda u, m=m: m[u] for m in members], power=0.05)
    users = torch.arange(7)
    assert torch.allclose(scorer(users), direct_rank_ensemble(members, 0.05), rtol=0, atol=2e-7)


@pytest.mark.parametrize("power", [1.0, 0.05])
def test_rank_ensemble_one_user_three_items(power: float) -> None:
    a = torch.tensor([[3.0, 1.0, 2.0]])  # ranks 0, 2, 1
    b = torch.tensor([[1.0, 2.0, 3.0]])  # ranks 2, 1, 0
    scorer = rank_ensemble_scorer([lambda u: a[u], lambda u: b[u]], power=power)
    got = scorer(torch.tensor([0]))
    expected = [
        (1.0 + (1 / 3) ** power) / 2,
        ((1 / 3) ** power + (1 / 2) ** power) / 2,
        ((1 / 2) ** power + 1.0) / 2,
    ]
    assert got.shape == (1, 3)
    assert got[0].tolist() == pytest.approx(expected)


def test_sized_members_give_a_sized_ensemble() -> None:
    scores = torch.randn(4, 5)
    member = SizedScorer(lambda u: scores[u], 4, 5)
    ensemble = rank_ensemble_scorer([member, SizedScorer(lambda u: scores[u], 3, 5)])
    assert isinstance(ensemble, SizedScorer) and ensemble.n_users == 3
    # one member repeated: the ensemble orders items exactly like it
    order = torch.argsort(ensemble(torch.arange(3)), dim=1, descending=True)
    assert torch.equal(order, torch.argsort(scores[:3], dim=1, descending=True))


def test_no_users_give_an_empty_score_matrix() -> None:
    scores = torch.randn(4, 5)
    ensemble = rank_ensemble_scorer([SizedScorer(lambda u: scores[u], 4, 5)] * 2)
    assert ensemble(torch.empty(0, dtype=torch.long)).shape == (0, 5)
