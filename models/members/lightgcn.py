"""LightGCN: embeddings propagated over the current block's normalised user-item graph."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.api import Interactions
from models.graph import normalized_adjacency
from models.members.base import Member


class LightGCN(Member):
    """LightGCN with ``n_layers`` propagation layers; final = mean of layers 0..n_layers.

    The graph is built from the interactions passed to ``set_graph`` only (the current block's
    train split, as in the code); inactive users/items are isolated nodes whose final embedding is
    ego / (n_layers + 1). Before any ``set_graph`` call the graph is empty.
    """

    kind = "lightgcn"

    def __init__(self, n_users: int, n_items: int, dim: int, seed: int = 0, n_layers: int = 2):
        super().__init__(n_users, n_items, dim, seed)
        self.n_layers = n_layers
        self.graph_train = Interactions.empty()
        self._adjacency: Tensor | None = None

    def set_graph(self, train: Interactions) -> None:
        self.graph_train = Interactions(train.users.long().clone(), train.items.long().clone())
        self._invalidate()

    def _invalidate(self) -> None:
        super()._invalidate()
        self._adjacency = None  # rebuilt lazily: sizes may change after set_graph (grow)

    def adjacency(self) -> Tensor:
        """Sparse (U+I, U+I) D^-1/2 A D^-1/2 of the graph interactions at the current sizes."""
        if self._adjacency is None:
            g = self.graph_train
            if len(g) and (
                int(g.users.max()) >= self.n_users or int(g.items.max()) >= self.n_items
            ):
                raise ValueError("graph interactions exceed the tables; grow() the member first")
            self._adjacency = normalized_adjacency(g, self.n_users, self.n_items)
        return self._adjacency

    def layer_embeddings(self) -> list[tuple[Tensor, Tensor]]:
        adjacency = self.adjacency()
        x = torch.cat([self.user_table.weight, self.item_table.weight])
        layers = [x]
        for _ in range(self.n_layers):
            x = torch.sparse.mm(adjacency, x)
            layers.append(x)
        return [(layer[: self.n_users], layer[self.n_users :]) for layer in layers]

    def _combine(self, layers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        users = torch.stack([u for u, _ in layers]).mean(0)
        items = torch.stack([i for _, i in layers]).mean(0)
        return users, items

    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        state["graph_users"] = self.graph_train.users.clone()
        state["graph_items"] = self.graph_train.items.clone()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.graph_train = Interactions(state["graph_users"].clone(), state["graph_items"].clone())
        super().set_extra_state(state)
