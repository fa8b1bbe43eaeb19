"""Outcome attribution: hits by recommendation_id and by (user, item) within the window, counted
once, per version and arm, in a bounded index; and through the app (POST /events, Kafka)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from contracts.event_log import KafkaEventLog
from contracts.events import InteractionEvent
from contracts.model_store import RedisModelStore
from contracts.settings import Settings
from service.app import create_app
from service.attribution import Attribution
from service.impressions import Impression
from service.metrics import ServiceMetrics
from tests.service.conftest import make_snapshot, wait_until

WINDOW_S = 100.0
T0 = 1_000_000.0


def _index(max_impressions: int = 100) -> Attribution:
    return Attribution(ServiceMetrics(), WINDOW_S, 3600.0, max_impressions)


def _shown(
    rid: str,
    user: str | None,
    items: tuple[str, ...],
    version: int = 1,
    at: float = T0,
    arm: str = "default",
) -> Impression:
    return Impression(rid, user, items, version, arm, at)


def _add(index: Attribution, *impressions: Impression) -> None:
    index._evict = lambda now: None  # type: ignore[method-assign]  # fixed clock in these tests
    index.add(impressions)


def test_user_item_event_in_the_window_is_a_hit_once() -> None:
    index = _index()
    _add(index, _shown("a", "u1", ("i1", "i2")))
    assert index.observe([("u1", "i2", None)], now=T0 + 10) == 1
    assert index.observe([("u1", "i2", None), ("u1", "i3", None)], now=T0 + 11) == 0
    assert index.observe([("u1", "i1", None)], now=T0 + WINDOW_S + 1) == 0  # too late
    assert index.observe([("u2", "i1", None)], now=T0 + 5) == 0  # another user
    row = index.stats(now=T0 + 20)["total"]
    assert (row["impressions"], row["shown"], row["hit_impressions"], row["hits"]) == (1, 2, 1, 1)
    assert row["hit_rate"] == 1.0 and row["ctr"] == 0.5


def test_last_touch_and_events_before_the_impression() -> None:
    index = _index()
    _add(
        index,
        _shown("old", "u1", ("i1",), version=1),
        _shown("new", "u1", ("i1",), version=2, at=T0 + 50),
    )
    assert index.observe([("u1", "i1", None)], now=T0 + 40) == 1  # before "new": goes to "old"
    assert index.observe([("u1", "i1", None)], now=T0 + 60) == 1  # now the newest, "new"
    versions = {row["version"]: row["hits"] for row in index.stats(now=T0 + 60)["versions"]}
    assert versions == {1: 1, 2: 1}


def test_recommendation_id_matches_only_its_own_impression() -> None:
    index = _index()
    _add(
        index,
        _shown("a", "u1", ("i1",), version=1),
        _shown("b", "u1", ("i1",), version=2),
        _shown("sim", None, ("i7",), version=2),
    )
    assert index.observe([("u1", "i1", "a")], now=T0 + 1) == 1  # not the newest "b"
    assert index.observe([("u2", "i1", "b")], now=T0 + 1) == 0  # another user's id
    assert index.observe([("u1", "i9", "b")], now=T0 + 1) == 0  # an item it did not show
    assert index.observe([("u1", "i1", "elsewhere")], now=T0 + 1) == 0  # no fallback
    assert index.observe([("u5", "i7", "sim")], now=T0 + 1) == 1  # similar items: any user
    by_version = {row["version"]: row["hit_impressions"] for row in index.stats(now=T0)["versions"]}
    assert by_version == {1: 1, 2: 1}


def test_arms_are_counted_apart_with_intervals() -> None:
    index = _index()
    _add(
        index,
        *[_shown(f"a{n}", f"u{n}", ("i1",), arm="a") for n in range(10)],
        *[_shown(f"b{n}", f"v{n}", ("i1",), arm="b") for n in range(10)],
    )
    index.observe([(f"u{n}", "i1", None) for n in range(2)], now=T0 + 1)
    index.observe([(f"v{n}", "i1", None) for n in range(9)], now=T0 + 1)
    arms = {row["arm"]: row for row in index.stats(now=T0 + 1)["arms"]}
    assert (arms["a"]["hit_rate"], arms["b"]["hit_rate"]) == (0.2, 0.9)
    assert arms["a"]["hit_rate_ci95"][1] < arms["b"]["hit_rate_ci95"][0]


def test_index_is_bounded_by_count_and_window() -> None:
    index = _index(max_impressions=3)
    index.add([_shown(f"r{n}", f"u{n % 2}", ("i1",), at=1e12 + n) for n in range(5)])  # future
    assert index.stats()["impressions_indexed"] == 3
    assert index.observe([("u0", "i1", "r0")], now=1e12 + 5) == 0  # evicted
    assert index.observe([("u0", "i1", "r4")], now=1e12 + 5) == 1
    stale = _index()
    stale.add([_shown("s", "u1", ("i1",), at=1.0)])  # far older than the window
    assert stale.stats()["impressions_indexed"] == 0


def test_events_posted_with_the_id_count_for_the_served_version(ready_client: TestClient) -> None:
    answer = ready_client.get("/recommendations/u0", params={"k": 2}).json()
    item = answer["items"][1]["item_id"]
    event = {"user_id": "u0", "item_id": item, "recommendation_id": answer["recommendation_id"]}
    assert ready_client.post("/events", json=event).status_code == 202

    def hits() -> int:
        return ready_client.get("/stats/online").json()["total"]["hit_impressions"]

    wait_until(lambda: hits() == 1)
    (row,) = ready_client.get("/stats/online").json()["versions"]
    assert (row["version"], row["arm"], row["impressions"], row["hits"]) == (1, "default", 1, 1)
    metrics = ready_client.get("/metrics").text
    assert 'ccd_impression_hits_total{arm="default"} 1.0' in metrics
    assert 'ccd_online_hit_rate{arm="default",version="1"} 1.0' in metrics
    assert 'ccd_attributed_events_total{arm="default",match="id"} 1.0' in metrics


def test_invalid_recommendation_id_is_a_422(ready_client: TestClient) -> None:
    for bad in ["", "has space", "x" * 65, 12]:
        event = {"user_id": "u0", "item_id": "i1", "recommendation_id": bad}
        response = ready_client.post("/events", json=event)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "recommendation_id"]


def test_recommendation_id_round_trips_through_kafka(service_settings: Settings) -> None:
    store = RedisModelStore(
        service_settings.redis_url, service_settings.redis_prefix, service_settings.keep_versions
    )
    log = KafkaEventLog(service_settings)
    try:
        store.publish(make_snapshot())
        with TestClient(create_app(service_settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 60.0)
            answer = client.get("/recommendations/u1", params={"k": 3}).json()
            rid, item = answer["recommendation_id"], answer["items"][0]["item_id"]
            # A producer writing to Kafka directly, not through the server.
            log.append([InteractionEvent(user_id="u1", item_id=item, recommendation_id=rid)])
            online = lambda: client.get("/stats/online").json()["total"]  # noqa: E731
            wait_until(lambda: online()["hits"] == 1, 60.0)
            state = client.app.state.service  # type: ignore[attr-defined]
            kept = state.impressions.store.recent(5)
            assert [imp.recommendation_id for imp in kept] == [rid]
    finally:
        log.close()
        store.close()
