"""The trainer on a topic with several partitions keyed by user, on the real Kafka and Redis:
killed and restarted, then restarted after partitions were added, it learns every event exactly
once; a restart whose checkpoint positions retention already deleted stops with a clear error,
and ``CCD_KAFKA_SKIP_DELETED`` goes on without them.

Blocks are cut by count and by a short interval, so which partition's records land in which block
depends on fetch timing; the audit is order-free: the published versions hold as many events as
were sent, and the sum of their ``event_digest`` (each the sum of its events' dedup hashes modulo
2**64) equals the digest of all events sent. A lost or repeated event changes both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from contracts.event_log import KafkaEventLog
from contracts.events import InteractionEvent
from contracts.model_store import RedisModelStore
from contracts.settings import Settings
from tests.faults.harness import (
    CRASHED,
    TrainerProcess,
    digest,
    make_events,
    trainer_settings_on,
    wait_for,
)
from trainer.blocks import DIGEST_MODULUS
from trainer.checkpoint import load_latest_checkpoint

pytestmark = pytest.mark.slow

PARTITIONS = 3


def partitioned(service_settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """The fault tests' trainer settings on 3 partitions; a quiet tail closes within 1 s."""
    return {
        **trainer_settings_on(service_settings, tmp_path / "trainer-data"),
        "kafka_partitions": PARTITIONS,
        "block_interval_s": 1,
    }


def produce(settings: dict[str, Any], events: list[InteractionEvent]) -> None:
    log = KafkaEventLog(Settings(**settings))
    assert log.append(events) == len(events)
    log.close()


def learned(store: RedisModelStore) -> tuple[int, str]:
    """Events in all published versions and the sum of their digests (hex, as ``digest``)."""
    metas = [store.load_meta(version) for version in store.versions()]
    total = sum(int(m["events"]) for m in metas)
    summed = sum(int(m["event_digest"], 16) for m in metas) % DIGEST_MODULUS
    return total, f"{summed:016x}"


def end_offsets(settings: dict[str, Any]) -> dict[int, int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=settings["kafka_bootstrap_servers"])
    try:
        partitions = consumer.partitions_for_topic(settings["kafka_topic"]) or set()
        tps = [TopicPartition(settings["kafka_topic"], p) for p in sorted(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def checkpoint_offsets(settings: dict[str, Any]) -> dict[int, int]:
    state = load_latest_checkpoint(Path(settings["data_dir"]) / "checkpoints")
    assert state is not None
    return {int(p): int(o) for p, o in state["offsets"].items()}


def test_partitions_are_learned_once_across_kills_and_added_partitions(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = partitioned(service_settings, tmp_path)
    store = RedisModelStore(settings["redis_url"], settings["redis_prefix"])
    first = make_events(600, "part-a", users=200, items=60)
    produce(settings, first)
    ends = end_offsets(settings)
    assert len(ends) == PARTITIONS and all(ends.values()), ends  # keyed by user: all used

    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log")
    # Killed between publish and commit of block 1, then while block 2 fills.
    for crash_at in ("published@1", "filling@2"):
        assert trainer.start(crash_at).wait_exit() == CRASHED, trainer.tail()
    trainer.start()
    wait_for("all 600 events learned", lambda: learned(store)[0] >= 600, [trainer])
    assert learned(store) == (600, digest(e.event_id for e in first)), trainer.tail()
    wait_for("the checkpoint at the topic's end", lambda: checkpoint_offsets(settings) == ends)
    assert trainer.stop() == 0

    # Two more partitions while the trainer is stopped: they are read from their start.
    admin = KafkaAdminClient(bootstrap_servers=settings["kafka_bootstrap_servers"])
    admin.create_partitions({settings["kafka_topic"]: PARTITIONS + 2})
    admin.close()
    second = make_events(400, "part-b", users=200, items=60)
    produce(settings, second)
    ends = end_offsets(settings)
    assert len(ends) == PARTITIONS + 2 and ends[3] and ends[4], ends
    trainer.start()
    wait_for("all 1,000 events learned", lambda: learned(store)[0] >= 1000, [trainer])
    everything = [e.event_id for e in first + second]
    assert learned(store) == (1000, digest(everything)), trainer.tail()
    wait_for("the checkpoint at the topic's end", lambda: checkpoint_offsets(settings) == ends)
    assert trainer.stop() == 0
    assert trainer.count("has no position in the checkpoint or the group") >= 2
    store.close()


def test_a_restart_behind_retention_stops_naming_the_recovery(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = partitioned(service_settings, tmp_path)
    store = RedisModelStore(settings["redis_url"], settings["redis_prefix"])
    produce(settings, make_events(200, "gap-a"))  # the base block
    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log").start()
    wait_for("the base block", lambda: learned(store)[0] >= 200, [trainer])
    assert trainer.stop() == 0

    # While it is stopped, 150 events arrive and retention deletes them all, unread.
    produce(settings, make_events(150, "gap-b"))
    ends = end_offsets(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings["kafka_bootstrap_servers"])
    admin.delete_records({TopicPartition(settings["kafka_topic"], p): o for p, o in ends.items()})
    admin.close()

    assert trainer.start().wait_exit() == 2, trainer.tail()
    assert trainer.count("were deleted by the topic's retention before the trainer learned") == 1
    assert trainer.count("CCD_KAFKA_SKIP_DELETED=true") == 1
    assert trainer.count("Traceback") == 0

    # The documented recovery: accept the loss, go on with what arrives next.
    trainer.settings = {**settings, "kafka_skip_deleted": True}
    trainer.start()
    later = make_events(120, "gap-c")
    produce(settings, later)
    wait_for("the events after the gap", lambda: learned(store)[0] >= 320, [trainer])
    assert trainer.stop() == 0
    assert learned(store)[0] == 320  # the 150 deleted ones are not learned, nothing repeats
    assert checkpoint_offsets(settings) == end_offsets(settings)
    store.close()


def test_a_topic_recreated_with_fewer_partitions_is_refused(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = partitioned(service_settings, tmp_path)
    store = RedisModelStore(settings["redis_url"], settings["redis_prefix"])
    produce(settings, make_events(200, "fewer-a", users=200))
    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log").start()
    wait_for("the base block", lambda: learned(store)[0] >= 200, [trainer])
    assert trainer.stop() == 0
    assert set(checkpoint_offsets(settings)) == {0, 1, 2}

    topic = settings["kafka_topic"]
    admin = KafkaAdminClient(bootstrap_servers=settings["kafka_bootstrap_servers"])
    admin.delete_topics([topic])
    wait_for("the topic deleted", lambda: topic not in admin.list_topics())
    recreated = False

    def recreate() -> bool:
        nonlocal recreated
        try:  # the broker may still be removing the old one
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
            recreated = True
        except TopicAlreadyExistsError:
            pass
        return recreated

    wait_for("the topic re-created with 1 partition", recreate)
    admin.close()

    assert trainer.start().wait_exit() == 2, trainer.tail()
    assert trainer.count(r"holds positions in partitions \[1, 2\] of topic") == 1
    assert trainer.count("Traceback") == 0
    store.close()
