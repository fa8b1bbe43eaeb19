"""LightGCN: embeddings propagated over the current block's normalised user-item graph."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.api import Interactions
from models.graph import to_csr
from models.members.base import Member


def bipartite_halves(inter: Interactions, n_users: int, n_items: int) -> tuple[Tensor, Tensor]:
    """The two non-zero blocks of ``models.graph.normalized_adjacency``: the (U, I) matrix
    B = D_u^-1/2 R D_i^-1/2 of the distinct (user, item) pairs and its (I, U) transpose, both
    sparse CSR float32. A = [[0, B], [B^T, 0]], so A @ [x_u; x_i] = [B x_i; B^T x_u]."""
    keys = torch.unique(inter.users.long() * n_items + inter.items.long())
    users, items = keys // n_items, keys % n_items
    user_norm = torch.bincount(users, minlength=n_users).float().rsqrt()
    item_norm = torch.bincount(items, minlength=n_items).float().rsqrt()
    values = user_norm[users] * item_norm[items]

    def csr(rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> Tensor:
        coo = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, shape, device=values.device, check_invariants=False
        )
        return to_csr(coo.coalesce())

    return csr(users, items, (n_users, n_items)), csr(items, users, (n_items, n_users))


class _PairedSpmm(torch.autograd.Function):
    """matrix @ x whose backward is transpose @ grad with the transpose given, not derived:
    torch's own backward of a CSR product transposes the sparse matrix on every call (~5x
    the cost of the forward product on CPU)."""

    @staticmethod
    def forward(ctx, matrix: Tensor, transpose: Tensor, x: Tensor) -> Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad)


def paired_spmm(matrix: Tensor, transpose: Tensor, x: Tensor) -> Tensor:
    """matrix (M, N) sparse @ x (N, d) -> (M, d); ``transpose`` is matrix^T (N, M)."""
    return _PairedSpmm.apply(matrix, transpose, x)


class LightGCN(Member):
    """LightGCN with ``n_layers`` propagation layers; final = mean of layers 0..n_layers.

    The graph is built from the interactions passed to ``set_graph`` only (the current block's
    train split, as in the code); inactive users/items are isolated nodes whose final embedding is
    ego / (n_layers + 1). Before any ``set_graph`` call the graph is empty.

    Propagation uses the two off-diagonal blocks of the symmetric normalised adjacency
    (``bipartite_halves``): the same sums as A @ [x_u; x_i], without stacking the tables into
    one (U+I, d) tensor and splitting it again (and their full-size backward copies).
    """

    kind = "lightgcn"

    def __init__(self, n_users: int, n_items: int, dim: int, seed: int = 0, n_layers: int = 2):
        super().__init__(n_users, n_items, dim, seed)
        self.n_layers = n_layers
        self.graph_train = Interactions.empty()
        self._adjacency: tuple[Tensor, Tensor] | None = None

    def set_graph(self, train: Interactions) -> None:
        self.graph_train = Interactions(train.users.long().clone(), train.items.long().clone())
        self._invalidate()

    def _invalidate(self) -> None:
        super()._invalidate()
        self._adjacency = None  # rebuilt lazily: sizes may change after set_graph (grow)

    def halves(self) -> tuple[Tensor, Tensor]:
        """(B (U, I), B^T (I, U)) of the graph interactions at the current sizes, on the
        member's device."""
        if self._adjacency is None:
            g = self.graph_train.to(self.device)
            if len(g) and (
                int(g.users.max()) >= self.n_users or int(g.items.max()) >= self.n_items
            ):
                raise ValueError("graph interactions exceed the tables; grow() the member first")
            self._adjacency = bipartite_halves(g, self.n_users, self.n_items)
        return self._adjacency

    def layer_embeddings(self) -> list[tuple[Tensor, Tensor]]:
        user_item, item_user = self.halves()
        users, items = self.user_table.weight, self.item_table.weight
        layers = [(users, items)]
        for _ in range(self.n_layers):
            users, items = (
                paired_spmm(user_item, item_user, items),
                paired_spmm(item_user, user_item, users),
            )
            layers.append((users, items))
        return layers

    def _combine(self, layers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        # Running sums, not a (L+1, n, d) stack.
        users, items = layers[0]
        for layer_users, layer_items in layers[1:]:
            users, items = users + layer_users, items + layer_items
        return users / len(layers), items / len(layers)

    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        state["graph_users"] = self.graph_train.users.clone()
        state["graph_items"] = self.graph_train.items.clone()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.graph_train = Interactions(state["graph_users"].clone(), state["graph_items"].clone())
        super().set_extra_state(state)
