"""``ccd indexer``: the one consumer of the event stream that writes the seen-items sets to Redis.

Steps, per batch: poll up to ``batch_size`` records (Kafka consumer group ``CCD_INDEXER_GROUP_ID``,
every partition of the topic) -> read (user_id, item_id) of each (unreadable messages are
skipped; the trainer dead-letters them) -> SADD them, one pipeline (``RedisSeenIndex.add``) ->
commit the batch's offsets. The commit comes after the write, so a crash in between re-reads the
batch on restart and writes it again: SADD is idempotent, so no pair is lost and none counted
twice. While Redis is down the same batch is retried (backing off up to ``MAX_BACKOFF_S``) and
nothing is committed; while Kafka is unreachable it polls again. A new group (or a partition
with no commit) starts at the partition's beginning: the one-time backfill of an existing log;
afterwards a restart resumes at the committed offsets. Offsets are never reset silently
(``auto_offset_reset="none"``): if retention deleted records the indexer had not read yet, it
logs an ERROR naming the partition and the lost offsets (those pairs are missing from the sets;
re-produce them to restore them) and goes on from the oldest record left (``service.log_gaps``,
shared with the server's seen-items tailer).

Why a process of its own rather than the trainer's side:

* freshness: the trainer commits a block's offsets only after it has learned and published it
  (a block is 5,000 events or 60 s by default), and it can stop for long (a lease lost, a GPU
  step, a retrained iALS); seen items must follow the stream within a fraction of a second,
  whatever the trainer does;
* weight: the indexer imports no torch (~70 MB resident), so it can run beside every broker or
  be scaled out: partitions are keyed by user, so several indexers in the group split the users
  between them and never write the same set;
* one writer per role: the trainer stays the single leased writer of the model store; the
  indexer is the single writer of the seen sets (besides the server's idempotent SADD of the
  events it accepts, which makes them visible to the poster's next request at once).

Cost: one Redis round trip per batch (two when it has new pairs: the counters); SADD pipelines
of 5,000 pairs wrote 148,000 pairs/s from one process on the loaded 2-core development machine
(docs/BENCHMARKS.md, "Seen items in Redis").
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from contracts.settings import Settings
from service.log_gaps import seek_to_start
from service.seen import parse_pair
from service.seen_store import RedisSeenIndex

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
POLL_TIMEOUT_S = 0.2
MAX_BACKOFF_S = 5.0
REPORT_EVERY_S = 30.0


def open_indexer_consumer(settings: Settings) -> Any:
    """The indexer's Kafka consumer: group ``indexer_group_id``, offsets committed by hand and
    never reset by the client (``SeenIndexer`` places partitions without a commit)."""
    from kafka import KafkaConsumer

    from contracts.event_log import ensure_topics

    ensure_topics(settings)
    return KafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.indexer_group_id,
        client_id="ccd-indexer",
        enable_auto_commit=False,
        auto_offset_reset="none",
        max_poll_records=BATCH_SIZE,
    )


class SeenIndexer:
    """Copies (user, item) pairs from ``consumer`` into ``index``; ``run`` until ``stop``."""

    def __init__(self, consumer: Any, index: RedisSeenIndex) -> None:
        self._consumer = consumer
        self._index = index
        self.events = 0  # readable events written
        self.new_pairs = 0  # of which pairs Redis did not hold yet
        self.malformed = 0
        self.records_lost = 0  # deleted by retention before they were read (service.log_gaps)
        self._unreachable = False

    def step(self, stop: threading.Event, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """One batch: poll, write (retried until it succeeds or ``stop``), commit; returns the
        records polled (0 when nothing arrived)."""
        batches = self._poll(timeout_s)
        values = [record.value for records in batches.values() for record in records]
        if not values:
            return 0
        pairs = [pair for raw in values if (pair := parse_pair(raw)) is not None]
        if not self._write(pairs, stop):
            return 0  # stopping before the batch was written: not committed, re-read next time
        self._commit()
        self.events += len(pairs)
        self.malformed += len(values) - len(pairs)
        return len(values)

    def _poll(self, timeout_s: float) -> dict[Any, list[Any]]:
        """The next records by partition; none while a partition's start is being placed or
        Kafka cannot be reached (nothing consumed: the next call tries again)."""
        from kafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=BATCH_SIZE)
        except NoOffsetForPartitionError as error:  # a new group or partition: its start
            self._seek_to_start(sorted(error.args[0]), {})
            return {}
        except OffsetOutOfRangeError as error:  # retention deleted what was not read yet
            self._seek_to_start(sorted(error.args[0]), error.args[0])
            return {}
        except KafkaError as error:
            if not getattr(error, "retriable", False):
                raise
            if not self._unreachable:
                log.warning("Kafka unreachable (%s); the indexer keeps reconnecting", error)
            self._unreachable = True
            time.sleep(timeout_s)
            return {}
        if batches and self._unreachable:
            log.info("Kafka delivers records again")
            self._unreachable = False
        return batches

    def _seek_to_start(self, partitions: list[Any], lost_from: dict[Any, int]) -> None:
        """Each partition to its oldest record, the offsets retention deleted before they were
        indexed named in an ERROR (``service.log_gaps``)."""
        self.records_lost += seek_to_start(
            self._consumer,
            partitions,
            lost_from,
            "indexer",
            "their pairs are missing from the seen sets (re-produce them to add them)",
            log,
        )

    def _write(self, pairs: list[tuple[str, str]], stop: threading.Event) -> bool:
        backoff = 0.1
        while not stop.is_set():
            try:
                self.new_pairs += self._index.add(pairs)
                return True
            except Exception as error:  # Redis down: keep the batch, retry it
                log.warning("writing %d pairs to Redis failed (%s); retrying", len(pairs), error)
                stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
        return False

    def _commit(self) -> None:
        from kafka.errors import CommitFailedError

        try:
            self._consumer.commit()
        except CommitFailedError as error:  # the group moved the partitions on: they re-read
            log.warning("committing the indexer's offsets failed (%s); re-read, idempotent", error)

    def run(self, stop: threading.Event) -> None:
        reported = time.monotonic()
        while not stop.is_set():
            self.step(stop)
            if time.monotonic() - reported >= REPORT_EVERY_S:
                reported = time.monotonic()
                log.info(
                    "indexed %d events (%d new pairs, %d unreadable skipped, %d deleted by "
                    "retention before they were read)",
                    self.events,
                    self.new_pairs,
                    self.malformed,
                    self.records_lost,
                )


def run_indexer(settings: Settings, stop: threading.Event) -> None:
    """``ccd indexer``: index the stream into Redis until ``stop`` is set."""
    if not (settings.uses_kafka and settings.uses_redis):
        raise ValueError("needs CCD_KAFKA_BOOTSTRAP_SERVERS and CCD_REDIS_URL")
    assert settings.redis_url is not None
    index = RedisSeenIndex(settings.redis_url, settings.redis_prefix, timeout_s=5.0)
    consumer = open_indexer_consumer(settings)
    log.info(
        "indexer: topic %s, group %s -> Redis %s:seen:{user}",
        settings.kafka_topic,
        settings.indexer_group_id,
        settings.redis_prefix,
    )
    try:
        SeenIndexer(consumer, index).run(stop)
    finally:
        consumer.close(autocommit=False)
        index.close()
