"""The trainer end to end on the embedded log and store: blocks, versions, commits, restarts."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from contracts.event_log import (
    EventConsumer,
    LogRecord,
    SqliteEventConsumer,
    SqliteEventLog,
    open_consumer,
)
from contracts.events import InteractionEvent
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from trainer.checkpoint import checkpoint_files
from trainer.process import Trainer, run_trainer
from trainer.synthetic import SyntheticStream

BASE, BLOCK = 600, 200


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        learner="bpr",
        base_block_size=BASE,
        block_size=BLOCK,
        block_interval_s=600.0,
        min_block_size=10,
        eval_k=10,
        torch_threads=1,
    )


def synthetic(n_events: int) -> list[InteractionEvent]:
    return list(SyntheticStream(n_users=80, n_items=60, seed=1, n_events=n_events))


def append(settings: Settings, events: list[InteractionEvent]) -> None:
    log = SqliteEventLog(settings.event_log_path)
    log.append(events)
    log.close()


def committed(settings: Settings) -> int:
    return SqliteEventConsumer(settings.event_log_path, settings.kafka_group_id).committed_offset()


def test_three_blocks_publish_versions_1_2_3_and_commit_their_offsets(settings: Settings) -> None:
    events = synthetic(BASE + 3 * BLOCK)
    log = SqliteEventLog(settings.event_log_path)
    log.append(events[:BASE])
    log.append_raw([b"{not json", b'{"user_id": "u1"}'], [None, "u1"])  # offsets 601, 602
    log.append(events[BASE : BASE + 50])
    log.append(events[:3])  # re-delivered copies (same event ids): offsets 653..655
    log.append(events[BASE + 50 :])
    log.close()

    run_trainer(settings, max_blocks=3)

    store = FileModelStore(settings.model_store_dir)
    assert store.versions() == [1, 2, 3] and store.current_version() == 3
    metas = [store.load(v).meta for v in (1, 2, 3)]
    assert [m["block_index"] for m in metas] == [0, 1, 2]
    assert [m["events"] for m in metas] == [BASE, BLOCK, BLOCK]
    assert metas[0]["prequential"] == {}  # nothing was deployed before block 0
    for meta in metas[1:]:
        assert set(meta["prequential"]) == {"recall@10", "ndcg@10", "users"}
        assert 0.0 <= meta["prequential"]["ndcg@10"] <= meta["prequential"]["recall@10"] <= 1.0
        assert meta["prequential"]["users"] > 0
    assert metas[1]["data_range"]["first_timestamp"] == events[BASE].timestamp
    assert metas[2]["data_range"]["last_timestamp"] == events[BASE + 2 * BLOCK - 1].timestamp
    assert metas[2]["learner"] == "bpr" and metas[2]["stage_seconds"]["learn"] > 0
    # The committed position is right after the last record of block 2: 600 events, 2 bad
    # messages, 3 duplicates, then 400 events.
    assert committed(settings) == BASE + 2 + 3 + 2 * BLOCK + 1
    # Ids: the snapshot's maps cover every user and item of the three blocks.
    snapshot = store.load()
    used = events[: BASE + 2 * BLOCK]
    assert set(snapshot.user_ids) == {e.user_id for e in used}
    assert set(snapshot.item_ids) == {e.item_id for e in used}
    popularity = dict(zip(snapshot.item_ids, snapshot.item_popularity.tolist(), strict=True))
    top_item = max(popularity, key=popularity.get)
    assert popularity[top_item] == sum(e.item_id == top_item for e in used)
    dead = SqliteEventConsumer(settings.event_log_path, "x").dead_letters()
    assert [offset for offset, _, _ in dead] == [BASE + 1, BASE + 2]
    assert "item_id" in dead[1][2]  # the reason names the missing field


def test_restart_resumes_after_the_last_block_without_reapplying(settings: Settings) -> None:
    events = synthetic(BASE + 3 * BLOCK)
    append(settings, events)
    first = Trainer(settings)
    first.run(max_blocks=2)
    assert first.stats.events_consumed == BASE + BLOCK and first.stats.blocks == 2
    first.close()
    assert len(checkpoint_files(settings.checkpoint_dir)) == 2

    second = Trainer(settings)
    assert second.block.index == 2 and second.stats.last_version == 2
    assert len(second.users) == len(first.users)
    # The restored seen pairs are exactly the distinct pairs of blocks 0 and 1.
    distinct = {(e.user_id, e.item_id) for e in events[: BASE + BLOCK]}
    restored = {
        (second.users.external(int(k) >> 32), second.items.external(int(k) & 0xFFFFFFFF))
        for k in second.seen
    }
    assert restored == distinct
    second.run(max_blocks=1)
    second.close()
    assert second.stats.events_consumed == BLOCK  # only the new block's events
    assert second.stats.duplicates == 0 and second.stats.skipped_applied == 0
    meta = FileModelStore(settings.model_store_dir).load().meta
    assert (meta["version"], meta["block_index"]) == (3, 2)
    assert meta["data_range"]["first_timestamp"] == events[BASE + BLOCK].timestamp
    assert meta["prequential"]["users"] > 0  # the restored student was evaluated


def test_a_format_1_checkpoint_with_id_lists_still_restores(settings: Settings) -> None:
    append(settings, synthetic(BASE + BLOCK))
    first = Trainer(settings)
    first.run(max_blocks=1)
    first.close()
    (path,) = checkpoint_files(settings.checkpoint_dir)
    state = torch.load(path, weights_only=True)
    assert state["format"] == 2 and isinstance(state["user_ids"], bytes)
    # What the previous release wrote: the same state with the ids as lists of strings.
    state.update(format=1, user_ids=first.users.ids, item_ids=first.items.ids)
    torch.save(state, path)

    second = Trainer(settings)
    assert second.block.index == 1
    assert second.users.ids == first.users.ids and second.items.ids == first.items.ids
    second.run(max_blocks=1)
    second.close()
    assert second.stats.events_consumed == BLOCK and second.stats.duplicates == 0


class NoCommitConsumer:
    """A consumer that crashes (for the log) between checkpoint and commit: commits are lost."""

    def __init__(self, inner: EventConsumer) -> None:
        self.inner = inner

    def resume(self, positions: dict[int, int]) -> None:
        self.inner.resume(positions)

    def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        return self.inner.poll(max_records, timeout_s)

    def commit(self, records: list[LogRecord]) -> None:
        pass

    def dead_letter(self, record: LogRecord, reason: str) -> bool:
        return self.inner.dead_letter(record, reason)

    def close(self) -> None:
        self.inner.close()


def test_events_checkpointed_but_not_committed_are_skipped_on_restart(settings: Settings) -> None:
    events = synthetic(BASE + BLOCK)
    append(settings, events)
    lost_commit = Trainer(settings, consumer=NoCommitConsumer(open_consumer(settings)))
    lost_commit.run(max_blocks=1)
    lost_commit.close()
    assert committed(settings) == 1  # nothing committed

    restarted = Trainer(settings)
    restarted.run(max_blocks=1)
    restarted.close()
    assert restarted.stats.skipped_applied == BASE  # recognised by position, not re-learned
    assert restarted.stats.events_consumed == BLOCK
    meta = FileModelStore(settings.model_store_dir).load().meta
    assert (meta["version"], meta["block_index"], meta["events"]) == (2, 1, BLOCK)
    assert committed(settings) == BASE + BLOCK + 1


def test_a_quiet_stream_closes_the_block_after_the_interval(settings: Settings) -> None:
    settings = settings.model_copy(update={"block_interval_s": 0.5})
    append(settings, synthetic(BASE + 30))  # block 1 gets 30 events: above min, below size
    trainer = Trainer(settings)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop, 2))
    started = time.monotonic()
    thread.start()
    thread.join(60)
    stop.set()
    trainer.close()
    assert not thread.is_alive()
    assert trainer.stats.blocks == 2
    meta = FileModelStore(settings.model_store_dir).load().meta
    assert (meta["block_index"], meta["events"]) == (1, 30)
    assert time.monotonic() - started >= 0.5


def test_stop_ends_an_idle_trainer_quickly(settings: Settings) -> None:
    trainer = Trainer(settings)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    trainer.close()
    assert not thread.is_alive() and trainer.stats.blocks == 0


def test_the_published_student_is_the_learners(settings: Settings) -> None:
    append(settings, synthetic(BASE))
    trainer = Trainer(settings)
    trainer.run(max_blocks=1)
    trainer.close()
    student = trainer.learner.student()
    snapshot = FileModelStore(settings.model_store_dir).load()
    np.testing.assert_allclose(snapshot.user_embeddings, student.users.numpy())
    np.testing.assert_allclose(snapshot.item_embeddings, student.items.numpy())
    assert snapshot.user_ids == trainer.users.ids


def test_prequential_metrics_exclude_earlier_items_from_ranking_and_targets(
    settings: Settings,
) -> None:
    """User 0 scores items 0 > 1 > 2 and interacted with item 0 in an earlier block; this block
    has items 0 and 2. Ranking without item 0 is [1, 2]: the only fresh target, item 2, is at
    position 2, so Recall@2 = 1 and NDCG@2 = 1 / log2(3). User 1 is unknown to the model."""
    from models.api import Embeddings
    from trainer.process import pair_keys

    trainer = Trainer(settings.model_copy(update={"eval_k": 2}))
    trainer.deployed = Embeddings(
        users=torch.tensor([[1.0]]), items=torch.tensor([[3.0], [2.0], [1.0]])
    )
    trainer.seen = pair_keys(np.array([0]), np.array([0]))
    block = np.unique(pair_keys(np.array([0, 0, 1]), np.array([0, 2, 1])))
    metrics = trainer._prequential(block, 0)
    trainer.close()
    assert metrics["users"] == 1
    assert metrics["recall@2"] == pytest.approx(1.0)
    assert metrics["ndcg@2"] == pytest.approx(1 / np.log2(3))


@pytest.mark.parametrize("seed", [0, -7])
def test_prequential_evaluation_draws_at_most_eval_users(settings: Settings, seed: int) -> None:
    """Three known users, one hit each for users 0 and 1, none for user 2; with eval_users=2
    the metric is over two of them, the same two for the same block (any seed, even < 0)."""
    from models.api import Embeddings
    from trainer.process import pair_keys

    update = {"eval_k": 1, "eval_users": 2, "seed": seed}
    trainer = Trainer(settings.model_copy(update=update))
    trainer.deployed = Embeddings(users=torch.ones(3, 1), items=torch.tensor([[2.0], [1.0]]))
    block = np.unique(pair_keys(np.array([0, 1, 2]), np.array([0, 0, 1])))
    draws = [trainer._prequential(block, index) for index in (0, 0, 1, 2, 3, 4, 5)]
    trainer.close()
    assert all(m["users"] == 2 for m in draws)
    assert draws[0] == draws[1]  # seeded by (seed, block index)
    assert {m["recall@1"] for m in draws} <= {0.5, 1.0}


def test_the_ccd_learner_publishes_and_resumes_from_its_checkpoint(settings: Settings) -> None:
    settings = settings.model_copy(update={"learner": "ccd"})
    append(settings, synthetic(BASE + 2 * BLOCK))
    first = Trainer(settings)
    assert first.learner_name == "ccd"  # models.ccd is importable: no fallback to bpr
    first.run(max_blocks=2)
    first.close()
    second = Trainer(settings)  # restores the CCD learner's state from the checkpoint
    second.run(max_blocks=1)
    second.close()
    meta = FileModelStore(settings.model_store_dir).load().meta
    assert (meta["version"], meta["block_index"], meta["learner"]) == (3, 2, "ccd")
    assert meta["prequential"]["users"] > 0
    with pytest.raises(RuntimeError, match="learner 'ccd'"):
        Trainer(settings.model_copy(update={"learner": "bpr"}))


@pytest.mark.parametrize("learner,variant", [("ccd", "paper"), ("als", "best")])
def test_the_configured_learner_is_the_one_built(
    settings: Settings, learner: str, variant: str
) -> None:
    settings = settings.model_copy(update={"learner": learner, "learner_variant": variant})
    trainer = Trainer(settings)
    assert trainer.learner_name == learner
    if learner == "ccd":  # the official behaviour: LightGCN + MF teachers, no iALS
        assert "ials" not in trainer.learner.config.teacher_kinds
    append(settings, synthetic(BASE + BLOCK))
    trainer.run(max_blocks=2)
    trainer.close()
    meta = FileModelStore(settings.model_store_dir).load().meta
    assert (meta["version"], meta["learner"]) == (2, learner)
    assert meta["prequential"]["users"] > 0
    restored = Trainer(settings)  # the checkpoint restores the same learner
    assert torch.equal(restored.learner.student().items, trainer.learner.student().items)
    restored.close()


def test_a_learner_that_cannot_be_built_stops_start_up(settings: Settings, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "models.ccd", None)  # as if the install were broken
    with pytest.raises(ImportError):
        Trainer(settings.model_copy(update={"learner": "ccd"}))


def run_until(trainer: Trainer, condition: object, timeout_s: float = 30.0) -> None:
    """Run ``trainer`` in a thread until ``condition()`` holds (or the timeout), then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
    stop.set()
    thread.join(30)
    trainer.close()
    assert not thread.is_alive()


JUNK = [b"", b"\xff\xfe\x00binary", b"null", b"[]", b'{"user_id": "u1"}']


def test_junk_alone_is_dead_lettered_once_and_committed_past(settings: Settings) -> None:
    SqliteEventLog(settings.event_log_path).append_raw(JUNK, [None, "k", None, "k", "u1"])
    # The first trainer parks everything but crashes (for the log) before committing.
    lost_commit = Trainer(settings, consumer=NoCommitConsumer(open_consumer(settings)))
    run_until(lost_commit, lambda: lost_commit.stats.malformed == len(JUNK))
    assert lost_commit.stats.dead_lettered == len(JUNK) and committed(settings) == 1

    # No valid event follows, yet the restarted trainer commits past the junk, parking none
    # of it a second time.
    restarted = Trainer(settings)
    run_until(restarted, lambda: committed(settings) == len(JUNK) + 1)
    assert committed(settings) == len(JUNK) + 1
    assert (restarted.stats.dead_lettered, restarted.stats.dead_lettered_before) == (0, 5)
    parked = SqliteEventConsumer(settings.event_log_path, "x")
    assert [(offset, value) for offset, value, _ in parked.dead_letters()] == list(
        enumerate(JUNK, start=1)
    )
    assert parked.dead_letter_keys() == [None, "k", None, "k", "u1"]
    assert FileModelStore(settings.model_store_dir).versions() == []


def with_unknown_fields(events: list[InteractionEvent]) -> list[bytes]:
    """The events as wire messages, each with fields the contract does not know."""
    return [
        orjson.dumps({**event.model_dump(), "colour": "red", "app": {"v": i}})
        for i, event in enumerate(events)
    ]


def test_events_with_unknown_fields_are_applied_counted_and_not_dead_lettered(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # A producer that added a field used to lose every event it sent to the dead letters.
    events = synthetic(BASE)
    SqliteEventLog(settings.event_log_path).append_raw(
        with_unknown_fields(events), [e.user_id for e in events]
    )
    trainer = Trainer(settings)
    with caplog.at_level(logging.WARNING, logger="trainer.process"):
        # Until published, not only learned: a stop between the two leaves nothing to load.
        run_until(trainer, lambda: trainer.stats.last_version == 1)  # never, were they parked
    assert trainer.stats.events_consumed == BASE and trainer.stats.malformed == 0
    assert trainer.stats.unknown_fields == BASE
    assert SqliteEventConsumer(settings.event_log_path, "x").dead_letters() == []
    assert FileModelStore(settings.model_store_dir).load().meta["events"] == BASE
    lines = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert 1 <= len(lines) <= trainer.unknown_field_warnings.burst  # logged, not flooded
    assert "'colour', 'app'" in lines[0]
