"""Negative sampling never returns positives or excluded items."""

from __future__ import annotations

import torch

from models.api import Interactions
from models.data import user_item_lists
from models.sampling import forbidden_keys, sample_negatives

# user 0 positives {0, 1, 2}, user 1 positives {5}; 6 items
POSITIVES = user_item_lists(Interactions(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 5])), 2)
# exclusion list covers user 0 only: item 3 (-1 = padding)
EXCLUSION = torch.tensor([[3, -1]])


def test_negatives_avoid_positives_and_exclusions() -> None:
    users = torch.tensor([0, 1, 2] * 500)
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(users, 6, POSITIVES, EXCLUSION, 3, gen)
    assert neg.shape == (1500, 3) and neg.dtype == torch.long
    assert set(neg[users == 0].flatten().tolist()) == {4, 5}
    assert set(neg[users == 1].flatten().tolist()) == {0, 1, 2, 3, 4}  # exclusion not for user 1
    assert set(neg[users == 2].flatten().tolist()) == set(range(6))  # beyond the CSR: anything


def test_precomputed_forbidden_keys_and_determinism() -> None:
    users = torch.tensor([0, 1] * 100)
    keys = forbidden_keys(6, POSITIVES, EXCLUSION)
    assert keys.tolist() == [0, 1, 2, 3, 6 + 5]
    a = sample_negatives(users, 6, None, None, 2, torch.Generator().manual_seed(1), forbidden=keys)
    b = sample_negatives(users, 6, POSITIVES, EXCLUSION, 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_user_with_everything_forbidden_terminates() -> None:
    everything = user_item_lists(Interactions(torch.zeros(3, dtype=torch.long), torch.arange(3)), 1)
    neg = sample_negatives(torch.tensor([0]), 3, everything, None, 1, max_rounds=5)
    assert neg.shape == (1, 1)
