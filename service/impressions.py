"""Impressions (what each recommendation answer showed) and the store that keeps them.

Order of things, per answer:

1. The route calls ``ImpressionRecorder.record(user, items, version, arm)``: one id
   (``new_recommendation_id``: 9 random bytes as 12 URL-safe characters), one ``Impression``
   and one ``deque.append``. Nothing else runs on the request path (measured in
   docs/BENCHMARKS.md, "Impressions": p50/p99 with and without).
2. A background thread (``impressions``) drains that buffer every ``FLUSH_S``: it hands the
   batch to the in-memory attribution index (``service.attribution``) and writes it to the
   impression store, one round trip per batch: a Redis stream ``{prefix}:impressions``
   (``XADD ... MAXLEN ~ impressions_max``, pipelined) when Redis is configured, else the table
   ``impressions`` of ``data_dir/impressions.sqlite``, trimmed to ``impressions_max`` rows.

Bounds: the buffer holds at most ``impressions_max`` impressions (more are dropped and counted,
``ccd_impressions_dropped_total``: a stalled store never grows the server); the stream and the
table hold about ``impressions_max`` (Redis trims ``~``: whole macro nodes, a few dozen entries
over at most). A store that fails loses that batch for the record (counted, and logged once
when the store goes down and once when it is back; not retried); attribution, which works on
the in-memory index, does not depend on it.
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from contracts.redis_client import connect
from contracts.settings import Settings
from contracts.throttle import OutageLog
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

# Arm of every impression while no A/B split is configured.
DEFAULT_ARM = "default"
# How often the background thread drains the buffer.
FLUSH_S = 0.2


def new_recommendation_id() -> str:
    """A fresh id: 72 random bits as 12 URL-safe base64 characters (valid in an event's
    ``recommendation_id``).

    Examples:
        >>> rid = new_recommendation_id()
        >>> len(rid), rid.replace("-", "").replace("_", "").isalnum()
        (12, True)
    """
    return base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")


@dataclass(slots=True, eq=False)
class Impression:
    """One answer: ``items`` (best first) shown to ``user_id`` (None for similar items) by model
    ``version`` of ``arm`` at ``at`` (epoch seconds, server clock). ``hits``: the items later
    attributed to it (filled by ``service.attribution``)."""

    recommendation_id: str
    user_id: str | None
    items: tuple[str, ...]
    version: int
    arm: str
    at: float
    hits: set[str] | None = field(default=None)

    def to_json(self) -> bytes:
        """The stored form (a Redis stream entry's ``impression`` field, a table row): one
        JSON object, ``hits`` left out (they live in the attribution index only).

        Examples:
            >>> Impression("r1", "u7", ("i3", "i1"), 4, "default", 1.5).to_json()
            b'{"id":"r1","user":"u7","items":["i3","i1"],"version":4,"arm":"default","at":1.5}'
        """
        return orjson.dumps(
            {
                "id": self.recommendation_id,
                "user": self.user_id,
                "items": self.items,
                "version": self.version,
                "arm": self.arm,
                "at": self.at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Impression:
        """Inverse of ``to_json``.

        Examples:
            >>> one = Impression("r1", None, ("i3",), 4, "default", 1.5)
            >>> Impression.from_json(one.to_json())
            Impression(recommendation_id='r1', user_id=None, items=('i3',), version=4, \
arm='default', at=1.5, hits=None)
        """
        fields = orjson.loads(raw)
        return cls(
            recommendation_id=fields["id"],
            user_id=fields["user"],
            items=tuple(fields["items"]),
            version=fields["version"],
            arm=fields["arm"],
            at=fields["at"],
        )


class ImpressionStore(Protocol):
    """Where impressions are kept for the record (bounded)."""

    def write(self, batch: list[Impression]) -> None: ...

    def recent(self, count: int) -> list[Impression]:
        """The newest ``count`` impressions, newest first."""

    def close(self) -> None: ...


class RedisImpressionStore:
    """A Redis stream capped at about ``max_len`` entries (``XADD MAXLEN ~``)."""

    def __init__(self, url: str, prefix: str, max_len: int) -> None:
        self._client = connect(url, socket_timeout=2.0)
        self.key = f"{prefix}:impressions"
        self._max_len = max_len

    def write(self, batch: list[Impression]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for impression in batch:
            entry = {"impression": impression.to_json()}
            pipe.xadd(self.key, entry, maxlen=self._max_len, approximate=True)  # type: ignore[arg-type]
        pipe.execute()

    def recent(self, count: int) -> list[Impression]:
        entries = self._client.xrevrange(self.key, count=count)
        return [Impression.from_json(fields[b"impression"]) for _, fields in entries]

    def close(self) -> None:
        self._client.close()


class SqliteImpressionStore:
    """Table ``impressions`` (seq, value: ``Impression.to_json``) of an SQLite file, trimmed to
    the newest ``max_len`` rows. WAL with ``synchronous=NORMAL``: a power cut may lose the last
    batches, never corrupt the file (one JSON column and no fsync per batch: ~15 µs per
    impression against ~40 with six columns and full sync, measured on a busy core)."""

    def __init__(self, path: Path, max_len: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS impressions "
            "(seq INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)"
        )
        self._max_len = max_len
        self._lock = threading.Lock()

    def write(self, batch: list[Impression]) -> None:
        rows = [(impression.to_json(),) for impression in batch]
        with self._lock, self._connection:
            self._connection.executemany("INSERT INTO impressions (value) VALUES (?)", rows)
            self._connection.execute(
                "DELETE FROM impressions WHERE seq <= (SELECT MAX(seq) FROM impressions) - ?",
                (self._max_len,),
            )

    def recent(self, count: int) -> list[Impression]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT value FROM impressions ORDER BY seq DESC LIMIT ?", (count,)
            ).fetchall()
        return [Impression.from_json(value) for (value,) in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def open_impression_store(settings: Settings) -> ImpressionStore:
    """The Redis stream when Redis is configured, else the embedded table under ``data_dir``."""
    if settings.uses_redis:
        assert settings.redis_url is not None
        return RedisImpressionStore(
            settings.redis_url, settings.redis_prefix, settings.impressions_max
        )
    return SqliteImpressionStore(settings.data_dir / "impressions.sqlite", settings.impressions_max)


class ImpressionRecorder:
    """The hot-path side: ``record`` buffers, a background thread stores and indexes.

    ``on_batch`` (the attribution index's ``add``) runs in that thread with each drained batch.
    With ``enabled=False`` ``record`` only makes the id (answers always carry one).
    """

    def __init__(
        self,
        store: ImpressionStore | None,
        metrics: ServiceMetrics,
        max_buffered: int,
        on_batch: Callable[[list[Impression]], None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.enabled = enabled and store is not None
        self._metrics = metrics
        self._max_buffered = max_buffered
        self._on_batch = on_batch
        self._buffer: deque[Impression] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "impression store")  # one line down, one line back
        self._flush_lock = threading.Lock()

    def record(
        self, user_id: str | None, items: list[str], version: int, arm: str = DEFAULT_ARM
    ) -> str:
        """Buffers one impression; returns its ``recommendation_id``."""
        rid = new_recommendation_id()
        if self.enabled:
            if len(self._buffer) < self._max_buffered:
                impression = Impression(rid, user_id, tuple(items), version, arm, time.time())
                self._buffer.append(impression)
            else:
                self._metrics.impressions_dropped.inc()
        return rid

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush()
        self.flush()

    def flush(self, max_batch: int | None = None) -> int:
        """Drains the buffer into the index and the store; returns how many impressions. Also
        called by the tailer before it attributes events (``service.app``), so that an event
        read right after its impression finds it; one flush at a time keeps the time order."""
        with self._flush_lock:
            batch = []
            limit = self._max_buffered if max_batch is None else max_batch
            while self._buffer and len(batch) < limit:
                batch.append(self._buffer.popleft())
            if not batch:
                return 0
            self._metrics.impressions.inc(len(batch))
            if self._on_batch is not None:
                self._on_batch(batch)
            self._store(batch)
            return len(batch)

    def _store(self, batch: list[Impression]) -> None:
        assert self.store is not None
        try:
            self.store.write(batch)
        except Exception as error:  # lost for the record, counted; attribution has them
            self._metrics.impressions_store_failures.inc(len(batch))
            self._outage.failed(error)
            return
        self._outage.succeeded()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
