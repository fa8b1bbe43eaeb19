"""Normalised adjacency values on hand-worked graphs."""

from __future__ import annotations

import math

import torch

from models.api import Interactions
from models.graph import normalized_adjacency


def test_two_by_two_values() -> None:
    # edges u0-i0, u0-i1, u1-i0 (u0-i0 twice: counted once); degrees u0=2, u1=1, i0=2, i1=1
    inter = Interactions(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 0, 0]))
    adj = normalized_adjacency(inter, 2, 2)
    assert adj.layout == torch.sparse_csr and adj.shape == (4, 4)
    h = 1 / math.sqrt(2)
    # node order: u0, u1, i0, i1
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.5, h],
            [0.0, 0.0, h, 0.0],
            [0.5, h, 0.0, 0.0],
            [h, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.allclose(adj.to_dense(), expected)


def test_zero_degree_nodes_have_zero_rows() -> None:
    inter = Interactions(torch.tensor([0]), torch.tensor([1]))
    dense = normalized_adjacency(inter, 3, 2).to_dense()
    assert dense[0, 4] == 1.0 and dense[4, 0] == 1.0  # degrees 1 and 1
    assert dense.abs().sum() == 2.0  # everything else (users 1, 2, item 0) is zero


def test_empty_graph() -> None:
    adj = normalized_adjacency(Interactions.empty(), 2, 3)
    assert adj.shape == (5, 5) and adj.to_dense().abs().sum() == 0
