"""ServingModel against a brute-force reference on random embeddings."""

from __future__ import annotations

import numpy as np
import pytest

import service.ranking
from contracts.model_store import ModelSnapshot
from service.ranking import ServingModel, top_indices


def random_model(n_users: int = 40, n_items: int = 300, dim: int = 8) -> ServingModel:
    rng = np.random.default_rng(0)
    return ServingModel.from_snapshot(
        ModelSnapshot(
            user_ids=[f"u{u}" for u in range(n_users)],
            item_ids=[f"i{i}" for i in range(n_items)],
            user_embeddings=rng.standard_normal((n_users, dim)).astype(np.float32),
            item_embeddings=rng.standard_normal((n_items, dim)).astype(np.float32),
            item_popularity=rng.integers(0, 50, n_items).astype(np.float32),
            meta={"version": 4},
        )
    )


def reference_top_k(model: ServingModel, user: str, k: int, exclude: set[str]) -> list[str]:
    users = model.user_vectors
    items = model.item_matrix
    scores = items.astype(np.float64) @ users[model.user_index[user]].astype(np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    return [model.item_ids[i] for i in order if model.item_ids[i] not in exclude][:k]


@pytest.mark.parametrize("chunk_scores", [16 * 1024 * 1024, 300 * 3])  # one chunk / 3 users each
def test_batch_matches_brute_force(monkeypatch: pytest.MonkeyPatch, chunk_scores: int) -> None:
    monkeypatch.setattr(service.ranking, "_MAX_BATCH_SCORES", chunk_scores)
    model = random_model()
    rng = np.random.default_rng(1)
    users = [f"u{u}" for u in range(0, 40, 3)] + ["stranger"]
    excludes = [
        {f"i{i}" for i in rng.choice(300, size=rng.integers(0, 60), replace=False)} | {"unknown"}
        for _ in users
    ]
    results = model.recommend_many(users, 25, excludes)
    for user, exclude, ranked in zip(users[:-1], excludes, results, strict=False):
        assert ranked.strategy == "personalized"
        assert ranked.item_ids == reference_top_k(model, user, 25, exclude)
        scores = model.item_matrix @ model.user_vectors[model.user_index[user]]
        expected = [scores[model.item_index[i]] for i in ranked.item_ids]
        np.testing.assert_allclose(ranked.scores, expected, rtol=1e-5, atol=1e-5)
    popular = results[-1]
    assert popular.strategy == "popular"
    allowed = [i for i in np.argsort(-model.popularity, kind="stable").tolist()]
    expected = [model.item_ids[i] for i in allowed if model.item_ids[i] not in excludes[-1]][:25]
    assert popular.item_ids == expected
    assert popular.scores == [float(model.popularity[model.item_index[i]]) for i in expected]


def test_everything_seen_leaves_nothing() -> None:
    model = random_model(n_users=2, n_items=5)
    everything = set(model.item_ids)
    assert model.recommend("u0", 3, everything).item_ids == []
    assert model.recommend("nobody", 3, everything).item_ids == []


def test_similar_is_cosine_without_the_item_itself() -> None:
    model = random_model()
    items = model.item_matrix.astype(np.float64)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    cosine = unit @ unit[7]
    cosine[7] = -np.inf
    expected = [model.item_ids[i] for i in np.argsort(-cosine)[:10]]
    ranked = model.similar("i7", 10)
    assert ranked.item_ids == expected
    np.testing.assert_allclose(ranked.scores, np.sort(cosine)[::-1][:10], rtol=1e-5)
    with pytest.raises(KeyError):
        model.similar("nope", 3)


def test_similar_breaks_ties_by_the_lower_item_index() -> None:
    # Items 0..11 point two ways (cosine 1 with i0 or 0); the 5 zero vectors score 0 too.
    items = np.zeros((17, 2), dtype=np.float32)
    items[:12:2] = [1.0, 1.0]
    items[1:12:2] = [2.0, -2.0]
    model = ServingModel.from_snapshot(
        ModelSnapshot(
            user_ids=["a"],
            item_ids=[f"i{i}" for i in range(17)],
            user_embeddings=np.ones((1, 2), dtype=np.float32),
            item_embeddings=items,
            item_popularity=np.zeros(17, dtype=np.float32),
        )
    )
    ranked = model.similar("i0", 16)
    assert ranked.item_ids == [f"i{i}" for i in [2, 4, 6, 8, 10, 1, 3, 5, 7, 9, *range(11, 17)]]
    np.testing.assert_allclose(ranked.scores, [1.0] * 5 + [0.0] * 11, atol=1e-6)


def test_precomputed_state_shares_the_snapshot_memory() -> None:
    rng = np.random.default_rng(2)
    items = rng.standard_normal((50, 4)).astype(np.float32)
    snapshot = ModelSnapshot(
        user_ids=["a"],
        item_ids=[f"i{i}" for i in range(50)],
        user_embeddings=np.ones((1, 4), dtype=np.float32),
        item_embeddings=items,
        item_popularity=np.zeros(50, dtype=np.float32),
    )
    users = snapshot.user_embeddings
    model = ServingModel.from_snapshot(snapshot)
    assert np.shares_memory(model.user_vectors, users)  # no copy of the user table
    assert model.item_matrix.T.flags.c_contiguous  # one column-major copy for the fast GEMV
    assert np.array_equal(model.item_matrix, items)


@pytest.mark.parametrize("seed", range(30))
def test_top_indices_is_a_stable_descending_sort_prefix(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 2_000))
    scores = rng.integers(-5, 6, n).astype(np.float32)  # heavy ties
    if seed % 3 == 0:
        scores = rng.standard_normal(n).astype(np.float32)
    if seed % 5 == 0:
        scores[rng.random(n) < 0.5] = -np.inf  # excluded items
    finite = int(np.isfinite(scores).sum())
    for depth in {1, 20, 50, finite}:
        if 1 <= depth <= finite:
            expected = np.argsort(-scores, kind="stable")[:depth]
            assert top_indices(scores, depth).tolist() == expected.tolist()


def test_single_user_matches_brute_force() -> None:
    model = random_model(n_items=3_000)
    rng = np.random.default_rng(3)
    for u in range(0, 40, 7):
        exclude = {f"i{i}" for i in rng.choice(3_000, size=100, replace=False)}
        ranked = model.recommend(f"u{u}", 30, exclude)
        assert ranked.item_ids == reference_top_k(model, f"u{u}", 30, exclude)
