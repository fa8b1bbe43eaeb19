"""The seen-items index and its tailer over the real embedded log."""

from __future__ import annotations

import logging
import math
import time

import pytest

from contracts.event_log import SqliteEventConsumer, SqliteEventLog
from contracts.events import InteractionEvent
from contracts.settings import Settings
from service.metrics import ServiceMetrics
from service.seen import SeenItems, SeenTailer, SqliteSource, parse_pair
from tests.service.conftest import wait_until


def test_index_deduplicates_and_copies() -> None:
    seen = SeenItems()
    assert seen.add([("a", "x"), ("a", "y"), ("a", "x"), ("b", "x")]) == 3
    snapshot = seen.items_of("a")
    seen.add([("a", "z")])
    assert snapshot == {"x", "y"}
    assert seen.items_of("a") == {"x", "y", "z"}
    assert seen.items_of("nobody") == frozenset()
    assert (seen.n_users, seen.n_pairs) == (2, 4)


def test_parse_pair_accepts_events_only() -> None:
    assert parse_pair(b'{"user_id": "a", "item_id": "x", "timestamp": 1}') == ("a", "x")
    for raw in (b"nope", b"[1]", b'{"user_id": "a"}', b'{"user_id": 1, "item_id": "x"}'):
        assert parse_pair(raw) is None


def test_tailer_reads_from_the_start_and_follows(
    settings: Settings, event_log: SqliteEventLog
) -> None:
    event_log.append([InteractionEvent(user_id="a", item_id="x")])
    event_log.append_raw([b"garbage"], [None])
    seen, metrics = SeenItems(), ServiceMetrics()
    tailer = SeenTailer(lambda: SqliteSource(settings.event_log_path), seen, metrics, batch_size=1)
    tailer.start()
    try:
        assert tailer.caught_up.wait(5.0)
        assert seen.items_of("a") == {"x"}
        event_log.append([InteractionEvent(user_id="a", item_id="y")])
        wait_until(lambda: seen.items_of("a") == {"x", "y"})
        assert metrics.registry.get_sample_value("ccd_seen_malformed_total") == 1.0
    finally:
        tailer.stop()


def test_tailer_waits_for_a_log_that_does_not_exist_yet(settings: Settings) -> None:
    seen = SeenItems()
    tailer = SeenTailer(lambda: SqliteSource(settings.event_log_path), seen, ServiceMetrics())
    tailer.start()
    try:
        assert tailer.caught_up.wait(5.0)  # nothing to catch up on
        log = SqliteEventLog(settings.event_log_path)
        log.append([InteractionEvent(user_id="late", item_id="x")])
        wait_until(lambda: seen.items_of("late") == {"x"})
        log.close()
    finally:
        tailer.stop()


def test_a_trim_past_the_tailer_is_counted_and_said(
    settings: Settings, event_log: SqliteEventLog, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded log's retention waits for consumer groups only: records the trainer
    committed while this reader was behind are deleted under it (offsets 3..5 here)."""
    event_log.append([InteractionEvent(user_id="a", item_id=f"x{i}") for i in range(2)])
    source = SqliteSource(settings.event_log_path)
    assert len(source.read(10, 0.0)) == 2
    later = [InteractionEvent(user_id="a", item_id=f"y{i}") for i in range(5)]
    event_log.append(later)
    trainer = SqliteEventConsumer(settings.event_log_path, "trainer")
    trainer.commit(trainer.poll(5, 0.0))  # offsets 1..5 learned and committed
    assert trainer.trim(time.time() + 1) == 5
    trainer.close()
    with caplog.at_level(logging.ERROR, logger="service.seen"):
        assert source.read(10, 0.0) == [event.to_bytes() for event in later[3:]]
    assert source.records_lost == 3
    assert "records 3..5 of" in caplog.text and "going on from offset 6" in caplog.text
    source.close()


def test_a_reader_opened_after_a_trim_loses_nothing(
    settings: Settings, event_log: SqliteEventLog
) -> None:
    event_log.append([InteractionEvent(user_id="a", item_id=f"x{i}") for i in range(4)])
    trainer = SqliteEventConsumer(settings.event_log_path, "trainer")
    trainer.commit(trainer.poll(2, 0.0))
    trainer.trim(time.time() + 1)
    trainer.close()
    source = SqliteSource(settings.event_log_path)
    assert len(source.read(10, 0.0)) == 2
    assert source.records_lost == 0 and source.at_end()
    source.close()


def test_the_seen_gauges_read_the_counts_at_most_once_per_max_age() -> None:
    metrics, calls = ServiceMetrics(), []

    def counts() -> tuple[int, int] | None:
        calls.append(1)
        return None if len(calls) == 3 else (len(calls), 10 * len(calls))

    assert metrics.refresh_seen_counts(counts, max_age_s=60) == (1, 10)
    assert metrics.refresh_seen_counts(counts, max_age_s=60) == (1, 10)  # no second read
    assert metrics.refresh_seen_counts(counts, max_age_s=0) == (2, 20)
    assert metrics.registry.get_sample_value("ccd_seen_pairs") == 20
    assert metrics.refresh_seen_counts(counts, max_age_s=0) is None  # the store did not answer
    assert math.isnan(metrics.registry.get_sample_value("ccd_seen_users") or 0.0)
    assert len(calls) == 3
