"""Read interaction files and push events to the configured event log (``ccd produce``)."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from contracts.event_log import EventLog, EventLogUnavailable, open_event_log
from contracts.events import InteractionEvent
from contracts.settings import Settings

log = logging.getLogger(__name__)

# Accepted header names (compared case-insensitively) of each event field.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id", "user", "userid"),
    "item_id": ("item_id", "item", "movieid", "itemid"),
    "timestamp": ("timestamp", "time", "ts"),
    "event_id": ("event_id",),
    "type": ("type",),
    "weight": ("weight",),
}
MAX_BATCH = 500
# Attempts (with doubling backoff from 0.5 s) before an unavailable log stops ``produce``.
APPEND_ATTEMPTS = 6


def read_events(path: Path | str) -> list[InteractionEvent]:
    """Events of a CSV/TSV file (header row naming the columns, see ``COLUMN_ALIASES``) or a
    JSONL file (one event object a line), in time order (stable: ties keep file order). Rows
    that are not valid events are skipped with a warning. The whole file is held in memory to
    sort it (about 1 KB per event)."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        events = _read_jsonl(path)
    else:
        events = _read_delimited(path)
    return sorted(events, key=lambda event: event.timestamp)


def check_events_file(path: Path | str) -> None:
    """Raises OSError (missing, a directory, unreadable) or ValueError (a CSV/TSV header
    without user and item columns, not UTF-8) when ``path`` cannot be read as events, before a
    process is started to stream it. Reads only the first line."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as file:
        header = file.readline()
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return  # each line stands alone: a bad one is skipped with a warning, as when read
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(header)
    _map_columns(next(csv.reader([header], delimiter=delimiter), []), path)


def _read_jsonl(path: Path) -> list[InteractionEvent]:
    events, bad = [], []
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                events.append(InteractionEvent.from_bytes(line))
            except (ValueError, ValidationError):
                bad.append(line_number)
    _warn_skipped(path, bad)
    return events


def _read_delimited(path: Path) -> list[InteractionEvent]:
    with open(path, newline="", encoding="utf-8-sig") as file:  # -sig: tolerate a BOM
        delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(file.readline())
        file.seek(0)
        reader = csv.reader(file, delimiter=delimiter)
        columns = _map_columns(next(reader, []), path)
        events, bad = [], []
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                fields = {name: row[index] for name, index in columns.items() if row[index] != ""}
                events.append(InteractionEvent(**fields))
            except (IndexError, ValueError, ValidationError):
                bad.append(line_number)
    _warn_skipped(path, bad)
    return events


def _sniff_delimiter(header: str) -> str:
    return max(",\t;|", key=header.count)


def _map_columns(header: list[str], path: Path) -> dict[str, int]:
    """Field name -> column index, from the header row."""
    positions = {name.strip().lower(): index for index, name in enumerate(header)}
    columns = {}
    for field, aliases in COLUMN_ALIASES.items():
        found = [positions[alias] for alias in aliases if alias in positions]
        if found:
            columns[field] = found[0]
    missing = {"user_id", "item_id"} - columns.keys()
    if missing:
        raise ValueError(
            f"{path}: no column for {sorted(missing)} in header {header}; expected one of "
            f"{COLUMN_ALIASES['user_id']} and {COLUMN_ALIASES['item_id']}"
        )
    if "timestamp" not in columns:
        log.warning("%s has no timestamp column: events keep file order, stamped now", path)
    return columns


def _warn_skipped(path: Path, line_numbers: list[int]) -> None:
    if line_numbers:
        log.warning(
            "%s: skipped %d malformed rows (first at lines %s)",
            path,
            len(line_numbers),
            line_numbers[:5],
        )


def produce(
    settings: Settings,
    events: Iterable[InteractionEvent],
    rate: float | None = None,
    total: int | None = None,
) -> int:
    """Append ``events`` to the configured log in batches, at most ``rate`` events per second
    (None = as fast as possible) and at most ``total`` events; returns the count appended."""
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    if total is not None:
        events = islice(events, total)
    batch_size = MAX_BATCH if rate is None else max(1, min(MAX_BATCH, int(rate / 10)))
    event_log = open_event_log(settings)
    sent = 0
    started = time.monotonic()
    try:
        with tqdm(total=total, unit="ev", desc="produce", smoothing=0.1) as progress:
            for batch in _batched(events, batch_size):
                _append_with_retry(event_log, batch)
                sent += len(batch)
                progress.update(len(batch))
                if rate is not None:
                    time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    finally:
        event_log.close()
    return sent


def _batched(events: Iterable[InteractionEvent], size: int) -> Iterator[list[InteractionEvent]]:
    iterator = iter(events)
    while batch := list(islice(iterator, size)):
        yield batch


def _append_with_retry(event_log: EventLog, batch: list[InteractionEvent]) -> None:
    delay = 0.5
    for attempt in range(1, APPEND_ATTEMPTS + 1):
        try:
            event_log.append(batch)
            return
        except EventLogUnavailable as error:
            if attempt == APPEND_ATTEMPTS:
                raise
            log.warning("event log unavailable (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)
            delay *= 2


def write_jsonl(path: Path | str, events: Iterable[InteractionEvent]) -> int:
    """Write ``events`` one JSON object a line (the format ``read_events`` reads back)."""
    count = 0
    with open(path, "wb") as file:
        for event in events:
            file.write(event.to_bytes() + b"\n")
            count += 1
    return count
