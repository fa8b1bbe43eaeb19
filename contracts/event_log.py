"""The event stream both roles use: the server appends accepted events, the trainer consumes them.

Two implementations live behind these protocols (see ``open_event_log`` / ``open_consumer``):
Kafka when ``CCD_KAFKA_BOOTSTRAP_SERVERS`` is set, else an embedded SQLite log in ``data_dir``.
Delivery is at-least-once: the trainer commits a position only after the block that holds it has
been published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from contracts.events import InteractionEvent


class EventLogUnavailable(RuntimeError):
    """The log cannot accept events right now (e.g. the broker is down); retry later."""


@dataclass(frozen=True)
class LogRecord:
    """One raw message as read from the log, with the position needed to commit past it."""

    partition: int
    offset: int
    value: bytes


class EventLog(Protocol):
    """Producer side."""

    def append(self, events: list[InteractionEvent]) -> int:
        """Durably append ``events`` (all or none); returns the count. Raises
        ``EventLogUnavailable`` when the log cannot take them."""

    def append_raw(self, values: list[bytes], keys: list[str | None]) -> int:
        """Append already-encoded messages (used by tests to inject malformed input)."""

    def close(self) -> None: ...


class EventConsumer(Protocol):
    """Consumer side, one per trainer; resumes from the last committed positions."""

    def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]: ...

    def commit(self, records: list[LogRecord]) -> None:
        """Mark everything up to and including ``records`` (per partition) as processed."""

    def dead_letter(self, record: LogRecord, reason: str) -> None:
        """Park a malformed message where an operator can find it."""

    def close(self) -> None: ...
