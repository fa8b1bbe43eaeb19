"""Two trainers against one stream and store: only the holder of the writer lease publishes; the
standby takes over when the holder is killed (``kill -9``), and by counting nothing is lost or
applied twice.

- embedded: the lease is a ``flock`` on ``data_dir/trainer.lock``;
- Kafka and Redis: the lease is a Redis key with a TTL, the publish is fenced by it; a producer
  keeps sending (re-sent duplicates included) while the holder is killed at crash points and at
  random moments, the killed one restarting as the new standby each time;
- the lease and the fence themselves, in-process on the real Redis.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from contracts.event_log import SqliteEventLog, open_event_log
from contracts.events import InteractionEvent
from contracts.model_store import (
    FileModelStore,
    ModelSnapshot,
    RedisModelStore,
    StaleWriterError,
    open_model_store,
)
from contracts.settings import Settings
from tests.faults.harness import (
    BASE,
    BLOCK,
    CRASHED,
    TRAINER_SETTINGS,
    TrainerProcess,
    audit,
    blocks_published,
    expected_blocks,
    make_events,
    trainer_settings_on,
    unique_in_order,
    wait_for,
)
from trainer.checkpoint import checkpoint_files, load_latest_checkpoint, save_checkpoint
from trainer.lease import LeaseLost, RedisLease


def writer_pid(meta: dict) -> int:
    """The process id in a version's ``writer`` (``host:pid:random``)."""
    return int(str(meta["writer"]).split(":")[1])


@pytest.mark.slow
def test_the_standby_takes_over_when_the_writer_dies_embedded(
    tmp_path: Path, figures: dict
) -> None:
    settings = {**TRAINER_SETTINGS, "data_dir": tmp_path / "data"}
    events = make_events(BASE + 5 * BLOCK, "sw")
    log = SqliteEventLog(Settings(data_dir=settings["data_dir"]).event_log_path)
    store = FileModelStore(Path(settings["data_dir"]) / "models")
    first = TrainerProcess("first", settings, tmp_path / "first.log")
    second = TrainerProcess("second", settings, tmp_path / "second.log")
    try:
        log.append(events[: BASE + 2 * BLOCK])
        first.start()
        wait_for("the first trainer's lock", lambda: first.count("writer lock .* taken"), [first])
        second.start()
        wait_for("the second trainer standing by", lambda: second.count("standing by"), [second])
        wait_for("blocks 0..2", lambda: blocks_published(store) == 3, [first, second])
        log.append(events[BASE + 2 * BLOCK : BASE + 3 * BLOCK + BLOCK // 2])  # block 4 half full
        wait_for("block 3", lambda: blocks_published(store) == 4, [first, second])
        time.sleep(0.5)  # the first has read half of block 4 by now
        assert second.running() and second.count("writer lock .* taken") == 0
        first.kill()
        killed_at = time.monotonic()
        wait_for("the takeover", lambda: second.count("writer lock .* taken"), [second])
        takeover_s = time.monotonic() - killed_at
        log.append(events[BASE + 3 * BLOCK + BLOCK // 2 :])
        wait_for("blocks 4 and 5", lambda: blocks_published(store) == 6, [second])
        assert second.stop() == 0
        result = audit(store, expected_blocks(unique_in_order(events), BASE, BLOCK))
    finally:
        first.stop()
        second.stop()
        log.close()
    pids = [writer_pid(meta) for meta in result.metas]
    assert pids == [first.pid] * 4 + [second.pid] * 2
    figures.update(
        **result.figures(),
        publishes_by_first=pids.count(first.pid),
        publishes_by_second=pids.count(second.pid),
        takeover_s=round(takeover_s, 1),
    )


class Pair:
    """Two trainer slots; the one whose pid is in the Redis lease key is the writer."""

    def __init__(self, settings: dict, tmp_path: Path) -> None:
        self.slots = [
            TrainerProcess(name, settings, tmp_path / f"{name}.log") for name in ("a", "b")
        ]
        self.client = redis.Redis.from_url(settings["redis_url"])
        self.key = f"{settings['redis_prefix']}:trainer:lease"

    def holder(self) -> TrainerProcess | None:
        value = self.client.get(self.key)
        pid = int(value.split(b":")[1]) if value else None
        return next((p for p in self.slots if p.running() and p.pid == pid), None)

    def other(self, process: TrainerProcess) -> TrainerProcess:
        return self.slots[1 - self.slots.index(process)]

    def pids(self) -> list[int]:
        return [pid for p in self.slots for pid in p.started_pids]

    def stop(self) -> None:
        for process in self.slots:
            process.stop()
        self.client.close()


@pytest.mark.slow
def test_two_trainers_kill_9_and_takeovers_on_kafka_and_redis(
    service_settings: Settings, tmp_path: Path, figures: dict
) -> None:
    # One data_dir shared by both trainers: the checkpoint travels with the lease.
    settings = trainer_settings_on(service_settings, tmp_path / "data")
    config = Settings(**settings)
    events = make_events(BASE + 9 * BLOCK, "pair")  # blocks 0..9
    rng = random.Random(7)
    resent = set(rng.sample(range(len(events) - 50), 40))  # each sent again 2 batches later
    sent: list[InteractionEvent] = []

    def produce() -> None:  # ~18 s of steady traffic
        event_log = open_event_log(config)
        try:
            for start in range(0, len(events), 25):
                batch = events[start : start + 25]
                batch += [events[i] for i in sorted(resent) if start - 50 <= i < start - 25]
                event_log.append(batch)
                sent.extend(batch)
                time.sleep(0.4)
        finally:
            event_log.close()

    producer = threading.Thread(target=produce, daemon=True)
    store = open_model_store(config)
    pair = Pair(settings, tmp_path)
    a, b = pair.slots
    takeovers: list[float] = []
    try:
        a.start("checkpointed@1")  # the first writer dies with block 1 checkpointed, unpublished
        wait_for("a's lease", lambda: pair.holder() is a, [a])
        b.start("published@3")  # the next one dies with block 3 published, uncommitted
        producer.start()
        for round_ in range(4):
            writer = wait_for("a writer", pair.holder, pair.slots)
            if round_ < 2:
                assert writer.wait_exit() == CRASHED, writer.tail()
            else:  # a SIGKILL from outside at a random moment
                time.sleep(rng.uniform(2.0, 4.0))
                assert pair.holder() is writer, f"the writer changed on its own\n{writer.tail()}"
                writer.kill()
            died = time.monotonic()
            standby = pair.other(writer)
            wait_for("the takeover", lambda s=standby: pair.holder() is s, pair.slots)
            takeovers.append(time.monotonic() - died)
            writer.start()  # the killed one comes back as the standby
        producer.join(60)
        assert not producer.is_alive(), "the producer did not finish"
        blocks = expected_blocks(unique_in_order(sent), BASE, BLOCK)
        assert len(blocks) == 10
        wait_for("all 10 blocks", lambda: blocks_published(store) == 10, pair.slots)
        result = audit(store, blocks)
        assert [p.stop() for p in pair.slots] == [0, 0]  # the writer and the standby, on SIGTERM
    finally:
        pair.stop()
        store.close()
    # Only holders published, in the order they held the lease: no publish by a stale writer.
    epochs = [int(meta["lease_epoch"]) for meta in result.metas]
    assert epochs == sorted(epochs) and len(set(epochs)) >= 3, epochs
    writers = {writer_pid(meta) for meta in result.metas}
    assert writers <= set(pair.pids()), (writers, pair.pids())
    figures.update(
        crash_points=2,
        sigkills=2,
        **result.figures(),
        resent=len(resent),
        writers=len(writers),
        lease_epochs=f"{epochs[0]}..{epochs[-1]}",
        takeover_s=f"{min(takeovers):.1f}..{max(takeovers):.1f}",
    )


# --- the lease and the fence, in-process ----------------------------------------------------


def tiny_snapshot() -> ModelSnapshot:
    return ModelSnapshot(
        user_ids=["u"],
        item_ids=["i"],
        user_embeddings=np.ones((1, 2), np.float32),
        item_embeddings=np.ones((1, 2), np.float32),
        item_popularity=np.ones(1, np.float32),
    )


def stopped_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return stop


def test_the_lease_admits_one_holder_and_fences_out_a_stale_one(
    redis_url: str, unique_name: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisModelStore(redis_url, unique_name)
    first, second = RedisLease(redis_url, unique_name, 1.0), RedisLease(redis_url, unique_name, 1.0)
    try:
        assert first.acquire(threading.Event()) and first.epoch == 1
        started = time.monotonic()
        assert not second.acquire(stopped_after(1.5))  # held and renewed: the second waits
        assert time.monotonic() - started >= 1.4
        with pytest.raises(StaleWriterError):
            store.publish(tiny_snapshot(), second.fence)
        assert store.versions() == [] and client.keys(f"{unique_name}:model:*") == []
        assert store.publish(tiny_snapshot(), first.fence) == 2  # version 1 was refused
        # The first holder is cut off (its key taken over by force): its heartbeat notices and
        # its publishes are refused.
        client.delete(first.key)
        assert second.acquire(threading.Event()) and second.epoch == 2
        wait_for("the lost lease", lambda: first.lost, timeout_s=5)
        with pytest.raises(LeaseLost):
            first.check()
        with pytest.raises(StaleWriterError):
            store.publish(tiny_snapshot(), first.fence)
        assert store.versions() == [2]
        # A clean release hands over at once.
        second.release()
        third = RedisLease(redis_url, unique_name, 1.0)
        assert third.acquire(stopped_after(0.5)) and third.epoch == 3
        third.close()
    finally:
        first.close()
        second.close()
        store.close()
        client.close()


def test_a_late_checkpoint_of_a_stale_writer_does_not_hide_the_holders(tmp_path: Path) -> None:
    """The new holder (epoch 3) checkpointed block 5; the old one (epoch 2), paused past its
    lease, writes its own block 5 afterwards: the holder's stays the one restored."""
    save_checkpoint(tmp_path, 4, {"by": "holder", "block": 4}, epoch=3)
    save_checkpoint(tmp_path, 5, {"by": "holder", "block": 5}, epoch=3)
    save_checkpoint(tmp_path, 5, {"by": "stale", "block": 5}, epoch=2)
    state = load_latest_checkpoint(tmp_path)
    assert state is not None and (state["by"], state["block"]) == ("holder", 5)
    # Pruning keeps the newest two by (block, epoch): the stale one goes first.
    assert [p.name for p in checkpoint_files(tmp_path)] == [
        "block-000005.e2.pt",
        "block-000005.e3.pt",
    ]
    save_checkpoint(tmp_path, 6, {"by": "holder", "block": 6}, epoch=3)
    assert [p.name for p in checkpoint_files(tmp_path)] == [
        "block-000005.e3.pt",
        "block-000006.e3.pt",
    ]
