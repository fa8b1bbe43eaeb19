"""Which items each user has interacted with, kept fresh from the event stream.

A background tailer reads the whole event log from its beginning with its own reader (it never
commits, so it does not disturb the trainer's positions) and then follows new events; the
recommendation endpoints exclude these items. Events the server itself accepts are added at once
as well, so a user's own fresh interactions are excluded even before the tailer reads them back.

Memory cost: one Python ``set`` of item-id strings per user, each distinct item id stored once
(interned here). Measured with tracemalloc (CPython 3.11, ids excluded): 77 bytes per distinct
(user, item) pair at 10 items per user (the per-user dict entry and set header weigh in), 46 at
50 and 43 at 200, plus ~50 bytes per distinct id string. So 1M users with 100 items each take
about 4.5 GB (issue 15 measured 81 B of RSS per pair in a running server, and 3.3 s of replay per
million events before it is ready). That is the embedded mode's index (``CCD_SEEN_STORE=memory``,
the default); with ``CCD_SEEN_STORE=redis`` the sets live in Redis (``service.seen_store``),
filled by ``ccd indexer`` (``service.indexer``), and this module's tailer only follows the log
from its end for outcome attribution (``build_seen``).

Both indexes have the same verbs (``SeenIndex``), so the routes do not care which one serves.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import orjson

from contracts.settings import Settings
from service.log_gaps import log_lost, seek_to_start
from service.metrics import ServiceMetrics
from service.seen_store import RedisSeenIndex

log = logging.getLogger(__name__)


class SeenIndex(Protocol):
    """What the routes use: a user's items (one or a batch, one round trip for a batch), adding
    the pairs a server accepts, whether an item was ever named, and counts for the dashboard."""

    def items_of(self, user_id: str) -> frozenset[str]: ...

    def items_of_many(self, user_ids: Sequence[str]) -> list[frozenset[str]]: ...

    def add(self, pairs: Iterable[tuple[str, str]]) -> int: ...

    def knows_item(self, item_id: str) -> bool: ...

    @property
    def n_users(self) -> int | None: ...

    @property
    def n_pairs(self) -> int | None: ...

    def counts(self) -> tuple[int, int] | None:
        """(n_users, n_pairs) read together (None if unknown: Redis unreachable)."""

    def close(self) -> None: ...


class SeenItems:
    """Thread-safe ``user_id -> set(item_id)`` index (in this process)."""

    def __init__(self) -> None:
        self._by_user: dict[str, set[str]] = {}
        self._interned: dict[str, str] = {}
        self._pairs = 0
        self._lock = threading.Lock()

    def add(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Records (user_id, item_id) pairs; returns how many were new."""
        added = 0
        with self._lock:
            for user, item in pairs:
                item = self._interned.setdefault(item, item)
                items = self._by_user.get(user)
                if items is None:
                    items = self._by_user[user] = set()
                if item not in items:
                    items.add(item)
                    added += 1
            self._pairs += added
        return added

    def items_of(self, user_id: str) -> frozenset[str]:
        """A snapshot of the user's items (a copy, so later additions cannot race the caller)."""
        with self._lock:
            items = self._by_user.get(user_id)
            return frozenset(items) if items else frozenset()

    def items_of_many(self, user_ids: Sequence[str]) -> list[frozenset[str]]:
        """``items_of`` of each user, in order."""
        return [self.items_of(user) for user in user_ids]

    def close(self) -> None:
        """Nothing to release (the interface of ``service.seen_store.RedisSeenIndex``)."""

    def knows_item(self, item_id: str) -> bool:
        """Whether some event named this item."""
        return item_id in self._interned

    @property
    def n_users(self) -> int:
        return len(self._by_user)

    @property
    def n_pairs(self) -> int:
        return self._pairs

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._by_user), self._pairs


class EventSource(Protocol):
    """A private, non-committing reader of the event log from its beginning. ``records_lost``:
    records the log deleted before this reader read them (retention), so far."""

    records_lost: int

    def read(self, max_records: int, timeout_s: float) -> list[bytes]: ...

    def at_end(self) -> bool:
        """True once everything that was in the log when the reader started has been read."""

    def close(self) -> None: ...


# What records deleted before the tailer read them mean, in its ERROR line (service.log_gaps).
SEEN_GAP_CONSEQUENCE = (
    "this server's seen-items index misses those events' pairs, so recommendations may include "
    "items those users already interacted with (until the users interact with them again)"
)
ATTRIBUTION_GAP_CONSEQUENCE = "outcome attribution misses those events (hits are undercounted)"


class SqliteSource:
    """Reads the embedded log's ``messages`` table (``contracts/event_log.py``: ``seq`` is the
    offset, ``value`` the wire message) in offset order. Only SELECTs: WAL mode lets this run
    beside the server's and the producer's appends."""

    def __init__(
        self, path: Path, poll_s: float = 0.2, consequence: str = SEEN_GAP_CONSEQUENCE
    ) -> None:
        self._path = path
        self._poll_s = poll_s
        self._consequence = consequence
        self._connection: sqlite3.Connection | None = None
        # The log's trim waits for consumer groups, not for this reader: offsets are gap-free
        # (AUTOINCREMENT, one writer transaction at a time), so a jump past ``_after`` is a trim.
        self.records_lost = 0
        self._after = 0  # last offset read; offsets start at 1
        self._end_at_start: int | None = None

    def _query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        if self._connection is None:
            if not self._path.exists():  # the first writer creates it
                return []
            self._connection = sqlite3.connect(self._path, timeout=30.0, check_same_thread=False)
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):  # the file exists but no writer set it up yet
                return []
            raise

    def read(self, max_records: int, timeout_s: float) -> list[bytes]:
        if self._end_at_start is None:
            rows = self._query("SELECT MAX(seq) FROM messages")
            self._end_at_start = int(rows[0][0] or 0) if rows else 0
        rows = self._query(
            "SELECT seq, value FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._after, max_records),
        )
        if rows:
            self._count_trimmed(int(rows[0][0]))
            self._after = int(rows[-1][0])
        else:
            time.sleep(min(timeout_s, self._poll_s))
        return [bytes(value) for _, value in rows]

    def _count_trimmed(self, first_read: int) -> None:
        """Counts and reports the offsets between the last one read and ``first_read``. Before
        the first read nothing is lost: like a new Kafka reader, this one starts at the oldest
        record still there (whatever was trimmed before was learned and committed)."""
        if self._after > 0 and first_read > self._after + 1:
            self.records_lost += first_read - self._after - 1
            log_lost(
                log,
                self._after + 1,
                first_read,
                str(self._path),
                "seen-items tailer",
                self._consequence,
            )

    def at_end(self) -> bool:
        return self._end_at_start is not None and self._after >= self._end_at_start

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class KafkaSource:
    """Reads every partition of the topic from the beginning with no consumer group; with
    ``since_s`` (epoch seconds), the partitions that exist at the first read from their first
    record stamped at or after it instead (nothing to catch up on: ``at_end`` at once; however
    late the reader is assigned, no record of that time on is skipped; partitions added later
    still from their start).

    Positions are never moved silently (``auto_offset_reset="none"``, like ``ccd indexer``): when
    retention deleted records before this reader got to them, ``service.log_gaps`` logs one ERROR
    naming the partition, the offsets lost and ``consequence``, adds them to ``records_lost``,
    and the reader goes on from the oldest record left."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        since_s: float | None = None,
        consequence: str = SEEN_GAP_CONSEQUENCE,
    ) -> None:
        from kafka import KafkaConsumer

        self._topic = topic
        self._since_ms = None if since_s is None else int(since_s * 1000)
        self._consequence = consequence
        self.records_lost = 0
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            client_id="ccd-seen-tailer",
        )
        self._targets: dict = {}
        self._assigned: set[int] = set()
        self._reached_end = False
        self._next_partition_check = 0.0

    def _assign_new_partitions(self) -> None:
        """(Re)assigns when the topic appears or gains partitions; new ones start at offset 0."""
        from kafka import TopicPartition

        now = time.monotonic()
        if now < self._next_partition_check:
            return
        # Soon while the topic is missing (the first append creates it), rarely afterwards.
        self._next_partition_check = now + (30.0 if self._assigned else 1.0)
        partitions = self._consumer.partitions_for_topic(self._topic) or set()
        new = set(partitions) - self._assigned
        if not new:
            return
        self._assigned |= new
        assigned = [TopicPartition(self._topic, p) for p in sorted(self._assigned)]
        fresh = [TopicPartition(self._topic, p) for p in sorted(new)]
        self._consumer.assign(assigned)
        if self._since_ms is not None and not self._reached_end:
            found = self._consumer.offsets_for_times({tp: self._since_ms for tp in fresh})
            for tp in fresh:
                if found.get(tp) is None:  # no record that recent yet
                    self._consumer.seek_to_end(tp)
                else:
                    self._consumer.seek(tp, found[tp].offset)
            self._reached_end = True
            return
        self._consumer.seek_to_beginning(*fresh)
        if not self._reached_end:
            self._targets.update(self._consumer.end_offsets(fresh))

    def read(self, max_records: int, timeout_s: float) -> list[bytes]:
        self._assign_new_partitions()
        if not self._assigned:
            self._reached_end = True  # no topic yet: nothing to catch up on
            time.sleep(timeout_s)
            return []
        batches = self._poll(max_records, timeout_s)
        values = [record.value for records in batches.values() for record in records]
        if not self._reached_end:
            self._reached_end = all(
                self._consumer.position(tp) >= end for tp, end in self._targets.items()
            )
        return values

    def _poll(self, max_records: int, timeout_s: float) -> dict:
        """The next records by partition; none when a position was gone and has just been placed
        again (``service.log_gaps``; the next call reads from there)."""
        from kafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

        try:
            return self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except NoOffsetForPartitionError as error:  # every partition is placed when assigned
            partitions, lost_from = error.args[0], {}
        except OffsetOutOfRangeError as error:  # retention deleted what was not read yet
            partitions, lost_from = error.args[0], error.args[0]
        self.records_lost += seek_to_start(
            self._consumer, partitions, lost_from, "seen-items tailer", self._consequence, log
        )
        return {}

    def at_end(self) -> bool:
        return self._reached_end

    def close(self) -> None:
        self._consumer.close()


def source_for(settings: Settings, from_now: bool = False) -> Callable[[], EventSource]:
    """The reader matching the configured event log (Kafka, else the embedded SQLite log);
    ``from_now`` (Kafka only): from the records stamped at or after the reader's opening, for
    outcome attribution alone (what a gap in the log costs, in its ERROR line)."""
    if settings.uses_kafka:
        servers, topic = settings.kafka_bootstrap_servers, settings.kafka_topic
        if from_now:
            return lambda: KafkaSource(servers, topic, time.time(), ATTRIBUTION_GAP_CONSEQUENCE)
        return lambda: KafkaSource(servers, topic)
    path = settings.event_log_path
    consequence = ATTRIBUTION_GAP_CONSEQUENCE if from_now else SEEN_GAP_CONSEQUENCE
    return lambda: SqliteSource(path, consequence=consequence)


def parse_pair(raw: bytes) -> tuple[str, str] | None:
    """(user_id, item_id) of one wire message, or None if it is not a readable event. Lighter
    than full validation: the tailer must keep up with the whole stream."""
    fields = parse_fields(raw)
    return None if fields is None else fields[:2]


def parse_fields(raw: bytes) -> tuple[str, str, str | None] | None:
    """(user_id, item_id, recommendation_id or None) of one wire message, or None.

    Examples:
        >>> parse_fields(b'{"user_id": "u1", "item_id": "i2", "recommendation_id": "r9"}')
        ('u1', 'i2', 'r9')
        >>> parse_fields(b'{"user_id": "u1"}') is None
        True
    """
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    user, item = event.get("user_id"), event.get("item_id")
    if isinstance(user, str) and isinstance(item, str) and user and item:
        rid = event.get("recommendation_id")
        return user, item, rid if isinstance(rid, str) and rid else None
    return None


class SeenTailer:
    """Background thread feeding ``SeenItems`` from an ``EventSource``; ``observe`` (outcome
    attribution, ``service.attribution``) gets every batch of readable events as
    (user_id, item_id, recommendation_id or None). With ``seen`` None it feeds ``observe`` only
    and is caught up from its start (it reads from the log's end: nothing to replay)."""

    def __init__(
        self,
        open_source: Callable[[], EventSource],
        seen: SeenItems | None,
        metrics: ServiceMetrics,
        batch_size: int = 5000,
        timeout_s: float = 0.5,
        observe: Callable[[list[tuple[str, str, str | None]]], object] | None = None,
    ) -> None:
        self._open_source = open_source
        self._observe = observe
        self._seen = seen
        self._metrics = metrics
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        self.records_lost = 0  # deleted from the log before they were read (all readers opened)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._seen is None:
            self.caught_up.set()
        self._thread = threading.Thread(target=self._run, name="seen-tailer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        source: EventSource | None = None
        counted = 0  # of source.records_lost
        while not self._stop.is_set():
            try:
                if source is None:
                    source, counted = self._open_source(), 0
                self._consume(source.read(self._batch_size, self._timeout_s))
                if source.records_lost > counted:
                    self.records_lost += source.records_lost - counted
                    self._metrics.seen_records_lost.inc(source.records_lost - counted)
                    counted = source.records_lost
                if source.at_end():
                    self.caught_up.set()
            except Exception:
                log.exception("seen-items tailer failed; reopening the reader")
                if source is not None:
                    _close_quietly(source)
                    source = None
                self._stop.wait(1.0)
        if source is not None:
            _close_quietly(source)

    def _consume(self, values: list[bytes]) -> None:
        if not values:
            return
        events = [fields for raw in values if (fields := parse_fields(raw)) is not None]
        pairs = [(user, item) for user, item, _ in events]
        if self._seen is not None:
            self._seen.add(pairs)
            self._metrics.seen_users.set(self._seen.n_users)
            self._metrics.seen_pairs.set(self._seen.n_pairs)
        if self._observe is not None and events:
            try:
                self._observe(events)
            except Exception:  # attribution must never make the tailer re-read the log
                log.exception("outcome attribution failed on %d events", len(events))
        self._metrics.seen_events.inc(len(pairs))
        if len(pairs) < len(values):
            self._metrics.seen_malformed.inc(len(values) - len(pairs))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def _close_quietly(source: EventSource) -> None:
    try:
        source.close()
    except Exception:
        log.warning("closing the seen-items reader failed", exc_info=True)


def build_seen(
    settings: Settings,
    metrics: ServiceMetrics,
    observe: Callable[[list[tuple[str, str, str | None]]], object] | None = None,
) -> tuple[SeenIndex, SeenTailer]:
    """The server's seen-items index and its log tailer (started by the caller).

    ``CCD_SEEN_STORE=memory``: ``SeenItems`` in this process, fed by a tailer that replays the
    log from its start (ready once caught up). ``redis``: ``RedisSeenIndex`` (filled by
    ``ccd indexer``), and a tailer that reads the events from its start on for ``observe`` only
    (ready at once: no replay, no pairs held here)."""
    if settings.seen_store == "redis":
        assert settings.redis_url is not None  # Settings refuses redis without it
        index = RedisSeenIndex(settings.redis_url, settings.redis_prefix, settings.seen_timeout_s)
        return index, SeenTailer(
            source_for(settings, from_now=True), None, metrics, observe=observe
        )
    seen = SeenItems()
    return seen, SeenTailer(source_for(settings), seen, metrics, observe=observe)
