"""Ranking metrics and continual aggregation against hand-worked values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.api import Embeddings, Interactions
from models.data import user_item_lists
from models.metrics import (
    ContinualMatrix,
    SizedScorer,
    embedding_scorer,
    la_ra_hmean,
    ranking_metrics,
    topk_items,
)

# user 0 ranks items 0,1,2,3,4; user 1 ranks 4,3,2,1,0
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])


def table_scorer(table: torch.Tensor = SCORES) -> SizedScorer:
    return SizedScorer(lambda users: table[users], table.shape[0], table.shape[1])


def inter(pairs: list[tuple[int, int]]) -> Interactions:
    if not pairs:
        return Interactions.empty()
    users, items = zip(*pairs, strict=True)
    return Interactions(torch.tensor(users), torch.tensor(items))


TEST = inter([(0, 2), (0, 4), (1, 4)])
TRAIN = inter([(0, 0)])
L3, L5 = math.log2(3), math.log2(5)


def test_recall_ndcg_precision_by_hand() -> None:
    r = ranking_metrics(table_scorer(), TEST, [TRAIN], ks=(2, 4))
    # user 0, item 0 excluded: top-2 = [1, 2] (hit at rank 2), top-4 = [1, 2, 3, 4] (ranks 2, 4)
    # user 1: top = [4, ...], hit at rank 1
    assert r["users"] == 2
    assert r["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert r["p@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert r["ndcg@2"] == pytest.approx(((1 / L3) / (1 + 1 / L3) + 1) / 2)
    assert r["recall@4"] == pytest.approx((1 + 1) / 2)
    assert r["ndcg@4"] == pytest.approx(((1 / L3 + 1 / L5) / (1 + 1 / L3) + 1) / 2)


def test_exclusion_changes_the_ranking() -> None:
    without = ranking_metrics(table_scorer(), TEST, [], ks=(2,))
    # user 0 top-2 = [0, 1]: no hit; user 1 unchanged
    assert without["recall@2"] == pytest.approx(0.5)
    # an excluded ground-truth item can never be hit but still counts in |GT|
    r = ranking_metrics(table_scorer(), TEST, [inter([(0, 2)])], ks=(4,))
    # user 0 ranking without item 2: [0, 1, 3, 4] -> one hit of two
    assert r["recall@4"] == pytest.approx((0.5 + 1) / 2)


def test_users_beyond_the_model_and_user_filter() -> None:
    test = inter([(0, 2), (0, 4), (1, 4), (7, 1)])
    r = ranking_metrics(table_scorer(), test, [TRAIN], ks=(2,))  # scorer has 2 users
    assert r["users"] == 2
    only_new = ranking_metrics(table_scorer(), test, [TRAIN], ks=(2,), users=torch.tensor([1]))
    assert only_new["users"] == 1 and only_new["recall@2"] == pytest.approx(1.0)
    plain = ranking_metrics(lambda u: SCORES[u], TEST, [TRAIN], ks=(2,), n_users=1)
    assert plain["users"] == 1 and plain["recall@2"] == pytest.approx(0.5)


def test_duplicate_ground_truth_counts_once_and_k_beyond_catalogue() -> None:
    r = ranking_metrics(table_scorer(), inter([(1, 4), (1, 4)]), [], ks=(2, 10))
    assert r["recall@2"] == pytest.approx(1.0)
    assert r["ndcg@10"] == pytest.approx(1.0)


def test_empty_evaluation_gives_zeros() -> None:
    r = ranking_metrics(table_scorer(), Interactions.empty(), [], ks=(20,))
    assert r == {"recall@20": 0.0, "ndcg@20": 0.0, "p@20": 0.0, "users": 0}


def test_chunking_gives_the_same_result() -> None:
    g = torch.Generator().manual_seed(0)
    emb = Embeddings(torch.randn(50, 4, generator=g), torch.randn(30, 4, generator=g))
    test = Interactions(
        torch.randint(0, 60, (300,), generator=g), torch.randint(0, 30, (300,), generator=g)
    )
    train = Interactions(
        torch.randint(0, 50, (300,), generator=g), torch.randint(0, 30, (300,), generator=g)
    )
    full = ranking_metrics(embedding_scorer(emb), test, [train], ks=(5, 10), chunk=1024)
    chunked = ranking_metrics(embedding_scorer(emb), test, [train], ks=(5, 10), chunk=7)
    in_model = torch.unique(test.users[test.users < 50]).numel()
    assert full["users"] == chunked["users"] == in_model
    for key in full:
        assert chunked[key] == pytest.approx(full[key], abs=1e-12)
    users = torch.arange(50)
    csr = user_item_lists(train, 50)
    assert torch.equal(
        topk_items(embedding_scorer(emb), users, 6, csr, chunk=3),
        topk_items(embedding_scorer(emb), users, 6, csr, chunk=100),
    )


def test_topk_masks_exclusions() -> None:
    csr = user_item_lists(inter([(0, 0), (0, 2)]), 1)
    top = topk_items(table_scorer(), torch.tensor([0, 1]), 3, csr)
    assert top.tolist() == [[1, 3, 4], [4, 3, 2]]


R = {0: {0: 0.5}, 1: {0: 0.4, 1: 0.3}, 2: {0: 0.2, 1: 0.4, 2: 0.25}}


def test_la_ra_hmean_both_conventions() -> None:
    la, ra, h = la_ra_hmean(R, 2, include_d0=False)
    assert (la, ra) == (pytest.approx((0.3 + 0.25) / 2), pytest.approx(0.4))
    assert h == pytest.approx(2 * 0.275 * 0.4 / 0.675)
    la, ra, h = la_ra_hmean(R, 2, include_d0=True)
    assert (la, ra) == (pytest.approx((0.5 + 0.3 + 0.25) / 3), pytest.approx(0.3))
    assert h == pytest.approx(2 * 0.35 * 0.3 / 0.65)
    assert math.isnan(la_ra_hmean(R, 1, include_d0=False)[1])
    assert la_ra_hmean(R, 1, include_d0=True)[1] == pytest.approx(0.4)


def test_continual_matrix_round_trips_through_json() -> None:
    matrix = ContinualMatrix()
    for k, row in R.items():
        for j, value in row.items():
            matrix.record(k, j, {"recall@20": value, "ndcg@20": value / 2})
    restored = ContinualMatrix.from_dict(json.loads(json.dumps(matrix.to_dict())))
    assert restored.values == matrix.values
    assert restored.get("ndcg@20", 2, 1) == pytest.approx(0.2)
    assert restored.get("ndcg@20", 0, 2) is None
    assert restored.metrics == ["ndcg@20", "recall@20"] and restored.last_block == 2
    summary = restored.summary("recall@20", include_d0=True)
    assert summary[2] == la_ra_hmean(R, 2, include_d0=True)
