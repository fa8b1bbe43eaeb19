"""KafkaEventLog / KafkaEventConsumer against the real broker `make test` starts (no mocks)."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from contracts.event_log import (
    DEFAULT_PARTITIONS,
    EventLogUnavailable,
    KafkaEventConsumer,
    KafkaEventLog,
    LogRecord,
    open_consumer,
    open_event_log,
    read_dead_letter_marks,
)
from contracts.events import InteractionEvent
from contracts.settings import Settings

pytestmark = pytest.mark.integration
TIMEOUT_S = 60.0


def events(n: int, first: int = 0) -> list[InteractionEvent]:
    return [
        InteractionEvent(
            user_id=f"user-{i % 5}", item_id=f"item-{i}", timestamp=i, event_id=f"e{i}"
        )
        for i in range(first, first + n)
    ]


def poll_until(consumer: KafkaEventConsumer, count: int) -> list[LogRecord]:
    records: list[LogRecord] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(500, 1.0))
    return records


def test_append_consume_commit_and_resume(service_settings: Settings) -> None:
    settings = service_settings
    log = open_event_log(settings)
    assert isinstance(log, KafkaEventLog)
    assert log.append(events(20)) == 20
    log.close()

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    topics = admin.describe_topics([settings.kafka_topic, settings.kafka_dead_letter_topic])
    admin.close()
    assert [len(t["partitions"]) for t in topics] == [DEFAULT_PARTITIONS] * 2  # auto-created

    consumer = open_consumer(settings)
    assert isinstance(consumer, KafkaEventConsumer)
    records = poll_until(consumer, 20)
    received = [InteractionEvent.from_bytes(r.value) for r in records]
    assert sorted(e.event_id for e in received) == sorted(f"e{i}" for i in range(20))
    # Key = user id: each user's events sit in one partition, in the order appended.
    for user in {e.user_id for e in received}:
        mine = [(r.partition, InteractionEvent.from_bytes(r.value)) for r in records]
        mine = [(p, e) for p, e in mine if e.user_id == user]
        assert len({p for p, _ in mine}) == 1
        assert [e.timestamp for _, e in mine] == sorted(e.timestamp for _, e in mine)
    # Commit only the first record of each partition, then a new consumer resumes after them.
    firsts = {}
    for record in records:
        firsts.setdefault(record.partition, record)
    consumer.commit(list(firsts.values()))
    consumer.close()

    again = open_consumer(settings)
    rest = poll_until(again, 20 - len(firsts))
    again.close()
    expected = {(r.partition, r.offset) for r in records} - {
        (r.partition, r.offset) for r in firsts.values()
    }
    assert {(r.partition, r.offset) for r in rest} == expected


def test_dead_letter_carries_the_value_and_the_reason(service_settings: Settings) -> None:
    settings = service_settings
    log = KafkaEventLog(settings)
    log.append_raw([b"{broken"], ["k"])
    log.close()
    consumer = KafkaEventConsumer(settings)
    (record,) = poll_until(consumer, 1)
    consumer.dead_letter(record, "invalid JSON at byte 1")
    consumer.close()

    reader = KafkaConsumer(
        settings.kafka_dead_letter_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(TIMEOUT_S * 1000),
    )
    message = next(iter(reader))
    reader.close()
    headers = dict(message.headers)
    assert message.value == b"{broken"
    assert headers["reason"] == b"invalid JSON at byte 1"
    assert (
        headers["source"] == f"{settings.kafka_topic}/{record.partition}/{record.offset}".encode()
    )


def dead_letters(settings: Settings, count: int) -> list:
    reader = KafkaConsumer(
        settings.kafka_dead_letter_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    messages = []
    for message in reader:
        messages.append(message)
    reader.close()
    assert len(messages) == count, [m.offset for m in messages]
    return messages


def test_a_new_consumer_does_not_park_a_parked_record_again(service_settings: Settings) -> None:
    settings = service_settings
    log = KafkaEventLog(settings)
    log.append_raw([b"bad-1", b"bad-2", b"bad-3"], ["k1", None, "k3"])
    log.close()
    first = KafkaEventConsumer(settings)
    one, two, _ = poll_until(first, 3)
    assert first.dead_letter(one, "bad") and first.dead_letter(two, "bad")
    first.close()  # nothing committed, as after a crash
    again = KafkaEventConsumer(settings)  # learns the parked positions from the topic's tail
    records = poll_until(again, 3)
    assert [again.dead_letter(r, "bad") for r in records] == [False, False, True]
    again.close()
    parked = dead_letters(settings, 3)
    assert [m.key for m in parked] == [b"k1", None, b"k3"]
    assert [m.value for m in parked] == [b"bad-1", b"bad-2", b"bad-3"]


def test_a_record_too_large_for_the_dead_letter_topic_is_parked_truncated(
    service_settings: Settings,
) -> None:
    from kafka.admin import NewTopic

    settings = service_settings
    # A dead-letter topic made elsewhere, with a limit below the events topic's.
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    dead = NewTopic(
        settings.kafka_dead_letter_topic, 1, 1, topic_configs={"max.message.bytes": "200000"}
    )
    admin.create_topics([dead])
    admin.close()
    big = b"y" * 500_000
    log = KafkaEventLog(settings)
    log.append_raw([big], ["k"])
    log.close()
    consumer = KafkaEventConsumer(settings)
    (record,) = poll_until(consumer, 1)
    assert consumer.dead_letter(record, "not JSON")
    consumer.close()
    (message,) = dead_letters(settings, 1)
    headers = dict(message.headers)
    assert message.value == big[:65536] and message.key == b"k"
    assert headers["truncated-from"] == b"500000" and headers["reason"] == b"not JSON"


def test_a_dead_broker_gives_a_quick_event_log_unavailable() -> None:
    # Nothing listens on port 1: the append must fail fast, not hang.
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1")
    log = KafkaEventLog(settings)  # creating it does not connect
    started = time.monotonic()
    with pytest.raises(EventLogUnavailable):
        log.append(events(1))
    assert time.monotonic() - started < 10.0
    log.close()


def test_trainer_publishes_to_redis_and_commits_kafka_offsets(service_settings: Settings) -> None:
    from contracts.model_store import RedisModelStore, open_model_store
    from trainer.process import run_trainer
    from trainer.synthetic import SyntheticStream

    settings = service_settings.model_copy(
        update={"learner": "bpr", "base_block_size": 600, "block_size": 200, "eval_k": 10}
    )
    stream = list(SyntheticStream(n_users=80, n_items=60, seed=2, n_events=1_000))
    log = KafkaEventLog(settings)
    log.append(stream)
    log.close()

    run_trainer(settings, max_blocks=3)

    store = open_model_store(settings)
    assert isinstance(store, RedisModelStore)
    assert store.versions() == [1, 2, 3]
    metas = [store.load(v).meta for v in (1, 2, 3)]
    store.close()
    assert [m["events"] for m in metas] == [600, 200, 200]
    assert metas[2]["prequential"]["users"] > 0
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    offsets = admin.list_group_offsets(settings.kafka_group_id)[settings.kafka_group_id]
    admin.close()
    assert sum(meta.offset for meta in offsets.values()) == 1_000  # every record, once


def test_events_with_unknown_fields_are_applied_from_kafka_not_dead_lettered(
    service_settings: Settings,
) -> None:
    import orjson

    from trainer.process import Trainer
    from trainer.synthetic import SyntheticStream

    settings = service_settings.model_copy(
        update={"learner": "bpr", "base_block_size": 300, "eval_k": 10}
    )
    stream = list(SyntheticStream(n_users=40, n_items=30, seed=3, n_events=300))
    values = [orjson.dumps({**e.model_dump(), "schema_version": 2}) for e in stream]
    log = KafkaEventLog(settings)
    log.append_raw(values, [e.user_id for e in stream])
    log.close()

    trainer, stop = Trainer(settings), threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop, 1))
    thread.start()
    thread.join(TIMEOUT_S)  # the block never closes if the events are parked
    stop.set()
    thread.join()
    trainer.close()
    assert trainer.stats.events_consumed == 300 and trainer.stats.unknown_fields == 300
    assert trainer.stats.malformed == 0 and trainer.stats.dead_lettered == 0
    assert read_dead_letter_marks(settings) == {}  # nothing parked
