"""The embedded SQLite event log: append, poll, commit, resume, dead letters, two processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from contracts.event_log import (
    SQLITE_PARTITION,
    EventLogUnavailable,
    LogRecord,
    SqliteEventConsumer,
    SqliteEventLog,
    next_offsets,
    open_consumer,
    open_event_log,
)
from contracts.events import InteractionEvent
from contracts.settings import Settings


def events(n: int, user: str = "u") -> list[InteractionEvent]:
    return [InteractionEvent(user_id=f"{user}{i}", item_id=f"i{i}", timestamp=i) for i in range(n)]


def test_append_then_poll_returns_the_events_in_order(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.sqlite")
    assert log.append(events(5)) == 5
    consumer = SqliteEventConsumer(tmp_path / "log.sqlite", group_id="g")
    records = consumer.poll(max_records=3, timeout_s=0.1)
    assert [r.offset for r in records] == [1, 2, 3]
    assert {r.partition for r in records} == {SQLITE_PARTITION}
    assert [InteractionEvent.from_bytes(r.value).user_id for r in records] == ["u0", "u1", "u2"]
    # The position advances in memory without a commit.
    assert [r.offset for r in consumer.poll(10, 0.1)] == [4, 5]
    assert consumer.poll(10, 0.05) == []


def test_a_new_consumer_resumes_after_the_commit_only(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    SqliteEventLog(path).append(events(6))
    first = SqliteEventConsumer(path, group_id="g")
    records = first.poll(10, 0.1)
    first.commit(records[:4])  # offsets 1..4 processed
    first.close()
    again = SqliteEventConsumer(path, group_id="g")
    assert again.committed_offset() == 5
    assert [r.offset for r in again.poll(10, 0.1)] == [5, 6]
    # Another group has its own position; commits never move backwards.
    assert [r.offset for r in SqliteEventConsumer(path, group_id="other").poll(2, 0.1)] == [1, 2]
    again.commit(records[:1])
    assert SqliteEventConsumer(path, group_id="g").committed_offset() == 5


def test_dead_letters_keep_value_reason_and_position(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    SqliteEventLog(path).append_raw([b"not json", b'{"user_id": ""}'], [None, "k"])
    consumer = SqliteEventConsumer(path, group_id="g")
    bad_json, bad_field = consumer.poll(10, 0.1)
    consumer.dead_letter(bad_json, "invalid JSON")
    consumer.dead_letter(bad_field, "user_id too short")
    assert consumer.dead_letters() == [
        (1, b"not json", "invalid JSON"),
        (2, b'{"user_id": ""}', "user_id too short"),
    ]
    assert consumer.dead_letter_keys() == [None, "k"]


def test_a_record_is_dead_lettered_once_even_when_read_again(tmp_path: Path) -> None:
    # A trainer that parked records and crashed before committing past them reads them again.
    path = tmp_path / "log.sqlite"
    SqliteEventLog(path).append_raw([b"a", b"b", b"c"], ["k1", "k2", "k3"])
    first = SqliteEventConsumer(path, group_id="g")
    one, two, _ = first.poll(10, 0.1)
    assert first.dead_letter(one, "bad") and first.dead_letter(two, "bad")
    assert not first.dead_letter(one, "bad")
    first.close()
    again = SqliteEventConsumer(path, group_id="g")
    one, two, three = again.poll(10, 0.1)  # nothing committed: all three again
    assert [again.dead_letter(r, "bad") for r in (one, two, three)] == [False, False, True]
    assert [offset for offset, _, _ in again.dead_letters()] == [1, 2, 3]


def test_poll_waits_for_the_timeout_when_empty(tmp_path: Path) -> None:
    import time

    consumer = SqliteEventConsumer(tmp_path / "log.sqlite", group_id="g")
    started = time.monotonic()
    assert consumer.poll(10, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0


def _append_in_child(path: str, count: int) -> None:
    log = SqliteEventLog(Path(path))
    for start in range(0, count, 10):
        log.append(events(10, user=f"c{start}-"))
    log.close()


def test_one_writer_process_and_one_reader_process_at_once(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    consumer = SqliteEventConsumer(path, group_id="g")
    child = multiprocessing.get_context("spawn").Process(
        target=_append_in_child, args=(str(path), 300)
    )
    child.start()
    seen: list[LogRecord] = []
    while len(seen) < 300:
        seen.extend(consumer.poll(50, 10.0))
    child.join(10)
    assert child.exitcode == 0
    assert [r.offset for r in seen] == list(range(1, 301))  # no gap, no repeat


def test_a_failing_database_raises_event_log_unavailable(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.sqlite")
    log._connection.execute("DROP TABLE messages")  # the write now fails inside SQLite
    with pytest.raises(EventLogUnavailable):
        log.append(events(1))


def test_next_offsets_is_one_past_the_largest_per_partition() -> None:
    records = [LogRecord(0, 7, b""), LogRecord(1, 3, b""), LogRecord(0, 5, b"")]
    assert next_offsets(records) == {0: 8, 1: 4}


def test_factories_choose_sqlite_without_kafka(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    log, consumer = open_event_log(settings), open_consumer(settings)
    assert isinstance(log, SqliteEventLog) and isinstance(consumer, SqliteEventConsumer)
    log.append(events(2))
    assert len(consumer.poll(10, 0.1)) == 2
    assert settings.event_log_path.exists()


def _age(path: Path, seconds: float) -> None:
    """Make every message look appended ``seconds`` ago."""
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE messages SET appended_at = ?", (time.time() - seconds,))


def test_retention_deletes_only_committed_events_older_than_the_horizon(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = SqliteEventLog(path)
    log.append(events(10))
    _age(path, 3600)
    log.append(events(2, user="fresh"))  # offsets 11, 12: young
    consumer = SqliteEventConsumer(path, group_id="g", retention_s=60)
    consumer.commit(consumer.poll(6, 0.1))  # commits 1..6: those six go, 7..10 are uncommitted
    assert [r.offset for r in SqliteEventConsumer(path, group_id="other").poll(20, 0.1)] == [
        *range(7, 13)
    ]
    consumer.commit(consumer.poll(20, 0.1))  # all committed: the old ones go, the young stay
    left = SqliteEventConsumer(path, group_id="other").poll(20, 0.1)
    assert [InteractionEvent.from_bytes(r.value).user_id for r in left] == ["fresh0", "fresh1"]
    assert consumer.committed_offset() == 13  # positions are kept: offsets are never reused
    log.append(events(1, user="next"))
    assert [r.offset for r in consumer.poll(5, 0.1)] == [13]


def test_retention_zero_keeps_every_event(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # CCD_LOG_RETENTION_S defaults to 0
    log = SqliteEventLog(settings.event_log_path)
    log.append(events(5))
    _age(settings.event_log_path, 10 * 365 * 86400)
    consumer = open_consumer(settings)
    consumer.commit(consumer.poll(5, 0.1))
    assert len(SqliteEventConsumer(settings.event_log_path, group_id="other").poll(20, 0.1)) == 5


def test_retention_keeps_what_any_consumer_group_has_not_committed(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    SqliteEventLog(path).append(events(10))
    _age(path, 3600)
    slow = SqliteEventConsumer(path, group_id="indexer")
    slow.commit(slow.poll(3, 0.1))  # this group is at offset 4
    trainer = SqliteEventConsumer(path, group_id="trainer", retention_s=60)
    trainer.commit(trainer.poll(10, 0.1))
    assert [r.offset for r in slow.poll(20, 0.1)] == [*range(4, 11)]  # 1..3 went, 4.. stayed
