"""Helpers shared by the model tests: a small synthetic stream and the held-out recall."""

from __future__ import annotations

import torch

from models.api import BlockData, Embeddings
from models.data import split_block
from models.metrics import embedding_scorer, ranking_metrics

N_BLOCKS, USERS0, ITEMS0, NEW_USERS, NEW_ITEMS = 3, 160, 100, 30, 15


def synthetic_stream(seed: int = 0) -> list[BlockData]:
    """Users pick 10 items each from softmax(2 u·i) of 4-d factors; later blocks bring new users
    and items and re-activate half of the old users."""
    g = torch.Generator().manual_seed(seed)
    users_f = torch.randn(USERS0 + NEW_USERS * N_BLOCKS, 4, generator=g)
    items_f = torch.randn(ITEMS0 + NEW_ITEMS * N_BLOCKS, 4, generator=g)
    blocks = []
    for k in range(N_BLOCKS):
        n_users, n_items = USERS0 + NEW_USERS * k, ITEMS0 + NEW_ITEMS * k
        if k == 0:
            active = torch.arange(n_users)
        else:
            old = torch.randperm(n_users - NEW_USERS, generator=g)[: USERS0 // 2]
            active = torch.cat([old, torch.arange(n_users - NEW_USERS, n_users)])
        probs = torch.softmax(2.0 * users_f[active] @ items_f[:n_items].T, 1)
        items = torch.multinomial(probs, 10, generator=g)
        users = active.unsqueeze(1).expand_as(items)
        blocks.append(split_block(users.flatten(), items.flatten(), n_users, n_items, k, seed + k))
    return blocks


def held_out_recall(student: Embeddings, block: BlockData) -> float:
    """Recall@20 of ``student`` on ``block``'s test split, its train and valid items excluded."""
    exclude = [block.train, block.valid]
    return ranking_metrics(embedding_scorer(student), block.test, exclude, (20,))["recall@20"]
