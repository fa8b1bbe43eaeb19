"""The event stream both roles use: the server appends accepted events, the trainer consumes them.

Two implementations live behind these protocols (see ``open_event_log`` / ``open_consumer``):
Kafka when ``CCD_KAFKA_BOOTSTRAP_SERVERS`` is set, else an embedded SQLite log in ``data_dir``.
Delivery is at-least-once: the trainer commits a position only after the block that holds it has
been published.

Partitions: the events topic may have any number (``CCD_KAFKA_PARTITIONS`` when this service
creates it); events are keyed by user, so a user's events stay in order. The trainer's consumer
reads all of them and resumes each at the position its checkpoint holds (``resume``); a partition
the checkpoint does not know (added since) is read from its start, and a checkpoint naming a
partition the topic no longer has is refused (``LogPositionError``). A position Kafka's retention
already deleted stops the trainer with a ``LogPositionError`` naming the recovery, unless
``CCD_KAFKA_SKIP_DELETED`` accepts the loss. The embedded log deletes committed events older than
``CCD_LOG_RETENTION_S`` (0: never).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from contracts.events import InteractionEvent

if TYPE_CHECKING:
    from contracts.settings import Settings

log = logging.getLogger(__name__)

# Partitions of a topic this service creates, by default (CCD_KAFKA_PARTITIONS). The one trainer
# reads all of them anyway; a single partition keeps the global arrival order, so blocks are cut
# chronologically even when a backlog is replayed (with several, a replayed block holds whatever
# the consumer fetched from each partition; each user's events stay in order).
DEFAULT_PARTITIONS = 1
# A dead broker must turn into a quick error for the HTTP caller, not a long hang.
KAFKA_TIMEOUT_MS = 5_000
# A block's training can take long; the consumer must not be expelled from its group meanwhile.
KAFKA_MAX_POLL_INTERVAL_MS = 3_600_000
# The trainer's clients retry a lost broker with a doubling wait capped here (kafka-python's
# default cap, 30 s, would leave the trainer idle up to that long after the broker is back).
KAFKA_RECONNECT_BACKOFF_MAX_MS = 2_000
# The embedded log has one partition.
SQLITE_PARTITION = 0
# The dead-letter topic this service creates takes records up to this size, so that the largest
# record a source topic can hold (1 MiB by default) fits with the headers added to it.
DEAD_LETTER_MAX_BYTES = 8 * 1024 * 1024
# A record the dead-letter topic still refuses (one created elsewhere, with a smaller limit) is
# parked with only this many bytes of its value and a header giving the original length.
DEAD_LETTER_TRUNCATED_BYTES = 64 * 1024
# The trainer's consumer checks this often that it owns every partition of the topic, and its
# client refreshes the topic's metadata (partition count) this often.
ASSIGNMENT_CHECK_S = 10.0
KAFKA_METADATA_MAX_AGE_MS = 60_000
# On start, the trainer's consumer reads this many records from the end of each dead-letter
# partition to learn which source positions are parked already (so a re-read after a crash does
# not park them twice); enough for a dead-letter topic the trainer shares with a few others.
DEAD_LETTER_TAIL = 64


class EventLogUnavailable(RuntimeError):
    """The log cannot accept events right now (e.g. the broker is down); retry later."""


class LogPositionError(RuntimeError):
    """The trainer cannot go on from its checkpoint's log positions (records deleted by
    retention, a topic re-created with fewer partitions or records); the message names the
    recovery. Not retried: an operator has to decide."""


Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class LogRecord:
    """One raw message as read from the log, with the position needed to commit past it.
    Kafka can deliver a null ``value`` (a tombstone), a null ``key`` and any ``headers``."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()


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

    def resume(self, positions: dict[int, int]) -> None:
        """Before the first poll: per partition, the next offset the trainer's checkpoint has
        not applied (empty without a checkpoint). Raises ``LogPositionError`` when the log
        cannot serve them."""

    def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]: ...

    def commit(self, records: list[LogRecord]) -> None:
        """Mark everything up to and including ``records`` (per partition) as processed."""

    def dead_letter(self, record: LogRecord, reason: str) -> bool:
        """Park a malformed message (value, key and headers) with ``reason`` where an operator
        can find it; False if it was parked already (re-read after a restart)."""

    def close(self) -> None: ...


def open_event_log(settings: Settings) -> EventLog:
    """The producer side the settings select: Kafka if a bootstrap address is set, else SQLite."""
    if settings.uses_kafka:
        return KafkaEventLog(settings)
    return SqliteEventLog(settings.event_log_path)


def open_consumer(settings: Settings) -> EventConsumer:
    """The consumer side the settings select (the trainer's), positioned after its last commit."""
    if settings.uses_kafka:
        return KafkaEventConsumer(settings)
    return SqliteEventConsumer(
        settings.event_log_path,
        group_id=settings.kafka_group_id,
        retention_s=settings.log_retention_s,
    )


def next_offsets(records: list[LogRecord]) -> dict[int, int]:
    """Per partition, the offset after the last of ``records`` (what a commit stores)."""
    positions: dict[int, int] = {}
    for record in records:
        positions[record.partition] = max(positions.get(record.partition, 0), record.offset + 1)
    return positions


# --- Kafka ----------------------------------------------------------------------------------


def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create the events topic and its dead-letter topic when they do not exist yet, with
    ``partitions`` partitions (default ``settings.kafka_partitions``)."""
    partitions = partitions or settings.kafka_partitions
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=KAFKA_TIMEOUT_MS,
        bootstrap_timeout_ms=KAFKA_TIMEOUT_MS,
        client_id="ccd-admin",
    )
    try:
        missing = {settings.kafka_topic, settings.kafka_dead_letter_topic} - set(
            admin.list_topics()
        )
        for name in sorted(missing):
            # The dead-letter topic takes any record of the events topic plus its headers.
            configs = (
                {"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}
                if name == settings.kafka_dead_letter_topic
                else {}
            )
            try:
                topic = NewTopic(
                    name, num_partitions=partitions, replication_factor=1, topic_configs=configs
                )
                admin.create_topics([topic], timeout_ms=KAFKA_TIMEOUT_MS)
                log.info("created Kafka topic %s with %d partitions", name, partitions)
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile
    finally:
        admin.close()


class KafkaEventLog:
    """Kafka producer (acks=all, key = user id). The connection is opened on first use, so a
    server starts even while the broker is down; each failed append raises quickly."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        with self._lock:
            if self._producer is None:
                try:
                    ensure_topics(self._settings)
                    self._producer = KafkaProducer(
                        bootstrap_servers=self._settings.kafka_bootstrap_servers,
                        acks="all",
                        linger_ms=5,
                        max_block_ms=KAFKA_TIMEOUT_MS,
                        request_timeout_ms=KAFKA_TIMEOUT_MS,
                        delivery_timeout_ms=2 * KAFKA_TIMEOUT_MS,
                        bootstrap_timeout_ms=KAFKA_TIMEOUT_MS,
                        client_id="ccd-producer",
                    )
                except KafkaError as error:
                    raise EventLogUnavailable(f"Kafka is unavailable: {error}") from error
            return self._producer

    def append(self, events: list[InteractionEvent]) -> int:
        return self.append_raw([e.to_bytes() for e in events], [e.user_id for e in events])

    def append_raw(self, values: list[bytes], keys: list[str | None]) -> int:
        from kafka.errors import KafkaError

        producer = self._connect()
        topic = self._settings.kafka_topic
        try:
            futures = [
                producer.send(topic, value=value, key=None if key is None else key.encode())
                for value, key in zip(values, keys, strict=True)
            ]
            producer.flush(timeout=2 * KAFKA_TIMEOUT_MS / 1000)
            for future in futures:
                future.get(timeout=2 * KAFKA_TIMEOUT_MS / 1000)
        except KafkaError as error:
            raise EventLogUnavailable(f"Kafka did not accept the events: {error}") from error
        return len(values)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=KAFKA_TIMEOUT_MS / 1000)
                self._producer = None


def writer_instance_id(settings: Settings) -> str:
    """The static group member id (KIP-345) of the trainer's consumer. Only the holder of the
    trainer's writer lease consumes, so one id suffices; a restarted or standby trainer joining
    with it replaces the dead member at once, where a dynamic member would wait out the dead
    one's session timeout (45 s, measured 42 s after a ``kill -9``)."""
    return f"{settings.kafka_group_id}.writer"


def parse_source(header: bytes | None) -> tuple[str, int, int] | None:
    """``(topic, partition, offset)`` of a dead letter's ``source`` header (None if foreign)."""
    try:
        topic, partition, offset = (header or b"").decode().rsplit("/", 2)
        return topic, int(partition), int(offset)
    except ValueError:
        return None


def read_dead_letter_marks(settings: Settings) -> dict[int, int]:
    """Per partition of the events topic, the highest source offset among the last
    ``DEAD_LETTER_TAIL`` records of each dead-letter partition. The trainer parks records in log
    order, so anything at or below it was parked before a restart. On failure: none known (a
    re-read record is then parked again: at-least-once)."""
    from kafka import KafkaConsumer

    marks: dict[int, int] = {}
    reader = None
    try:
        reader = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=KAFKA_TIMEOUT_MS + 1000,
            client_id="ccd-dead-letter-reader",
        )
        _read_dead_letter_tail(reader, settings, marks)
    except Exception as error:
        log.warning(
            "cannot read the dead-letter topic (%s): re-read records may be parked twice", error
        )
    finally:
        if reader is not None:
            reader.close()
    return marks


def _read_dead_letter_tail(reader: Any, settings: Settings, marks: dict[int, int]) -> None:
    from kafka import TopicPartition

    topic = settings.kafka_dead_letter_topic
    partitions = [
        TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())
    ]
    if not partitions:
        return
    reader.assign(partitions)
    ends = reader.end_offsets(partitions)
    starts = reader.beginning_offsets(partitions)
    for partition in partitions:
        reader.seek(partition, max(starts[partition], ends[partition] - DEAD_LETTER_TAIL))
    deadline = time.monotonic() + 2 * KAFKA_TIMEOUT_MS / 1000
    while any(reader.position(p) < ends[p] for p in partitions):
        if time.monotonic() > deadline:
            raise TimeoutError("reading the tail of the dead-letter topic timed out")
        for messages in reader.poll(timeout_ms=500).values():
            for message in messages:
                _mark_parked(marks, message.headers or (), settings.kafka_topic)


def _mark_parked(marks: dict[int, int], headers: Any, events_topic: str) -> None:
    """Raise ``marks`` to the source position a dead letter's last ``source`` header names."""
    sources = [value for name, value in headers if name == "source"]
    parsed = parse_source(sources[-1]) if sources else None
    if parsed is not None and parsed[0] == events_topic:
        marks[parsed[1]] = max(marks.get(parsed[1], -1), parsed[2])


class KafkaEventConsumer:
    """The trainer's consumer in group ``settings.kafka_group_id``, over every partition of the
    topic; commits explicitly. Each partition starts where ``resume`` put it (the checkpoint's
    position, or the group's commit when that is further), else at the group's commit, else at
    its start. Offsets are never reset silently (``auto_offset_reset="none"``): a position that
    retention deleted raises ``LogPositionError`` unless ``kafka_skip_deleted`` is set."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer

        self._settings = settings
        self._unreachable = False
        self._next: dict[int, int] = {}  # per partition: where to start when it is assigned
        self._checkpointed = False  # resume() got positions: a partition's start is known
        self.skipped_deleted = 0  # records retention deleted, skipped (kafka_skip_deleted)
        self._next_assignment_check = 0.0
        ensure_topics(settings)
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.kafka_group_id,
            group_instance_id=writer_instance_id(settings),
            enable_auto_commit=False,
            auto_offset_reset="none",
            max_poll_interval_ms=KAFKA_MAX_POLL_INTERVAL_MS,
            reconnect_backoff_max_ms=KAFKA_RECONNECT_BACKOFF_MAX_MS,
            metadata_max_age_ms=KAFKA_METADATA_MAX_AGE_MS,
            client_id="ccd-trainer",
        )
        self._consumer.subscribe([settings.kafka_topic], listener=self._listener())
        self._dead_letters = self._dead_letter_producer()
        # Per partition of the events topic, the highest offset already parked.
        self._parked = read_dead_letter_marks(settings)

    def _listener(self) -> Any:
        """Seeks each assigned partition to its known start; local only (it runs on the
        client's I/O loop, where a network call would stall the group's heartbeats)."""
        from kafka import ConsumerRebalanceListener, TopicPartition

        consumer = self

        class SeekOnAssign(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                pass

            def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                for partition in assigned:
                    offset = consumer._next.get(partition.partition)
                    if offset is not None:
                        consumer._consumer.seek(partition, offset)

        return SeekOnAssign()

    def resume(self, positions: dict[int, int]) -> None:
        """Start each partition at ``positions`` (the checkpoint's next offsets) or the group's
        commit, whichever is further (a commit can pass the checkpoint over records that held
        no event). Refuses a checkpoint naming partitions the topic does not have."""
        from kafka import TopicPartition

        topic = self._settings.kafka_topic
        present = self._consumer.partitions_for_topic(topic) or set()
        missing = sorted(set(positions) - set(present))
        if missing:
            raise LogPositionError(
                f"the trainer's checkpoint holds positions in partitions {missing} of topic "
                f"{topic!r}, which has {len(present)} partitions now (deleted and re-created "
                "with fewer?): their events cannot be read. Recover: restore the topic, or start "
                "the trainer afresh (remove CCD_DATA_DIR/checkpoints and pick a new "
                "CCD_KAFKA_GROUP_ID)"
            )
        self._checkpointed = bool(positions)
        for partition, offset in positions.items():
            committed = self._consumer.committed(TopicPartition(topic, partition))
            self._next[partition] = max(offset, committed or 0)

    def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        """Records after the current positions; none while the broker cannot be reached
        (kafka-python raises from ``poll`` while it reconnects; nothing was consumed, so the
        next call simply tries again) or while a partition's start is being set."""
        from kafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except NoOffsetForPartitionError as error:
            self._start_unknown_partitions(error.args[0])
            return []
        except OffsetOutOfRangeError as error:
            self._leave_deleted_range(error.args[0])
            return []
        except KafkaError as error:
            if not getattr(error, "retriable", False):
                raise  # e.g. FencedInstanceIdError: another trainer consumes in our place
            if not self._unreachable:
                log.warning("Kafka unreachable (%s); the consumer keeps reconnecting", error)
            self._unreachable = True
            time.sleep(timeout_s)
            return []
        records = [
            LogRecord(m.partition, m.offset, m.value, m.key, tuple(m.headers or ()))
            for messages in batches.values()
            for m in messages
        ]
        for record in records:
            self._next[record.partition] = record.offset + 1
        self._claim_new_partitions()
        if records and self._unreachable:
            log.info("Kafka delivers records again")
            self._unreachable = False
        return records

    def _claim_new_partitions(self) -> None:
        """Rejoin the group when the topic has partitions this consumer was not assigned. The
        trainer is the group's only member, so it must own them all; but a static member
        (``group_instance_id``) that rejoins is handed its previous assignment, so partitions
        added while it was away would otherwise stay unread (seen with kafka-python 3.0 on
        Kafka 4). ``request_rejoin`` is the client's own (private) way to ask for a rebalance."""
        if time.monotonic() < self._next_assignment_check:
            return
        self._next_assignment_check = time.monotonic() + ASSIGNMENT_CHECK_S
        assigned = {tp.partition for tp in self._consumer.assignment()}
        if not assigned:
            return  # not joined yet
        present = self._consumer.partitions_for_topic(self._settings.kafka_topic) or set()
        if set(present) - assigned:
            log.info(
                "topic %s has partitions %s this trainer was not assigned: rejoining the group",
                self._settings.kafka_topic,
                sorted(set(present) - assigned),
            )
            self._consumer._coordinator.request_rejoin()

    def _start_unknown_partitions(self, partitions: Any) -> None:
        """Partitions with no position in the checkpoint or the group (new ones, or a first
        start): read from their start. A checkpointed trainer finding a new partition whose
        start is past 0 has lost records to retention (``_deleted``)."""
        partitions = sorted(partitions)
        starts = self._consumer.beginning_offsets(partitions)
        for partition in partitions:
            start = starts[partition]
            if start > 0 and self._checkpointed:
                self._deleted(partition, 0, start)
            log.info(
                "partition %s/%d has no position in the checkpoint or the group: reading it "
                "from offset %d, its start",
                partition.topic,
                partition.partition,
                start,
            )
            self._consumer.seek(partition, start)
            self._next[partition.partition] = start

    def _leave_deleted_range(self, offsets: dict[Any, int]) -> None:
        """The broker answered "offset out of range" for ``offsets`` ({partition: offset}):
        past the end means the topic was re-created (refused); before the start means
        retention deleted records not yet read (``_deleted``)."""
        partitions = sorted(offsets)
        starts = self._consumer.beginning_offsets(partitions)
        ends = self._consumer.end_offsets(partitions)
        for partition in partitions:
            offset, start, end = offsets[partition], starts[partition], ends[partition]
            if offset > end:
                raise LogPositionError(
                    f"the trainer's position {offset} in {partition.topic}/{partition.partition}"
                    f" is past the partition's end ({end}): the topic was deleted and "
                    "re-created (or truncated) since the checkpoint. Recover: point the trainer "
                    "at the original topic, or start it afresh (remove CCD_DATA_DIR/checkpoints "
                    "and pick a new CCD_KAFKA_GROUP_ID)"
                )
            if offset < start:
                self._deleted(partition, offset, start)
                offset = start
            self._consumer.seek(partition, offset)
            self._next[partition.partition] = offset

    def _deleted(self, partition: Any, offset: int, start: int) -> None:
        """Records ``offset .. start - 1`` of ``partition`` are gone: stop with the recovery
        named, or skip them when ``kafka_skip_deleted`` accepts the loss."""
        where = f"{partition.topic}/{partition.partition}"
        if not self._settings.kafka_skip_deleted:
            raise LogPositionError(
                f"records {offset}..{start - 1} of {where} were deleted by the topic's retention "
                "before the trainer learned them. Recover: re-produce those events if you can, or "
                f"set CCD_KAFKA_SKIP_DELETED=true to go on from offset {start} without them; "
                "keep the topic's retention.ms above the trainer's longest possible stop"
            )
        self.skipped_deleted += start - offset
        log.error(
            "records %d..%d of %s were deleted by retention before the trainer learned them: "
            "skipped (CCD_KAFKA_SKIP_DELETED=true)",
            offset,
            start - 1,
            where,
        )

    def commit(self, records: list[LogRecord]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {
            TopicPartition(self._settings.kafka_topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets(records).items()
        }
        if offsets:
            self._consumer.commit(offsets=offsets)

    def dead_letter(self, record: LogRecord, reason: str) -> bool:
        """Sends ``record`` to the dead-letter topic with its key and headers, plus headers
        ``reason`` and ``source`` (topic/partition/offset) after the original ones. The send is
        acknowledged before this returns, so the parked position can be trusted."""
        from kafka.errors import MessageSizeTooLargeError

        if record.offset <= self._parked.get(record.partition, -1):
            return False
        source = f"{self._settings.kafka_topic}/{record.partition}/{record.offset}"
        headers = [
            *((name, b"" if value is None else value) for name, value in record.headers),
            ("reason", reason.encode()[:1000]),
            ("source", source.encode()),
        ]
        value = record.value
        if value is None and record.key is None:
            # Kafka allows a record with neither; kafka-python refuses to send one.
            value, headers = b"", [*headers, ("null-value", b"1")]
        try:
            self._send_dead_letter(value, record.key, headers)
        except MessageSizeTooLargeError:
            # A dead-letter topic created elsewhere, with a smaller limit: park the start.
            assert value is not None
            truncated = ("truncated-from", str(len(value)).encode())
            self._send_dead_letter(
                value[:DEAD_LETTER_TRUNCATED_BYTES], record.key, [*headers, truncated]
            )
        self._parked[record.partition] = record.offset
        return True

    def _dead_letter_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            acks="all",
            max_block_ms=KAFKA_TIMEOUT_MS,
            request_timeout_ms=KAFKA_TIMEOUT_MS,
            delivery_timeout_ms=2 * KAFKA_TIMEOUT_MS,
            reconnect_backoff_max_ms=KAFKA_RECONNECT_BACKOFF_MAX_MS,
            max_request_size=DEAD_LETTER_MAX_BYTES,
            client_id="ccd-dead-letter",
        )

    def _send_dead_letter(
        self, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        from kafka.errors import KafkaError

        try:
            future = self._dead_letters.send(
                self._settings.kafka_dead_letter_topic, value=value, key=key, headers=headers
            )
            future.get(timeout=2 * KAFKA_TIMEOUT_MS / 1000)
        except KafkaError as error:
            if not getattr(error, "retriable", False):
                # kafka-python's idempotent producer refuses every later send after a fatal
                # error (a record the broker finds too large is one): start a fresh one.
                self._dead_letters.close(timeout=0)
                self._dead_letters = self._dead_letter_producer()
            raise

    def close(self) -> None:
        self._consumer.close(autocommit=False)
        self._dead_letters.close(timeout=KAFKA_TIMEOUT_MS / 1000)


def _encoded(key: str | None) -> bytes | None:
    return None if key is None else key.encode()


# --- embedded SQLite ------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT,
    value BLOB NOT NULL,
    appended_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS committed (
    group_id TEXT PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_offset INTEGER NOT NULL,
    value BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL,
    key TEXT
);
"""
_POLL_SLEEP_S = 0.05


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode, so one process can append while another reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # durable at WAL checkpoints; fast appends
    connection.executescript(_SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(dead_letters)")}
    if "key" not in columns:  # a log made before dead letters kept the message's key
        connection.execute("ALTER TABLE dead_letters ADD COLUMN key TEXT")
    return connection


class SqliteEventLog:
    """Embedded producer side: appends to a SQLite table; offsets are the autoincrement ids."""

    def __init__(self, path: Path) -> None:
        self._connection = _connect_sqlite(path)
        self._lock = threading.Lock()  # one connection shared by the server's worker threads

    def append(self, events: list[InteractionEvent]) -> int:
        return self.append_raw([e.to_bytes() for e in events], [e.user_id for e in events])

    def append_raw(self, values: list[bytes], keys: list[str | None]) -> int:
        now = time.time()
        rows = [(key, value, now) for value, key in zip(values, keys, strict=True)]
        try:
            with self._lock:
                self._connection.execute("BEGIN IMMEDIATE")
                try:
                    self._connection.executemany(
                        "INSERT INTO messages (key, value, appended_at) VALUES (?, ?, ?)", rows
                    )
                except BaseException:
                    self._connection.execute("ROLLBACK")
                    raise
                self._connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise EventLogUnavailable(f"embedded event log failed: {error}") from error
        return len(rows)

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class SqliteEventConsumer:
    """Embedded consumer side: reads messages after its group's committed offset. With
    ``retention_s`` > 0, each commit deletes the messages that every group has committed and
    that were appended more than ``retention_s`` seconds ago (never one a group still needs)."""

    def __init__(self, path: Path, group_id: str, retention_s: float = 0.0) -> None:
        self._connection = _connect_sqlite(path)
        self._group_id = group_id
        self._retention_s = retention_s
        self._position = self.committed_offset()
        row = self._connection.execute("SELECT MAX(source_offset) FROM dead_letters").fetchone()
        self._parked = -1 if row[0] is None else int(row[0])  # highest offset parked already

    def committed_offset(self) -> int:
        """The first offset not yet committed by this group (1 before any commit)."""
        row = self._connection.execute(
            "SELECT next_offset FROM committed WHERE group_id = ?", (self._group_id,)
        ).fetchone()
        return 1 if row is None else int(row[0])

    def resume(self, positions: dict[int, int]) -> None:
        """Nothing to do: the log reads on from the group's commit, and records between it
        and the checkpoint's position are skipped by the trainer. Retention deletes only below
        the commit, so that position is always still there."""

    def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self._connection.execute(
                "SELECT seq, value, key FROM messages WHERE seq >= ? ORDER BY seq LIMIT ?",
                (self._position, max_records),
            ).fetchall()
            if rows or time.monotonic() >= deadline:
                break
            time.sleep(min(_POLL_SLEEP_S, max(0.0, deadline - time.monotonic())))
        if rows:
            self._position = int(rows[-1][0]) + 1
        return [
            LogRecord(SQLITE_PARTITION, int(offset), bytes(value), _encoded(key))
            for offset, value, key in rows
        ]

    def commit(self, records: list[LogRecord]) -> None:
        offset = next_offsets(records).get(SQLITE_PARTITION)
        if offset is None:
            return
        self._connection.execute(
            "INSERT INTO committed (group_id, next_offset) VALUES (?, ?) ON CONFLICT(group_id) "
            "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
            (self._group_id, offset),
        )
        if self._retention_s > 0:
            self.trim(time.time() - self._retention_s)

    def trim(self, appended_before: float) -> int:
        """Delete the messages appended before ``appended_before`` (epoch seconds) that every
        consumer group of the log has committed (the trainer's, and any other's, such as an
        indexer's); returns how many. The scan stops at the first message young enough (appends
        are nearly in time order), so it costs what it deletes."""
        row = self._connection.execute(
            "SELECT seq FROM messages WHERE appended_at >= ? ORDER BY seq LIMIT 1",
            (appended_before,),
        ).fetchone()
        (slowest,) = self._connection.execute("SELECT MIN(next_offset) FROM committed").fetchone()
        below = min(int(slowest or 1), self.committed_offset())
        if row is not None:
            below = min(below, int(row[0]))
        deleted = self._connection.execute("DELETE FROM messages WHERE seq < ?", (below,)).rowcount
        if deleted:
            log.info(
                "event log retention: deleted %d committed events below offset %d", deleted, below
            )
        return deleted

    def dead_letter(self, record: LogRecord, reason: str) -> bool:
        if record.offset <= self._parked:
            return False
        key = None if record.key is None else record.key.decode(errors="replace")
        self._connection.execute(
            "INSERT INTO dead_letters (source_offset, value, reason, dead_at, key) "
            "VALUES (?, ?, ?, ?, ?)",
            (record.offset, record.value or b"", reason, time.time(), key),
        )
        self._parked = record.offset
        return True

    def dead_letters(self) -> list[tuple[int, bytes, str]]:
        """``(source_offset, value, reason)`` of every parked message, oldest first."""
        rows = self._connection.execute(
            "SELECT source_offset, value, reason FROM dead_letters ORDER BY id"
        ).fetchall()
        return [(int(offset), bytes(value), str(reason)) for offset, value, reason in rows]

    def dead_letter_keys(self) -> list[str | None]:
        """The original key of every parked message, oldest first."""
        rows = self._connection.execute("SELECT key FROM dead_letters ORDER BY id").fetchall()
        return [key for (key,) in rows]

    def close(self) -> None:
        self._connection.close()
