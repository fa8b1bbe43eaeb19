"""ServingModel with an approximate item index (service.ann): the same answers as the exact scan
where the index finds everything, used only above CCD_ANN_MIN_ITEMS, and filters and exclusions
never violated whatever the index proposes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import service.ann
from contracts.model_store import ModelSnapshot
from service.ann import build_item_index
from service.ranking import RankOptions, ServingModel

pytest.importorskip("faiss", reason="faiss-cpu is a pinned dependency; ANN tests need it")

N_USERS, N_ITEMS, DIM = 30, 2000, 8


def snapshot(n_items: int = N_ITEMS, seed: int = 0) -> ModelSnapshot:
    rng = np.random.default_rng(seed)
    return ModelSnapshot(
        user_ids=[f"u{u}" for u in range(N_USERS)],
        item_ids=[f"i{i}" for i in range(n_items)],
        user_embeddings=rng.standard_normal((N_USERS, DIM)).astype(np.float32),
        item_embeddings=rng.standard_normal((n_items, DIM)).astype(np.float32),
        item_popularity=rng.integers(0, 50, n_items).astype(np.float32),
        meta={"version": 1},
    )


@pytest.fixture(scope="module")
def exact() -> ServingModel:
    return ServingModel.from_snapshot(snapshot())


@pytest.fixture(scope="module")
def complete(exact: ServingModel) -> ServingModel:
    """The same version with an index that probes every list: recall 1 by construction."""
    index = build_item_index(exact.item_matrix, 1, probe_fraction=1.0)
    assert index is not None
    return dataclasses.replace(exact, ann=index)


@pytest.fixture(scope="module")
def approximate() -> ServingModel:
    """The same version with the default index (visits a few lists: approximate)."""
    model = ServingModel.from_snapshot(snapshot(), ann_min_items=N_ITEMS)
    assert model.ann is not None
    return model


def same(left: list, right: list) -> None:
    for a, b in zip(left, right, strict=True):
        assert a.item_ids == b.item_ids and a.strategy == b.strategy
        assert a.scores == pytest.approx(b.scores, rel=1e-5, abs=1e-5)


def test_the_index_is_built_only_at_or_above_the_threshold() -> None:
    assert ServingModel.from_snapshot(snapshot(), ann_min_items=N_ITEMS + 1).ann is None
    assert ServingModel.from_snapshot(snapshot(), ann_min_items=0).ann is None  # 0: off
    assert ServingModel.from_snapshot(snapshot(), ann_min_items=N_ITEMS).ann is not None


def test_without_faiss_the_model_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # import faiss fails
    assert not service.ann.faiss_available()
    assert ServingModel.from_snapshot(snapshot(), ann_min_items=1).ann is None


def test_complete_index_answers_like_the_exact_scan(
    exact: ServingModel, complete: ServingModel
) -> None:
    users = [f"u{u}" for u in range(N_USERS)] + ["new", "cold"]
    excludes = [[f"i{(u * 37 + j) % N_ITEMS}" for j in range(u % 5)] for u in range(len(users))]
    histories = [[]] * N_USERS + [["i3", "i70"], []]
    eligible = np.random.default_rng(5).random(N_ITEMS) < 0.5
    for options in (RankOptions(), RankOptions(eligible), RankOptions(diversity=0.5)):
        for k in (1, 10, 20):
            want = exact.recommend_many(users, k, excludes, options, histories)
            got = complete.recommend_many(users, k, excludes, options, histories)
            same(got, want)
    assert {r.strategy for r in got} == {"personalized", "fold_in", "popular"}


def test_the_index_answers_requests_it_can_fill(
    complete: ServingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    search = type(complete.ann).search

    def counted(self, vector, n):  # noqa: ANN001, ANN202
        calls.append(n)
        return search(self, vector, n)

    monkeypatch.setattr(type(complete.ann), "search", counted)
    complete.recommend("u1", 10)
    assert calls == [64]  # max(64, 2 * 10)
    calls.clear()
    complete.recommend("u1", 10, options=RankOptions(boost=np.ones(N_ITEMS, np.float32)))
    assert calls == []  # a boost re-orders what the index cannot know: the exact scan
    calls.clear()
    one_percent = np.zeros(N_ITEMS, dtype=bool)
    one_percent[::100] = True
    assert len(complete.recommend("u1", 10, options=RankOptions(one_percent)).item_ids) == 10
    assert calls == []  # 2000 candidates needed for 10 of 20 eligible: the exact scan


def test_refill_fetches_more_when_exclusions_eat_the_candidates(
    complete: ServingModel, exact: ServingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = complete.ann.search(complete.user_vectors[2], 64)
    excluded = [complete.item_ids[i] for i in first[:60]]  # 60 of the 64 first candidates
    calls: list[int] = []
    search = type(complete.ann).search
    monkeypatch.setattr(
        type(complete.ann), "search", lambda self, v, n: calls.append(n) or search(self, v, n)
    )
    # 2 * (10 + 60) = 140 fetched at first; exclusions are not known to the index
    got = complete.recommend("u2", 10, excluded)
    assert calls == [140]
    same([got], [exact.recommend("u2", 10, excluded)])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_filters_and_exclusions_are_never_violated(
    approximate: ServingModel, exact: ServingModel, data: st.DataObject
) -> None:
    share = data.draw(st.sampled_from([1.0, 0.5, 0.1, 0.01, 0.001]), label="eligible share")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    k = data.draw(st.integers(1, 60), label="k")
    diversity = data.draw(st.sampled_from([0.0, 0.0, 0.5]), label="diversity")
    rng = np.random.default_rng(seed)
    eligible = None if share == 1.0 else rng.random(N_ITEMS) < share
    excluded = {f"i{i}" for i in rng.choice(N_ITEMS, size=int(rng.integers(0, 300)))}
    user = data.draw(st.sampled_from(["u0", "u7", "u29", "stranger"]), label="user")
    history = [[f"i{int(rng.integers(N_ITEMS))}"]] if user == "stranger" else [[]]
    options = RankOptions(eligible, diversity=diversity)
    got = approximate.recommend_many([user], k, [excluded], options, history)[0]
    want = exact.recommend_many([user], k, [excluded], options, history)[0]
    rows = [approximate.item_index[item] for item in got.item_ids]
    assert not excluded & set(got.item_ids)
    assert eligible is None or all(eligible[rows])
    assert len(set(rows)) == len(rows) == len(want.item_ids)  # never shorter than exact
    vector = None
    if got.strategy == "fold_in":
        vector = approximate.fold_in(approximate.item_indices(history[0]))
    elif got.strategy == "personalized":
        vector = approximate.user_vectors[approximate.user_index[user]]
    if vector is not None and diversity == 0.0:  # exact scores, best first
        true = approximate.item_matrix[rows] @ vector
        assert got.scores == pytest.approx(true.tolist(), rel=1e-5, abs=1e-5)
        assert got.scores == sorted(got.scores, reverse=True)


@pytest.mark.parametrize("threshold", [5, 6])
def test_the_server_builds_the_index_from_its_settings_and_answers_through_it(
    client_factory, settings, store, threshold: int
) -> None:
    from tests.service.conftest import make_snapshot, wait_until

    settings.ann_min_items = threshold  # CCD_ANN_MIN_ITEMS; make_snapshot() has 5 items
    store.publish(make_snapshot())
    client = client_factory()
    wait_until(lambda: client.get("/health/ready").status_code == 200)
    model = client.app.state.service.holder.model
    assert (model.ann is not None) == (threshold <= 5)

    def top(k: int) -> list[str]:
        body = client.get("/recommendations/u0", params={"k": k}).json()
        return [entry["item_id"] for entry in body["items"]]

    assert top(2) == ["i2", "i3"]  # u0 scores i2 2.0, i3 1.1, i0 1.0, i1 0.1, i4 0.05
    assert client.delete("/items/i2").status_code in (200, 204)
    assert top(2) == ["i3", "i0"]  # a hidden item never comes back from the candidates
