"""GET/POST /recommendations and GET /items/{id}/similar against hand-worked rankings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from contracts.event_log import SqliteEventLog
from contracts.events import InteractionEvent
from contracts.model_store import FileModelStore
from tests.service.conftest import make_snapshot, wait_until


def ranking(body: dict) -> list[tuple[str, float]]:
    return [(entry["item_id"], pytest.approx(entry["score"], abs=1e-6)) for entry in body["items"]]


def test_known_user_gets_exact_top_k(ready_client: TestClient) -> None:
    response = ready_client.get("/recommendations/u1", params={"k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == "u1"
    assert body["model_version"] == 1
    assert body["strategy"] == "personalized"
    assert ranking(body) == [("i3", 1.2), ("i1", 1.0), ("i4", 0.5)]


def test_seen_items_from_the_log_are_excluded(
    client_factory: Callable[[], TestClient],
    store: FileModelStore,
    event_log: SqliteEventLog,
) -> None:
    # u0 interacted with its two best items before the server started: read back by the tailer.
    event_log.append([InteractionEvent(user_id="u0", item_id=i) for i in ("i2", "i3")])
    store.publish(make_snapshot())
    client = client_factory()
    wait_until(lambda: client.get("/health/ready").status_code == 200)
    body = client.get("/recommendations/u0", params={"k": 10}).json()
    assert ranking(body) == [("i0", 1.0), ("i1", 0.1), ("i4", 0.05)]
    # With exclusion off, everything comes back, best first.
    body = client.get("/recommendations/u0", params={"k": 2, "exclude_seen": "false"}).json()
    assert ranking(body) == [("i2", 2.0), ("i3", 1.1)]


def test_events_appended_while_serving_are_excluded(
    ready_client: TestClient, event_log: SqliteEventLog
) -> None:
    # Another producer writes to the log directly; the tailer must pick it up.
    event_log.append([InteractionEvent(user_id="u1", item_id="i3")])

    def top_item() -> str:
        return ready_client.get("/recommendations/u1", params={"k": 1}).json()["items"][0][
            "item_id"
        ]

    wait_until(lambda: top_item() == "i1")


def test_unknown_user_is_folded_in_from_its_first_event(ready_client: TestClient) -> None:
    """No event: the popular items. After one event on i3 = (1, 1) the user is folded in
    (service.fold_in, alpha 10, lambda 10 x trace / d over the five items): u = (0.1589,
    0.1729), so i2 0.318 > i1 0.173 > i0 0.159 > i4 0.086, with i3 itself excluded at once."""
    body = ready_client.get("/recommendations/stranger", params={"k": 3}).json()
    assert body["strategy"] == "popular"
    assert ranking(body) == [("i0", 5.0), ("i3", 4.0), ("i2", 3.0)]
    assert ready_client.post("/events", json={"user_id": "stranger", "item_id": "i3"}).json() == {
        "accepted": 1
    }
    body = ready_client.get("/recommendations/stranger", params={"k": 3}).json()
    assert body["strategy"] == "fold_in"
    assert ranking(body) == [
        ("i2", pytest.approx(0.3178, abs=1e-4)),
        ("i1", pytest.approx(0.1729, abs=1e-4)),
        ("i0", pytest.approx(0.1589, abs=1e-4)),
    ]


def test_events_only_on_items_the_model_lacks_leave_the_popular_items(
    ready_client: TestClient,
) -> None:
    ready_client.post("/events", json={"user_id": "stranger", "item_id": "brand-new"})
    body = ready_client.get("/recommendations/stranger", params={"k": 2}).json()
    assert body["strategy"] == "popular"
    assert ranking(body) == [("i0", 5.0), ("i3", 4.0)]


def test_k_larger_than_the_unseen_catalogue_returns_what_is_left(
    ready_client: TestClient,
) -> None:
    ready_client.post("/events", json=[{"user_id": "u1", "item_id": i} for i in ("i0", "i1", "i2")])
    body = ready_client.get("/recommendations/u1", params={"k": 1000}).json()
    assert ranking(body) == [("i3", 1.2), ("i4", 0.5)]


@pytest.mark.parametrize("k", [0, -1, 1001, 10**9])
def test_k_out_of_range_is_422(ready_client: TestClient, k: int) -> None:
    response = ready_client.get("/recommendations/u0", params={"k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]
    response = ready_client.post("/recommendations", json={"user_ids": ["u0"], "k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "k"]
    response = ready_client.get("/items/i0/similar", params={"k": k})
    assert response.status_code == 422


def test_batch_mixes_strategies(ready_client: TestClient) -> None:
    response = ready_client.post(
        "/recommendations", json={"user_ids": ["u0", "nobody", "u1"], "k": 2}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == 1
    results = body["results"]
    assert [r["user_id"] for r in results] == ["u0", "nobody", "u1"]
    assert [r["strategy"] for r in results] == ["personalized", "popular", "personalized"]
    assert ranking(results[0]) == [("i2", 2.0), ("i3", 1.1)]
    assert ranking(results[1]) == [("i0", 5.0), ("i3", 4.0)]
    assert ranking(results[2]) == [("i3", 1.2), ("i1", 1.0)]


def test_batch_requires_users(ready_client: TestClient) -> None:
    response = ready_client.post("/recommendations", json={"user_ids": []})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "user_ids"]


def test_similar_items_by_cosine(ready_client: TestClient) -> None:
    # i0 = (1, 0): cos with i2 (2, 0) = 1, with i3 (1, 1) = 1/sqrt(2), with i1 and i4 = 0.
    body = ready_client.get("/items/i0/similar", params={"k": 2}).json()
    assert body["item_id"] == "i0"
    assert body["model_version"] == 1
    assert ranking(body) == [("i2", 1.0), ("i3", 2**-0.5)]
    body = ready_client.get("/items/i0/similar", params={"k": 50}).json()
    assert len(body["items"]) == 4  # everything but i0 itself
    assert ready_client.get("/items/nope/similar").status_code == 404


def test_no_model_yet_is_503(client_factory: Callable[[], TestClient]) -> None:
    client = client_factory()
    response = client.get("/recommendations/u0")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert client.post("/recommendations", json={"user_ids": ["u0"]}).status_code == 503
    assert client.get("/items/i0/similar").status_code == 503
    assert client.get("/model").status_code == 503


def test_ids_with_a_slash_are_reachable_as_such_and_percent_encoded(
    client_factory: Callable[[], TestClient], store: FileModelStore
) -> None:
    # The event contract accepts any id of 1..256 characters, "/" included: every such id
    # must be reachable by the GET routes (they were 404, even percent-encoded).
    snapshot = make_snapshot()
    snapshot.user_ids = ["team/u0", "u1"]
    snapshot.item_ids = ["i0", "a/b", "i2/", "/i3", "i4"]
    store.publish(snapshot)
    client = client_factory()
    wait_until(lambda: client.get("/health/ready").status_code == 200)
    posted = client.post("/events", json={"user_id": "team/u0", "item_id": "i2/"})
    assert posted.status_code == 202
    for path in ("/recommendations/team/u0", "/recommendations/team%2Fu0"):
        body = client.get(path, params={"k": 2}).json()
        assert (body["user_id"], body["strategy"]) == ("team/u0", "personalized")
        assert ranking(body) == [("/i3", 1.1), ("i0", 1.0)]  # "i2/" (2.0) was seen
    for path in ("/items/a/b/similar", "/items/a%2Fb/similar"):
        response = client.get(path, params={"k": 1})
        assert response.status_code == 200, response.text
        assert response.json()["item_id"] == "a/b"
        assert response.json()["items"][0]["item_id"] == "i4"  # same direction as a/b
    assert client.get("/items/i2//similar", params={"k": 1}).json()["item_id"] == "i2/"
    metrics = client.get("/metrics").text
    assert 'route="/recommendations/{user_id}",status="200"} 2.0' in metrics
