"""Every kind of record a Kafka consumer can deliver, sent by a client this project did not write
(confluent-kafka), interleaved with valid events, and two trainer restarts: the trainer stays
up, applies each valid event exactly once, parks each bad record exactly once in the dead-letter
topic with its key, headers and a reason, keeps none of their bytes in memory, and commits past
the last record although no valid event follows the last bad ones.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from contracts.event_log import ensure_topics
from contracts.events import InteractionEvent
from contracts.model_store import open_model_store
from contracts.settings import Settings
from tests.faults.harness import (
    BASE,
    BLOCK,
    CRASHED,
    TrainerProcess,
    audit,
    blocks_published,
    expected_blocks,
    make_events,
    trainer_settings_on,
    unique_in_order,
    wait_for,
)

HUGE = 900_000  # below the broker's default 1 MiB record limit
Headers = list[tuple[str, bytes]]
# (kind, key, value, headers): what a consumer can be handed besides an event.
HOSTILE: list[tuple[str, bytes | None, bytes | None, Headers]] = [
    ("tombstone", b"u1", None, []),
    ("null key and value", None, None, []),
    ("null key, junk", None, b"junk", []),
    ("empty", b"k", b"", []),
    ("binary", b"\xff\x00\xfe", bytes(range(256)), []),
    ("headers only", None, None, [("trace-id", b"abc"), ("trace-id", b"def"), ("e", b"")]),
    ("JSON, not an object", b"k", b"[1, 2]", [("content-type", b"application/json")]),
    ("invalid event", b"u2", b'{"user_id": "", "item_id": "i1"}', [("source", b"spoofed/0/9")]),
    ("huge", b"big", b"x" * HUGE, [("h", b"\x00\xff")]),
]


class Sent:
    """Everything the test produced, with the offset each record got."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        self.events: list[InteractionEvent] = []
        self.bad: dict[int, tuple[str, bytes | None, bytes | None, Headers]] = {}

    def send(self, items: list[InteractionEvent | tuple]) -> None:
        for item in items:
            if isinstance(item, InteractionEvent):
                self.events.append(item)
                self._produce(item.user_id.encode(), item.to_bytes(), [], None)
            else:
                self._produce(item[1], item[2], item[3], item)
        assert self.producer.flush(30) == 0, "confluent-kafka did not deliver everything"

    def _produce(self, key: bytes | None, value: bytes | None, headers: Headers, bad: Any) -> None:
        def delivered(error: Any, message: Any) -> None:
            assert error is None, error
            if bad is not None:
                self.bad[message.offset()] = bad

        self.producer.produce(
            self.topic, value=value, key=key, headers=headers or None, on_delivery=delivered
        )
        self.producer.poll(0)


def interleave(events: list[InteractionEvent], bad: list[tuple], seed: int) -> list[Any]:
    """``events`` in order with the ``bad`` records spread at random places among them."""
    mixed: list[Any] = list(events)
    rng = random.Random(seed)
    for record in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), record)
    return mixed


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` (one partition), read to its end."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{os.urandom(4).hex()}"}
    )
    try:
        partition = confluent_kafka.TopicPartition(topic, 0)
        _, end = consumer.get_watermark_offsets(partition, timeout=10)
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        messages: list[Any] = []
        while (not messages or messages[-1].offset() < end - 1) and end > 0:
            message = consumer.poll(10)
            assert message is not None, f"{topic}: read {len(messages)} of {end}"
            assert message.error() is None, message.error()
            messages.append(message)
        return messages
    finally:
        consumer.close()


def end_offset(bootstrap: str, topic: str) -> int:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    try:
        return consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, 0), 10)[1]
    finally:
        consumer.close()


def committed(settings: Settings) -> int:
    """The trainer group's committed offset (-1001 = none); asking does not join the group."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.kafka_group_id}
    )
    try:
        (position,) = consumer.committed(
            [confluent_kafka.TopicPartition(settings.kafka_topic, 0)], timeout=10
        )
        return position.offset
    finally:
        consumer.close()


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.slow
def test_every_kind_of_record_is_parked_once_and_the_trainer_goes_on(
    service_settings: Settings, tmp_path: Path, figures: dict
) -> None:
    settings = trainer_settings_on(service_settings, tmp_path / "data")
    config = Settings(**settings)
    bootstrap, topic = config.kafka_bootstrap_servers, config.kafka_topic
    assert bootstrap is not None
    ensure_topics(config)
    dead_topic = config.kafka_dead_letter_topic
    sent = Sent(bootstrap, topic)
    events = make_events(BASE + BLOCK, "hostile")
    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log")
    store = open_model_store(config)
    try:
        # Block 0 with every kind of bad record in it; the trainer dies after publishing it,
        # before committing: the restart reads the bad records again.
        sent.send(interleave(events[:BASE], HOSTILE * 2, seed=1))
        assert trainer.start("published@0").wait_exit() == CRASHED, trainer.tail()
        trainer.start()
        # Half of block 1, then 40 huge records while the block is open (their bytes must not
        # stay in memory), then a kill -9 with all of them parked but nothing committed.
        sent.send(interleave(events[BASE : BASE + BLOCK // 2], HOSTILE, seed=2))
        wait_for("block 0", lambda: blocks_published(store) == 1, [trainer])
        wait_for(
            "the parked records",
            lambda: len(read_all(bootstrap, dead_topic)) == len(sent.bad),
            [trainer],
        )
        rss_before = rss_bytes(trainer.pid)
        sent.send([HOSTILE[-1]] * 40)
        wait_for(
            "40 more parked",
            lambda: len(read_all(bootstrap, dead_topic)) == len(sent.bad),
            [trainer],
        )
        rss_growth = rss_bytes(trainer.pid) - rss_before
        trainer.kill()
        # Restart 2: the rest of block 1, then bad records with no valid event after them.
        trainer.start()
        sent.send(interleave(events[BASE + BLOCK // 2 :], HOSTILE, seed=3) + HOSTILE)
        wait_for("block 1", lambda: blocks_published(store) == 2, [trainer])
        end = end_offset(bootstrap, topic)
        wait_for("the commit at the end", lambda: committed(config) == end, [trainer])
        assert trainer.running(), trainer.tail()
        result = audit(store, expected_blocks(unique_in_order(sent.events), BASE, BLOCK))
        parked = read_all(bootstrap, dead_topic)
        assert trainer.stop() == 0
    finally:
        trainer.stop()
        store.close()

    # Each bad record parked exactly once, in log order, with its key, headers and a reason.
    sources = [dict(m.headers())["source"].decode() for m in parked]
    assert sources == [f"{topic}/0/{offset}" for offset in sorted(sent.bad)]
    for message in parked:
        offset = int(dict(message.headers())["source"].decode().rsplit("/", 1)[1])
        kind, key, value, headers = sent.bad[offset]
        got = message.headers()
        assert message.key() == key, kind
        assert got[: len(headers)] == headers, kind  # the original headers first, in order
        assert [name for name, _ in got[len(headers) :]][:2] == ["reason", "source"], kind
        assert dict(got)["reason"], kind
        if key is None and value is None:
            assert (message.value(), dict(got)["null-value"]) == (b"", b"1"), kind
        else:
            assert message.value() == value, kind
    # The two restarts read bad records again; none was parked twice.
    assert trainer.count("malformed message at") >= len(HOSTILE)
    assert rss_growth < 20_000_000, f"the trainer grew by {rss_growth} bytes for 40 huge records"
    figures.update(
        bad_records=len(sent.bad),
        parked=len(parked),
        events=len(sent.events),
        **result.figures(),
        rss_growth_mb=round(rss_growth / 1e6, 1),
        restarts=2,
    )
