"""Initial embeddings for the users/items first seen in a block (ccd-method.md §3.4b).

For a new user u with R the binary block-k train matrix (users x items):
- one hop: h1(u) = mean of the OLD items' embeddings u interacted with (0 if none);
- two hop: N2(u) = old users sharing a block-k train item with u; the k_init most popular
  (block-k train degree) members of N2(u), filled up with the globally most popular old users
  when |N2(u)| < k_init (and nothing to fill when |N2(u)| == k_init, the "fill 0" fix);
  h2(u) = mean of their embeddings;
- e_u = (h1 + h2) / 2. New items symmetrically, with R transposed.

All of it is sparse products plus one top-k per chunk of new entities: no Python loop per entity
and no dense (U+I)^2 or U x U matrix.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from models.api import Interactions
from models.device import randn
from models.members.base import Member

InitMode = Literal["two_hop", "one_hop", "random"]


def _binary_csr(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """Binary sparse CSR (n_rows, n_cols) of the distinct (row, col) pairs."""
    keys = torch.unique(rows.long() * n_cols + cols.long())
    coo = torch.sparse_coo_tensor(
        torch.stack([keys // n_cols, keys % n_cols]),
        torch.ones(keys.numel(), device=keys.device),
        (n_rows, n_cols),
        device=keys.device,
        check_invariants=False,
    )
    return coo.coalesce()


def side_init(
    rows: Tensor,
    cols: Tensor,
    n_rows: int,
    n_cols: int,
    n_old_rows: int,
    n_old_cols: int,
    row_table: Tensor,
    col_table: Tensor,
    k_init: int = 20,
    only_one_hop: bool = False,
    fill_quirk: bool = False,
    chunk: int = 256,
) -> Tensor:
    """Init rows for the new entities n_old_rows..n_rows-1 of one side.

    Args:
        rows, cols: (nnz,) block-k train pairs (row side id, column side id).
        n_rows, n_cols: current sizes; n_old_rows, n_old_cols: sizes before the block.
        row_table: (n_old_rows, d) old embeddings of the row side (the two-hop neighbours).
        col_table: (n_old_cols, d) old embeddings of the column side (the one-hop neighbours).
        k_init: neighbours averaged in the two-hop term (20 in the code).
        only_one_hop: return h1 alone (the code's ``--only_one_hop``).
        fill_quirk: reproduce the code's off-by-one, where |N2| == k_init averages ALL old rows.

    Returns:
        (n_rows - n_old_rows, d) initial embeddings.
    """
    n_new = n_rows - n_old_rows
    dim = row_table.shape[1]
    if n_new <= 0:
        return row_table.new_zeros(0, dim)
    r = _binary_csr(rows, cols, n_rows, n_cols)
    idx, val = r.indices(), r.values()
    # One hop: mean over the new row's OLD columns.
    is_new_old = (idx[0] >= n_old_rows) & (idx[1] < n_old_cols)
    new_rows = idx[0, is_new_old] - n_old_rows
    sums = row_table.new_zeros(n_new, dim).index_add(0, new_rows, col_table[idx[1, is_new_old]])
    degree = torch.bincount(new_rows, minlength=n_new).to(row_table.dtype)
    one_hop = sums / degree.clamp(min=1).unsqueeze(1)
    if only_one_hop:
        return one_hop
    two_hop = _two_hop(r, idx, val, n_rows, n_old_rows, row_table, k_init, fill_quirk, chunk)
    return (one_hop + two_hop) / 2


def _two_hop(
    r: Tensor,
    idx: Tensor,
    val: Tensor,
    n_rows: int,
    n_old_rows: int,
    row_table: Tensor,
    k_init: int,
    fill_quirk: bool,
    chunk: int,
) -> Tensor:
    n_new = n_rows - n_old_rows
    if n_old_rows == 0:
        return row_table.new_zeros(n_new, row_table.shape[1])
    k = min(k_init, n_old_rows)
    # Popularity = block-k train degree; rank 0 = least popular (stable: ties by id).
    popularity = torch.bincount(idx[0], minlength=n_rows)[:n_old_rows]
    device = idx.device
    rank = torch.empty(n_old_rows, dtype=torch.long, device=device)
    rank[torch.argsort(popularity, stable=True)] = torch.arange(n_old_rows, device=device)
    # Old-row side of R, transposed once: (n_cols, n_old_rows).
    old = idx[0] < n_old_rows
    r_old_t = torch.sparse_coo_tensor(
        torch.stack([idx[1, old], idx[0, old]]),
        val[old],
        (r.shape[1], n_old_rows),
        device=val.device,
        check_invariants=False,
    ).coalesce()
    out = []
    for start in range(n_old_rows, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        sel = (idx[0] >= start) & (idx[0] < stop)
        r_new = torch.sparse_coo_tensor(
            torch.stack([idx[0, sel] - start, idx[1, sel]]),
            val[sel],
            (stop - start, r.shape[1]),
            device=val.device,
            check_invariants=False,
        )
        with warnings.catch_warnings():  # sparse x sparse goes through beta CSR kernels
            warnings.simplefilter("ignore", UserWarning)
            shared = torch.sparse.mm(r_new, r_old_t).to_dense() > 0  # (chunk, n_old): N2
        # Members of N2 outrank every non-member; within each group the more popular wins. So
        # one top-k gives: the k most popular of N2 if |N2| >= k, else all of N2 plus the most
        # popular others (nothing extra when |N2| == k), else the k most popular overall.
        key = rank.unsqueeze(0) + shared.long() * n_old_rows
        chosen = torch.topk(key, k, dim=1).indices
        h2 = row_table[chosen].mean(1)
        if fill_quirk:
            exact = shared.sum(1) == k_init
            h2[exact] = row_table.mean(0)
        out.append(h2)
    return torch.cat(out)


def init_new_entities(
    train: Interactions,
    n_users_old: int,
    n_items_old: int,
    n_users: int,
    n_items: int,
    user_table: Tensor,
    item_table: Tensor,
    mode: InitMode = "two_hop",
    k_init: int = 20,
    fill_quirk: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Initial rows for the new users and items of a block.

    Args:
        train: the block's train interactions (the neighbourhoods use this block only).
        user_table, item_table: (n_users_old, d) / (n_items_old, d) old ego embeddings.
        mode: "two_hop" (CCD), "one_hop" (h1 only) or "random" (N(0, 0.01)).

    Returns:
        (n_users - n_users_old, d) user rows and (n_items - n_items_old, d) item rows.
    """
    user_table, item_table = user_table.detach(), item_table.detach()
    train = train.to(user_table.device)
    dim = user_table.shape[1]
    if mode == "random":
        device = user_table.device  # drawn on the CPU (``models.device``)
        new_u = randn((n_users - n_users_old, dim), generator, device) * 0.01
        new_i = randn((n_items - n_items_old, dim), generator, device) * 0.01
        return new_u, new_i
    one_hop = mode == "one_hop"
    users, items = train.users.long(), train.items.long()
    new_u = side_init(
        users,
        items,
        n_users,
        n_items,
        n_users_old,
        n_items_old,
        user_table,
        item_table,
        k_init,
        one_hop,
        fill_quirk,
    )
    new_i = side_init(
        items,
        users,
        n_items,
        n_users,
        n_items_old,
        n_users_old,
        item_table,
        user_table,
        k_init,
        one_hop,
        fill_quirk,
    )
    return new_u, new_i


def grow_member(
    member: Member,
    train: Interactions,
    n_users: int,
    n_items: int,
    mode: InitMode = "two_hop",
    k_init: int = 20,
    fill_quirk: bool = False,
    generator: torch.Generator | None = None,
) -> None:
    """Grow ``member`` to (n_users, n_items) (never shrinking), new rows from
    ``init_new_entities`` on its ego tables. Members without tables (Mult-VAE) just grow."""
    n_users, n_items = max(n_users, member.n_users), max(n_items, member.n_items)
    if not hasattr(member, "user_table"):
        member.grow(n_users, member.n_items)
        return
    user_init, item_init = init_new_entities(
        train,
        member.n_users,
        member.n_items,
        n_users,
        n_items,
        member.user_table.weight,
        member.item_table.weight,
        mode,
        k_init,
        fill_quirk,
        generator,
    )
    member.grow(n_users, n_items, user_init, item_init)
