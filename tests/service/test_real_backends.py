"""The app on the real Kafka broker and redis-server that `make test` starts (skipped without).

Nothing is mocked: events go through Kafka and come back through the seen-items tailer; model
versions come from Redis, announced over its pub/sub channel.
"""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from contracts.event_log import KafkaEventLog
from contracts.events import InteractionEvent
from contracts.model_store import RedisModelStore
from contracts.settings import Settings
from service.app import create_app
from service.metrics import ServiceMetrics
from service.seen import KafkaSource, SeenItems, SeenTailer
from tests.service.conftest import make_snapshot, wait_until

TIMEOUT_S = 60.0


def test_kafka_tailer_reads_all_partitions_from_the_start(service_settings: Settings) -> None:
    log = KafkaEventLog(service_settings)  # creates the topic with several partitions
    users = [f"user-{n}" for n in range(6)]  # keyed by user: spread over the partitions
    log.append([InteractionEvent(user_id=user, item_id="first") for user in users])
    seen, metrics = SeenItems(), ServiceMetrics()
    source = lambda: KafkaSource(  # noqa: E731
        service_settings.kafka_bootstrap_servers, service_settings.kafka_topic
    )
    tailer = SeenTailer(source, seen, metrics)
    tailer.start()
    try:
        assert tailer.caught_up.wait(TIMEOUT_S)
        assert all(seen.items_of(user) == {"first"} for user in users)
        log.append_raw([b"not json"], [None])
        log.append([InteractionEvent(user_id=user, item_id="second") for user in users])
        wait_until(lambda: all(len(seen.items_of(u)) == 2 for u in users), TIMEOUT_S)
        wait_until(lambda: metrics.registry.get_sample_value("ccd_seen_malformed_total") == 1)
    finally:
        tailer.stop()
        log.close()


def test_kafka_tailer_names_records_retention_deleted_unread_and_goes_on_from_the_oldest(
    service_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaAdminClient, TopicPartition

    log = KafkaEventLog(service_settings)  # one partition: offsets are the append order
    topic = service_settings.kafka_topic
    log.append([InteractionEvent(user_id=f"a{n}", item_id="i") for n in range(5)])
    source = KafkaSource(service_settings.kafka_bootstrap_servers, topic)
    first: list[bytes] = []
    wait_until(lambda: bool(first.extend(source.read(100, 0.2))) or len(first) == 5, TIMEOUT_S)
    # While the reader reads nothing, 5 events arrive and retention deletes them, then 5 more.
    log.append([InteractionEvent(user_id=f"b{n}", item_id="i") for n in range(5)])
    admin = KafkaAdminClient(bootstrap_servers=service_settings.kafka_bootstrap_servers)
    admin.delete_records({TopicPartition(topic, 0): 10})
    admin.close()
    log.append([InteractionEvent(user_id=f"c{n}", item_id="i") for n in range(5)])
    seen, metrics = SeenItems(), ServiceMetrics()
    tailer = SeenTailer(lambda: source, seen, metrics)
    with caplog.at_level(logging.INFO, logger="service.seen"):
        tailer.start()
        try:
            # Not a silent jump to the end: the records left after the gap are read.
            wait_until(lambda: seen.n_users == 5, TIMEOUT_S)
            assert [seen.items_of(user) for user in ("b0", "b4", "c0", "c4")] == [
                frozenset(),  # deleted before the tailer read them, and said so
                frozenset(),
                frozenset({"i"}),
                frozenset({"i"}),
            ]
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1, caplog.text
            assert f"records 5..9 of {topic}/0 were deleted by retention" in errors[0].message
            assert "seen-items" in errors[0].message and "offset 10" in errors[0].message
            assert metrics.registry.get_sample_value("ccd_seen_records_lost_total") == 5
            assert tailer.records_lost == 5
            log.append([InteractionEvent(user_id="d0", item_id="i")])  # and it follows on
            wait_until(lambda: seen.items_of("d0") == {"i"}, TIMEOUT_S)
        finally:
            tailer.stop()
            log.close()


def test_app_on_kafka_and_redis(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"reload_poll_s": 30.0})  # pub/sub must do it
    store = RedisModelStore(settings.redis_url, settings.redis_prefix, settings.keep_versions)
    try:
        store.publish(make_snapshot())
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, TIMEOUT_S)
            response = client.post(
                "/events",
                json=[{"user_id": "u0", "item_id": "i2"}, {"user_id": "x", "item_id": "i0"}],
            )
            assert response.status_code == 202
            body = client.get("/recommendations/u0", params={"k": 2}).json()
            assert [item["item_id"] for item in body["items"]] == ["i3", "i0"]
            body = client.get("/recommendations/x", params={"k": 2}).json()
            assert body["strategy"] == "fold_in"  # from its event on i0 = (1, 0)
            assert [item["item_id"] for item in body["items"]] == ["i2", "i3"]
            body = client.get("/recommendations/y", params={"k": 2}).json()
            assert body["strategy"] == "popular"
            assert [item["item_id"] for item in body["items"]] == ["i0", "i3"]
            # A new version arrives over pub/sub, well before the 30 s poll.
            store.publish(make_snapshot([[0.1, 1.0], [0.2, 1.0]]))
            wait_until(lambda: client.get("/model").json()["version"] == 2, 10.0)
            body = client.get("/recommendations/u0", params={"k": 2}).json()
            assert [item["item_id"] for item in body["items"]] == ["i3", "i1"]
    finally:
        store.close()
