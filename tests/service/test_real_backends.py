"""The app on the real Kafka broker and redis-server that `make test` starts (skipped without).

Nothing is mocked: events go through Kafka and come back through the seen-items tailer; model
versions come from Redis, announced over its pub/sub channel.
"""

from __future__ import annotations

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
