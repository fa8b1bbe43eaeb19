"""Reading interaction files (CSV/TSV/JSONL) and producing them to the embedded log."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.event_log import SqliteEventConsumer
from contracts.events import InteractionEvent
from contracts.settings import Settings
from trainer.producer import produce, read_events, write_jsonl

SHARED_RATINGS = (
    Path(__file__).resolve().parents[2].parent / "shared/data/ml-latest-small/ratings.csv"
)


def triples(events: list[InteractionEvent]) -> list[tuple[str, str, float]]:
    return [(e.user_id, e.item_id, e.timestamp) for e in events]


def test_movielens_style_csv_is_sorted_by_time(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    rows = "userId,movieId,rating,timestamp\n1,10,4.0,300\n2,20,3.5,100\n1,30,5.0,200\n"
    path.write_text("\ufeff" + rows, encoding="utf-8")  # a BOM, as spreadsheet exports write
    assert triples(read_events(path)) == [
        ("2", "20", 100.0),
        ("1", "30", 200.0),
        ("1", "10", 300.0),
    ]


def test_tsv_with_other_header_names_and_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(
        "time\tUSER_ID\titem_id\tevent_id\n"
        "2024-01-01T00:00:10Z\talice\tbook\te1\n"
        "2024-01-01T00:00:05Z\tbob\tpen\te2\n"
    )
    events = read_events(path)
    assert [(e.user_id, e.item_id, e.event_id) for e in events] == [
        ("bob", "pen", "e2"),
        ("alice", "book", "e1"),
    ]
    assert events[0].timestamp == 1704067205.0


def test_ties_keep_file_order_and_bad_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user,item,time\na,1,5\nb,2,5\n,3,1\nc,4,not-a-time\nd,5\n")
    assert triples(read_events(path)) == [("a", "1", 5.0), ("b", "2", 5.0)]


def test_a_header_without_user_or_item_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("customer,product,time\na,1,5\n")
    with pytest.raises(ValueError, match="user_id"):
        read_events(path)


def test_jsonl_round_trip_sorted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [
        InteractionEvent(user_id="u1", item_id="i1", timestamp=20, weight=2.0, type="click"),
        InteractionEvent(user_id="u2", item_id="i2", timestamp=10, event_id="x"),
    ]
    assert write_jsonl(path, events) == 2
    with open(path, "ab") as file:
        file.write(b"{broken\n\n")
    assert read_events(path) == [events[1], events[0]]


def test_produce_appends_everything_or_the_first_total(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    events = [InteractionEvent(user_id=f"u{i}", item_id="i", timestamp=i) for i in range(1_203)]
    assert produce(settings, events) == 1_203
    assert produce(settings, iter(events), total=7) == 7
    consumer = SqliteEventConsumer(settings.event_log_path, group_id="check")
    records = consumer.poll(5_000, 0.1)
    assert len(records) == 1_210
    assert InteractionEvent.from_bytes(records[-1].value).user_id == "u6"


def test_produce_respects_the_rate(tmp_path: Path) -> None:
    import time

    events = [InteractionEvent(user_id="u", item_id=str(i), timestamp=i) for i in range(60)]
    started = time.monotonic()
    assert produce(Settings(data_dir=tmp_path), events, rate=100.0) == 60
    assert 0.5 <= time.monotonic() - started < 3.0


@pytest.mark.skipif(not SHARED_RATINGS.exists(), reason="../shared/data/ml-latest-small absent")
def test_reads_the_shared_movielens_ratings() -> None:
    events = read_events(SHARED_RATINGS)
    assert len(events) == 100_836
    times = [e.timestamp for e in events]
    assert times == sorted(times)
