"""Outages of the trainer's backends, with services of the test's own (the shared ones stay up):

- Redis ``kill -9`` under a running trainer process: the block is checkpointed, the publish is
  retried with a doubling wait, no log position is committed; once the same redis-server is back
  (append-only file) the same process publishes and commits, with no restart.
- The writer lease through a Redis outage longer than its TTL: in doubt while Redis is away,
  taken back (same epoch) when it returns.
- A Redis restarted without persistence (every key lost): version numbers go on from the
  trainer's checkpoint, the lease says it was lost with Redis's data, its next epoch is higher.
- Kafka ``kill -9`` under a running trainer process: once the same broker is back the same
  process reconnects and goes on; nothing lost or applied twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from contracts.event_log import KafkaEventLog, SqliteEventConsumer, SqliteEventLog
from contracts.model_store import FileModelStore, RedisModelStore
from contracts.settings import Settings
from tests.faults.harness import (
    BASE,
    BLOCK,
    TRAINER_SETTINGS,
    OwnKafka,
    OwnRedis,
    TrainerProcess,
    audit,
    blocks_published,
    expected_blocks,
    make_events,
    unique_in_order,
    wait_for,
)
from trainer.checkpoint import checkpoint_files
from trainer.lease import RedisLease
from trainer.process import Trainer

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def retry_waits(log: str) -> list[float]:
    return [float(s) for s in re.findall(r"model store unavailable .*retrying in ([\d.]+) s", log)]


def test_redis_down_the_trainer_retries_without_committing_then_recovers(
    own_redis: OwnRedis, tmp_path: Path, figures: dict
) -> None:
    settings = {
        **TRAINER_SETTINGS,
        "data_dir": tmp_path / "data",
        "redis_url": own_redis.url,
        "redis_prefix": "outage",
        # Long enough that the lease stays trusted through this outage: what is exercised here
        # is the publish's retry (the lease through a longer one: the next test).
        "lease_ttl_s": 20,
    }
    config = Settings(**settings)
    events = make_events(BASE + 2 * BLOCK, "redis-outage")
    log = SqliteEventLog(config.event_log_path)
    committed = SqliteEventConsumer(config.event_log_path, config.kafka_group_id)
    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log")
    try:
        log.append(events[:BASE])
        trainer.start()
        store = RedisModelStore(own_redis.url, "outage", keep_versions=100)
        wait_for("version 1", lambda: blocks_published(store) == 1, [trainer])
        wait_for("its commit", lambda: committed.committed_offset() == BASE + 1, [trainer])
        store.close()

        own_redis.kill()
        down_at = time.monotonic()
        log.append(events[BASE:])  # blocks 1 and 2 arrive while Redis is down
        wait_for("3 publish retries", lambda: len(retry_waits(trainer.log())) >= 3, [trainer])
        assert checkpoint_files(config.checkpoint_dir)[-1].name == "block-000001.e1.pt"
        time.sleep(1.0)
        assert committed.committed_offset() == BASE + 1  # nothing committed while unpublished

        own_redis.start()
        outage_s = time.monotonic() - down_at
        store = RedisModelStore(own_redis.url, "outage", keep_versions=100)
        wait_for("versions 2 and 3", lambda: blocks_published(store) == 3, [trainer])
        wait_for("the commit", lambda: committed.committed_offset() == len(events) + 1, [trainer])
        assert trainer.running() and len(trainer.started_pids) == 1  # recovered, not restarted
        result = audit(store, expected_blocks(unique_in_order(events), BASE, BLOCK))
        store.close()
        assert trainer.stop() == 0
    finally:
        trainer.stop()
        log.close()
        committed.close()
    waits = retry_waits(trainer.log())
    assert waits[:4] == [0.2, 0.4, 0.8, 1.0][: len(waits[:4])]  # doubling, capped at 1 s
    assert result.versions == [1, 2, 3]
    figures.update(
        outage_s=round(outage_s, 1),
        publish_retries=len(waits),
        **result.figures(),
        trainer_restarts=0,
    )


def test_the_lease_survives_a_redis_outage_longer_than_its_ttl(own_redis: OwnRedis) -> None:
    lease = RedisLease(own_redis.url, "lease-outage", ttl_s=1.0)
    try:
        assert lease.acquire(threading.Event()) and lease.epoch == 1
        own_redis.kill()
        time.sleep(1.0)  # past the trusted 0.8 x TTL since the last renewal
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        assert not lease.wait_trusted(stop)  # in doubt: no durable write allowed meanwhile
        own_redis.start()  # the key expired during the outage; the epoch is still 1
        started = time.monotonic()
        assert lease.wait_trusted(threading.Event())
        assert time.monotonic() - started < 3.0
        assert lease.epoch == 1 and not lease.lost
        other = RedisLease(own_redis.url, "lease-outage", ttl_s=1.0)
        stop = threading.Event()
        threading.Timer(1.5, stop.set).start()
        assert not other.acquire(stop)  # taken back by the first holder, not free
        other.close()
    finally:
        lease.close()


def test_a_redis_restarted_without_persistence_sends_no_version_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It used to number the next version 1 again (7 -> 1) and to log that another trainer had
    # taken the lease. Now the trainer's checkpoint keeps the numbering going, the lease says
    # what happened, and a new epoch is above the old one.
    server = OwnRedis(tmp_path, persist=False)
    server.start()
    settings = Settings(
        **{**TRAINER_SETTINGS, "data_dir": tmp_path / "data", "redis_url": server.url}
    )
    lease = RedisLease(server.url, "lost", ttl_s=0.6)
    try:
        SqliteEventLog(settings.event_log_path).append(make_events(BASE + 2 * BLOCK, "v"))
        trainer = Trainer(settings)
        trainer.run(max_blocks=2)
        trainer.close()
        assert lease.acquire(threading.Event()) and lease.epoch == 1
        server.kill()
        server.start()  # empty: no version, no counter, no lease, no epoch
        with caplog.at_level(logging.ERROR, logger="trainer.lease"):
            wait_for("the heartbeat notices", lambda: lease.lost, timeout_s=10.0)
        lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
        assert lost and "restarted without persistence" in lost[0]
        assert not any("another trainer" in line for line in lost)
        lease.release()
        assert lease.acquire(threading.Event()) and lease.epoch == 2  # not 1 again
        # From its checkpoint, taken before version 2 went out: the store lost that publish,
        # so it goes out again, under its number (after version 1), then block 2 as 3.
        restarted = Trainer(settings)
        restarted.run(max_blocks=1)
        restarted.close()
        store = RedisModelStore(server.url, keep_versions=5)
        assert store.versions() == [2, 3] and store.current_version() == 3
        assert [store.load_meta(v)["block_index"] for v in (2, 3)] == [1, 2]
        store.close()
    finally:
        lease.close()
        server.stop()


@pytest.mark.slow
def test_kafka_down_the_trainer_reconnects_without_restart(tmp_path: Path, figures: dict) -> None:
    broker = OwnKafka(tmp_path)
    started = time.monotonic()
    broker.start()
    first_start_s = time.monotonic() - started
    settings = {
        **TRAINER_SETTINGS,
        "data_dir": tmp_path / "data",
        "kafka_bootstrap_servers": broker.bootstrap,
        "kafka_topic": "outage",
        "kafka_dead_letter_topic": "outage.dead-letter",
        "kafka_group_id": "outage-trainer",
    }
    config = Settings(**settings)
    events = make_events(BASE + 2 * BLOCK, "kafka-outage")
    store = FileModelStore(config.model_store_dir)
    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log")
    try:
        append(config, events[:BASE])
        trainer.start()
        wait_for("version 1", lambda: blocks_published(store) == 1, [trainer])

        broker.kill()
        down_at = time.monotonic()
        time.sleep(3.0)  # the trainer polls a dead broker meanwhile
        assert trainer.running()
        broker.start()
        back_at = time.monotonic()
        append(config, events[BASE:])
        wait_for("versions 2 and 3", lambda: blocks_published(store) == 3, [trainer])
        caught_up_s = time.monotonic() - back_at
        assert trainer.running() and len(trainer.started_pids) == 1
        result = audit(store, expected_blocks(unique_in_order(events), BASE, BLOCK))
        wait_for("the commit", lambda: committed_offset(config) == len(events), [trainer])
        assert trainer.stop() == 0
    finally:
        trainer.stop()
        broker.stop()
    figures.update(
        broker_start_s=round(first_start_s, 1),
        outage_s=round(back_at - down_at, 1),
        blocks_1_2_after_return_s=round(caught_up_s, 1),
        **result.figures(),
        trainer_restarts=0,
    )


def append(config: Settings, events: list) -> None:
    log = KafkaEventLog(config)
    try:
        log.append(events)
    finally:
        log.close()


def committed_offset(config: Settings) -> int:
    admin = KafkaAdminClient(bootstrap_servers=config.kafka_bootstrap_servers)
    try:
        offsets = admin.list_group_offsets(config.kafka_group_id)[config.kafka_group_id]
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values())
