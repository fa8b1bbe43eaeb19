"""Seen items in Redis (``service.seen_store``, ``service.indexer``) on the real Redis and Kafka:
the sets and their counters, an app with ``CCD_SEEN_STORE=redis`` (a posted event excluded at
once, a produced one once the indexer has read it, ready without any replay), and a Redis outage
answered 503 with Retry-After, never with a list that could hold seen items."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from contracts.event_log import KafkaEventLog
from contracts.events import InteractionEvent
from contracts.model_store import RedisModelStore
from contracts.settings import Settings
from service.app import create_app
from service.indexer import SeenIndexer, open_indexer_consumer
from service.metrics import SEEN_COUNTS_MAX_AGE_S
from service.seen_store import RedisSeenIndex, SeenUnavailable, seen_key
from tests.faults.harness import OwnRedis
from tests.service.conftest import make_snapshot, wait_until

# make_snapshot(): u0 ranks i2 i3 i0 i1 i4.
U0_RANKING = ["i2", "i3", "i0", "i1", "i4"]


def top(client: TestClient, user: str = "u0", **params: object) -> list[str]:
    response = client.get(f"/recommendations/{user}", params={"k": 5, **params})
    assert response.status_code == 200, response.text
    return [entry["item_id"] for entry in response.json()["items"]]


@pytest.fixture
def redis_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"seen_store": "redis", "reload_poll_s": 0.1})


@pytest.fixture
def indexer(redis_settings: Settings) -> Iterator[threading.Event]:
    """``ccd indexer``'s loop in a thread over the test's topic; set the event to stop it."""
    stop = threading.Event()
    assert redis_settings.redis_url is not None
    index = RedisSeenIndex(redis_settings.redis_url, redis_settings.redis_prefix)
    consumer = open_indexer_consumer(redis_settings)
    thread = threading.Thread(target=SeenIndexer(consumer, index).run, args=(stop,), daemon=True)
    thread.start()
    yield stop
    stop.set()
    thread.join(10)
    consumer.close(autocommit=False)
    index.close()


def test_sets_per_user_are_idempotent_read_in_order_and_counted(
    redis_url: str, unique_name: str
) -> None:
    index = RedisSeenIndex(redis_url, unique_name)
    try:
        assert index.add([("u{1}", "a"), ("u{1}", "b"), ("v", "a")]) == 3
        assert index.add([("u{1}", "a"), ("v", "c")]) == 1  # SADD: a pair twice is one member
        assert index.items_of_many(["v", "nobody", "u{1}"]) == [
            frozenset({"a", "c"}),
            frozenset(),
            frozenset({"a", "b"}),
        ]
        assert (index.n_users, index.n_pairs) == (2, 4)
        assert index.knows_item("c") and not index.knows_item("d")
        raw = redis.Redis.from_url(redis_url, decode_responses=True)
        assert raw.type(seen_key(unique_name, "u{1}")) == "set"
        assert seen_key(unique_name, "u{1}").endswith(":seen:{u%7B1%7D}")  # the hash tag
        raw.close()
    finally:
        index.close()


def metric(client: TestClient, name: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_the_seen_gauges_report_the_counts_in_redis(redis_settings: Settings) -> None:
    assert redis_settings.redis_url is not None
    index = RedisSeenIndex(redis_settings.redis_url, redis_settings.redis_prefix)
    store = RedisModelStore(redis_settings.redis_url, redis_settings.redis_prefix)
    try:
        index.add([("a", "x"), ("a", "y"), ("b", "x")])  # as ccd indexer writes them
        store.publish(make_snapshot())
        with TestClient(create_app(redis_settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30.0)
            assert (metric(client, "ccd_seen_users"), metric(client, "ccd_seen_pairs")) == (2, 3)
            client.post("/events", json={"user_id": "c", "item_id": "x"})  # 1 user, 1 pair more
            index.add([("a", "z")])  # another writer: 1 pair more
            wait_until(lambda: metric(client, "ccd_seen_pairs") == 5, SEEN_COUNTS_MAX_AGE_S + 5)
            assert metric(client, "ccd_seen_users") == 3
            ops = client.get("/dashboard/api/overview").json()["ops"]
            assert (ops["seen_users"], ops["seen_pairs"]) == (3, 5)
    finally:
        store.close()
        index.close()


def test_an_unreachable_redis_is_seen_unavailable_then_fails_fast(unique_name: str) -> None:
    index = RedisSeenIndex("redis://127.0.0.1:1/0", unique_name, timeout_s=0.2)
    with pytest.raises(SeenUnavailable) as first:
        index.items_of_many(["u0"])
    assert first.value.retry_after_s >= 1
    started = time.monotonic()
    with pytest.raises(SeenUnavailable, match="failed recently"):
        index.items_of("u0")  # the breaker is open: no round trip
    assert time.monotonic() - started < 0.05
    index.close()


def test_redis_seen_store_needs_kafka_and_redis(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CCD_SEEN_STORE=redis needs"):
        Settings(
            seen_store="redis",
            data_dir=tmp_path,
            redis_url="redis://x",
            kafka_bootstrap_servers=None,
        )


def test_posted_events_are_excluded_at_once_and_produced_ones_via_the_indexer(
    redis_settings: Settings, indexer: threading.Event
) -> None:
    assert redis_settings.redis_url is not None
    store = RedisModelStore(redis_settings.redis_url, redis_settings.redis_prefix)
    log = KafkaEventLog(redis_settings)
    try:
        store.publish(make_snapshot())
        with TestClient(create_app(redis_settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30.0)
            assert client.get("/health/ready").json()["seen_caught_up"] is True
            assert top(client) == U0_RANKING
            # POSTed to this server: excluded by the very next request.
            assert client.post("/events", json={"user_id": "u0", "item_id": "i2"}).status_code
            assert top(client) == ["i3", "i0", "i1", "i4"]
            assert top(client, exclude_seen="false") == U0_RANKING
            # Produced to Kafka behind the server's back: excluded once the indexer wrote it.
            log.append([InteractionEvent(user_id="u0", item_id="i3")])
            wait_until(lambda: top(client) == ["i0", "i1", "i4"], 30.0)
            # Outcome attribution still reads every event (from the server's start on).
            hits = lambda: client.get("/stats/online").json()["total"]["hits"]  # noqa: E731
            wait_until(lambda: hits() == 2, 30.0)  # i2 (posted) and i3 (produced), shown to u0
            batch = client.post("/recommendations", json={"user_ids": ["u0", "u1"], "k": 2})
            assert [[e["item_id"] for e in r["items"]] for r in batch.json()["results"]] == [
                ["i0", "i1"],
                ["i3", "i1"],
            ]
            # An unknown user is folded in from their items in Redis.
            client.post("/events", json={"user_id": "new", "item_id": "i1"})
            answer = client.get("/recommendations/new", params={"k": 2}).json()
            assert answer["strategy"] == "fold_in" and "i1" not in {
                e["item_id"] for e in answer["items"]
            }
            # No pair is held in the server.
            state = client.app.state.service  # type: ignore[attr-defined]
            assert isinstance(state.seen, RedisSeenIndex)
    finally:
        log.close()
        store.close()


def test_a_redis_outage_is_503_with_retry_after_never_a_list_with_seen_items(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    own = OwnRedis(tmp_path)
    own.start()
    try:
        settings = Settings(
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic=unique_name,
            kafka_dead_letter_topic=f"{unique_name}.dead-letter",
            redis_url=own.url,
            redis_prefix=unique_name,
            data_dir=tmp_path / "data",
            seen_store="redis",
            seen_timeout_s=0.3,
        )
        publisher = RedisModelStore(own.url, unique_name)
        publisher.publish(make_snapshot())
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30.0)
            client.post("/events", json={"user_id": "u0", "item_id": "i2"})
            assert top(client) == ["i3", "i0", "i1", "i4"]
            own.kill()
            for path, params in [
                ("/recommendations/u0", {}),  # the fast lane
                ("/recommendations/u0", {"exclude_seen": "yes", "k": 2}),  # the route
                ("/recommendations/u0", {"exclude": "i4"}),  # the lane, filtered
            ]:
                response = client.get(path, params=params)
                assert response.status_code == 503, (params, response.text)
                assert int(response.headers["retry-after"]) >= 1
                assert "seen-items store" in response.json()["detail"]
            batch = client.post("/recommendations", json={"user_ids": ["u0", "u1"]})
            assert batch.status_code == 503 and "retry-after" in batch.headers
            for path in ("/items/only-in-events", "/dashboard/api/users/u0"):
                assert client.get(path).status_code == 503, path  # not 404, not 500
            # Nothing to read for a known user without exclusion: still answered.
            assert top(client, exclude_seen="false") == U0_RANKING
            own.start()  # the append-only file keeps the set
            time.sleep(2.1)  # the breaker's cool-down
            wait_until(lambda: client.get("/recommendations/u0").status_code == 200, 30.0)
            assert top(client) == ["i3", "i0", "i1", "i4"]
        publisher.close()
    finally:
        own.stop()


def test_the_indexer_resumes_at_its_commit_and_names_records_retention_deleted_unread(
    redis_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaAdminClient, TopicPartition

    assert redis_settings.redis_url is not None
    index = RedisSeenIndex(redis_settings.redis_url, redis_settings.redis_prefix)
    log = KafkaEventLog(redis_settings)
    stop = threading.Event()

    def index_until(users: int) -> None:
        consumer = open_indexer_consumer(redis_settings)
        indexer = SeenIndexer(consumer, index)
        deadline = time.monotonic() + 60
        while index.n_users != users:
            assert time.monotonic() < deadline, index.n_users
            indexer.step(stop)
        consumer.close(autocommit=False)

    try:
        log.append([InteractionEvent(user_id=f"a{n}", item_id="i") for n in range(5)])
        index_until(5)  # a new group: from the partition's start
        # While no indexer runs, 5 events arrive and retention deletes them, then 5 more.
        log.append([InteractionEvent(user_id=f"b{n}", item_id="i") for n in range(5)])
        admin = KafkaAdminClient(bootstrap_servers=redis_settings.kafka_bootstrap_servers)
        admin.delete_records({TopicPartition(redis_settings.kafka_topic, 0): 10})
        admin.close()
        log.append([InteractionEvent(user_id=f"c{n}", item_id="i") for n in range(5)])
        with caplog.at_level(logging.INFO, logger="service.indexer"):
            index_until(10)
        assert "records 5..9 of" in caplog.text and "deleted by retention" in caplog.text
        assert index.items_of_many(["a0", "b0", "c4"]) == [
            frozenset({"i"}),
            frozenset(),  # lost to retention, and said so
            frozenset({"i"}),
        ]
        assert index.n_pairs == 10  # each pair counted once
    finally:
        log.close()
        index.close()
