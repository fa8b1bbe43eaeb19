"""Rank ensemble on a hand-worked 1 x 3 example."""

from __future__ import annotations

import pytest
import torch

from models.ensemble import rank_ensemble_scorer, ranks_descending
from models.metrics import SizedScorer


def test_ranks_are_positions_in_descending_order() -> None:
    assert ranks_descending(torch.tensor([[3.0, 1.0, 2.0]])).tolist() == [[0, 2, 1]]
    assert ranks_descending(torch.tensor([[1.0, 1.0, 0.0]])).tolist() == [[0, 1, 2]]  # stable


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
