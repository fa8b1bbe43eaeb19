"""Outages, for real: the test starts its own Kafka broker and its own redis-server, kills them
(SIGKILL) under a running server, and restarts them; the server is never restarted.

- Kafka down: POST /events answers 503 with Retry-After (never 500, never a 202 for an event that
  is not in the log), recommendations keep being served, and events are accepted again once the
  broker is back. Every event answered 202 is found in the topic afterwards.
- Redis down: the server keeps serving the model it has (and stays ready); it reports not-ready
  only while it has none; reloads resume once Redis is back.
- Catalogue (in Redis) unread at start: not ready, saying why, until it has been read once, so
  no list served before holds an item the catalogue hides.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition
from pydantic import SecretStr

from contracts.catalogue import RedisCatalogue
from contracts.events import InteractionEvent
from contracts.model_store import FileModelStore, RedisModelStore
from contracts.settings import Settings
from service.app import EVENT_LOG_COOLDOWN_S, create_app
from tests.faults.harness import OwnKafka, OwnRedis
from tests.service.conftest import make_snapshot, wait_until

pytestmark = pytest.mark.integration

# How long each outage is observed, and how long recovery may take.
OUTAGE_S = 3.0
RECOVERY_TIMEOUT_S = 60.0
# Longest answer of a POST /events while the breaker is open (no Kafka round trip at all).
FAST_503_S = 1.0
V1_U0_TOP2 = ["i2", "i3"]  # make_snapshot(): u0 ranks i2 i3 i0 i1 i4
V2_USERS = [[0.1, 1.0], [0.2, 1.0]]  # u0 ranks i3 i1 ...


def top2(client: TestClient, user: str = "u0") -> tuple[int, list[str]]:
    response = client.get(f"/recommendations/{user}", params={"k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], [entry["item_id"] for entry in body["items"]]


def read_topic(bootstrap: str, topic: str) -> list[InteractionEvent]:
    """Every event in the topic's single partition, from its start to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        events: list[InteractionEvent] = []
        deadline = time.monotonic() + 30
        while consumer.position(partition) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                events.extend(InteractionEvent.from_bytes(record.value) for record in records)
        return events
    finally:
        consumer.close()


class EventPoster:
    """Posts one event per call with a fresh ``event_id`` and remembers each answer."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.status_by_id: dict[str, int] = {}
        self.statuses: Counter[int] = Counter()

    def post(self) -> tuple[int, float, str | None]:
        n = len(self.status_by_id)
        event = {"user_id": f"user-{n % 3}", "item_id": f"item-{n}", "event_id": f"e-{n}"}
        started = time.monotonic()
        response = self.client.post("/events", json=event)
        elapsed = time.monotonic() - started
        self.status_by_id[event["event_id"]] = response.status_code
        self.statuses[response.status_code] += 1
        if response.status_code == 202:
            assert response.json() == {"accepted": 1}
        return response.status_code, elapsed, response.headers.get("retry-after")

    def ids_with(self, status: int) -> set[str]:
        return {event_id for event_id, got in self.status_by_id.items() if got == status}


def test_kafka_outage_is_503_with_retry_after_and_recovers_without_restart(
    tmp_path: Path, unique_name: str, figures: dict[str, Any]
) -> None:
    broker = OwnKafka(tmp_path)
    broker.start()
    try:
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap,
            kafka_topic=unique_name,
            kafka_dead_letter_topic=f"{unique_name}.dead-letter",
            redis_url=None,
            data_dir=tmp_path / "data",
            reload_poll_s=0.2,
        )
        store = FileModelStore(settings.model_store_dir)
        store.publish(make_snapshot())
        with TestClient(create_app(settings, store=store)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 60)
            poster = EventPoster(client)
            for _ in range(5):
                assert poster.post()[0] == 202

            broker.kill()
            # The first append waits for the producer's timeouts, then fails: 503.
            status, first_s, retry_after = poster.post()
            assert status == 503 and retry_after is not None and int(retry_after) >= 1
            # For the breaker's cooldown it answers at once, still 503 with Retry-After (then
            # one request probes Kafka again); recommendations and readiness are untouched.
            served_during = 0
            outage_end = time.monotonic() + 0.75 * EVENT_LOG_COOLDOWN_S
            while time.monotonic() < outage_end:
                status, elapsed, retry_after = poster.post()
                assert status == 503, status
                assert 1 <= int(retry_after or 0) <= EVENT_LOG_COOLDOWN_S + 1
                assert elapsed < FAST_503_S, elapsed
                assert top2(client) == (1, V1_U0_TOP2)
                assert client.get("/health/ready").status_code == 200
                served_during += 1
                time.sleep(0.05)

            broker.start()
            # A client that honours Retry-After gets its events in, with the same server.
            restarted_at = time.monotonic()
            while poster.post()[0] != 202:
                assert time.monotonic() - restarted_at < RECOVERY_TIMEOUT_S, poster.statuses
                time.sleep(0.2)
            recovery_s = time.monotonic() - restarted_at
            for _ in range(5):
                assert poster.post()[0] == 202
            metrics = client.get("/metrics").text
        assert set(poster.statuses) == {202, 503}, poster.statuses  # never 500
        logged = Counter(event.event_id for event in read_topic(broker.bootstrap, unique_name))
        accepted = poster.ids_with(202)
        assert accepted <= set(logged), accepted - set(logged)  # no 202 without the event
        refused_then_logged = poster.ids_with(503) & set(logged)
        rejected = f'ccd_events_rejected_total{{reason="unavailable"}} {poster.statuses[503]:.1f}'
        assert rejected in metrics
        figures.update(
            events_accepted=len(accepted),
            accepted_missing_from_topic=len(accepted - set(logged)),
            answered_503=poster.statuses[503],
            answered_500=poster.statuses[500],
            refused_but_logged=len(refused_then_logged),
            first_503_s=round(first_s, 1),
            recommendations_during_outage=served_during,
            accepted_again_after_restart_s=round(recovery_s, 1),
        )
    finally:
        broker.stop()


def test_redis_outage_keeps_the_served_model_and_reloads_resume(
    tmp_path: Path, unique_name: str, figures: dict[str, Any]
) -> None:
    redis = OwnRedis(tmp_path)
    redis.start()
    try:
        publisher = RedisModelStore(redis.url, unique_name)
        assert publisher.publish(make_snapshot()) == 1
        redis.kill()
        settings = Settings(
            kafka_bootstrap_servers=None,
            redis_url=redis.url,
            redis_prefix=unique_name,
            data_dir=tmp_path / "data",
            reload_poll_s=0.2,
            api_key=SecretStr("k"),
        )
        with TestClient(create_app(settings)) as client:
            # Started while Redis is down: alive, but not ready and no recommendations.
            assert client.get("/health/live").status_code == 200
            time.sleep(1.0)
            assert client.get("/health/ready").status_code == 503
            response = client.get("/recommendations/u0")
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1

            redis.start()  # the append-only file brings version 1 back
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30)
            assert top2(client) == (1, V1_U0_TOP2)

            redis.kill()
            served_during = 0
            outage_end = time.monotonic() + OUTAGE_S
            while time.monotonic() < outage_end:
                assert top2(client) == (1, V1_U0_TOP2)
                assert client.get("/health/ready").json()["status"] == "ready"
                served_during += 1
                time.sleep(0.02)
            admin = client.get("/admin/versions", headers={"X-API-Key": "k"})
            assert admin.status_code == 503 and "retry-after" in admin.headers
            failures = client.get("/metrics").text
            assert 'ccd_model_reload_failures_total{reason="store"}' in failures

            redis.start()
            assert publisher.publish(make_snapshot(V2_USERS)) == 2
            restarted_at = time.monotonic()
            wait_until(lambda: top2(client)[0] == 2, 30)
            assert top2(client) == (2, ["i3", "i1"])
            figures.update(
                recommendations_during_outage=served_during,
                outage_s=OUTAGE_S,
                reload_after_recovery_s=round(time.monotonic() - restarted_at, 1),
            )
        publisher.close()
    finally:
        redis.stop()


def test_a_server_is_not_ready_until_it_has_read_the_catalogue_once(
    tmp_path: Path, unique_name: str
) -> None:
    redis = OwnRedis(tmp_path)
    redis.start()
    try:
        catalogue = RedisCatalogue(redis.url, unique_name)
        catalogue.hide(["i2"])  # u0's first item is unavailable
        catalogue.close()
        redis.kill()
        settings = Settings(
            kafka_bootstrap_servers=None,
            redis_url=redis.url,
            redis_prefix=unique_name,
            data_dir=tmp_path / "data",
            reload_poll_s=0.2,
            catalogue_poll_s=0.2,
        )
        store = FileModelStore(tmp_path / "models")  # the model is there, the catalogue is not
        store.publish(make_snapshot())
        with TestClient(create_app(settings, store=store)) as client:
            wait_until(lambda: client.get("/health/ready").json()["seen_caught_up"], 30)
            wait_until(lambda: client.get("/health/ready").json()["model_version"] == 1, 30)
            time.sleep(1.0)  # a few catalogue polls fail
            ready = client.get("/health/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["catalogue_loaded"] is False
            assert ready.json()["reasons"] == [
                "the item catalogue has not been read yet (is its store reachable?)"
            ]
            redis.start()  # the append-only file brings the catalogue back
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30)
            assert client.get("/health/ready").json()["reasons"] == []
            assert top2(client) == (1, ["i3", "i0"])  # i2 hidden
            redis.kill()  # read once is enough: an outage later keeps the server ready
            time.sleep(0.5)
            assert client.get("/health/ready").status_code == 200
            assert top2(client) == (1, ["i3", "i0"])
    finally:
        redis.stop()


def test_a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # It used to log a warning every second and a traceback at every poll.
    redis = OwnRedis(tmp_path)
    redis.start()
    try:
        RedisModelStore(redis.url, unique_name).publish(make_snapshot())
        settings = Settings(
            kafka_bootstrap_servers=None,
            redis_url=redis.url,
            redis_prefix=unique_name,
            data_dir=tmp_path / "data",
            reload_poll_s=0.2,  # 15 polls and a few channel waits fail during the outage
        )
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30)
            with caplog.at_level(logging.DEBUG):
                redis.kill()
                time.sleep(OUTAGE_S)
                redis.start()
                wait_until(lambda: caplog.text.count("reachable again") >= 2, 30)
                metrics = client.get("/metrics").text
            assert client.get("/recommendations/u0").status_code == 200
    finally:
        redis.stop()
    # The model store's and the item catalogue's lines (both in Redis), one pair each: a
    # seen-items tailer left in this pytest process by an earlier fault test (whose Kafka it
    # stopped) may log about its own outage.
    lines = [
        r
        for r in caplog.records
        if r.name.startswith(("service", "contracts")) and r.name != "service.seen"
    ]
    for store in ("model store", "catalogue store"):
        shown = [
            r.getMessage()
            for r in lines
            if r.levelno >= logging.WARNING and r.getMessage().startswith(store)
        ]
        assert len(shown) == 2, shown
        assert shown[0].startswith(f"{store} unreachable (ConnectionError: ")
        assert shown[1].startswith(f"{store} reachable again after ")
    assert len([r for r in lines if r.levelno >= logging.WARNING]) == 4
    assert not any(r.exc_info for r in lines)  # no traceback
    assert "ccd_model_store_outages_total 1.0" in metrics
    failed = re.search(r'ccd_model_reload_failures_total\{reason="store"\} (\d+)', metrics)
    assert failed is not None and int(failed.group(1)) >= 5  # every attempt still counted
