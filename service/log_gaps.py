"""Where a reader of the event log goes when its position is gone, said out loud.

Both of the service's readers of the topic, ``ccd indexer`` (``service.indexer``) and the server's
seen-items tailer (``service.seen.KafkaSource``), open their consumer with
``auto_offset_reset="none"``, so that the client never moves a position on its own: kafka-python's
default ("latest") answers a position that retention deleted by jumping to the partition's *end*,
skipping the records still there too, with one INFO line. Instead ``poll`` raises
``OffsetOutOfRangeError`` ({partition: position}) or ``NoOffsetForPartitionError`` ({partition}),
and the reader hands the partitions to ``seek_to_start``, which places each at its oldest record
and says why:

* position before the partition's start: retention deleted records ``position .. start - 1``
  before the reader read them. One ERROR line names the topic/partition, the offsets lost and
  what they mean for this reader (``consequence``); the reader goes on from ``start`` (it must
  keep serving), and the number of records lost is returned for the reader's counters;
* position past the end: the topic was deleted and re-created. ERROR, read again from its start
  (both readers add pairs idempotently);
* no position (a new group or partition): INFO, read from its start; nothing lost.

Cost: one ``beginning_offsets`` request per call, made only when a position is gone.

The embedded SQLite log has no positions to lose, but its retention trim
(``contracts/event_log.py``) waits only for consumer groups, not for the seen-items tailer:
``service.seen.SqliteSource`` finds the hole as a jump in ``seq`` and reports it with the same
ERROR line (``log_lost``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any


def seek_to_start(
    consumer: Any,
    partitions: Iterable[Any],
    lost_from: Mapping[Any, int],
    reader: str,
    consequence: str,
    log: logging.Logger,
) -> int:
    """Seeks each of ``partitions`` (``TopicPartition``) of ``consumer`` to its oldest record and
    returns how many records retention deleted before ``reader`` read them. ``lost_from``:
    partition -> the position that is gone (from ``OffsetOutOfRangeError``; empty for partitions
    that never had one). ``consequence`` completes the ERROR line: what those records' absence
    means, e.g. "their pairs are missing from the seen sets"."""
    partitions = sorted(partitions)
    starts = consumer.beginning_offsets(partitions)
    lost = 0
    for partition in partitions:
        start = starts[partition]
        where = f"{partition.topic}/{partition.partition}"
        if partition in lost_from and lost_from[partition] < start:
            lost += start - lost_from[partition]
            log_lost(log, lost_from[partition], start, where, reader, consequence)
        elif partition in lost_from:
            log.error(
                "the %s's position %d in %s is past its end (the topic was re-created): reading "
                "it again from offset %d (adding pairs is idempotent)",
                reader,
                lost_from[partition],
                where,
                start,
            )
        else:
            log.info("%s has no position for the %s: reading from offset %d", where, reader, start)
        consumer.seek(partition, start)
    return lost


def log_lost(
    log: logging.Logger, first: int, going_on_from: int, where: str, reader: str, consequence: str
) -> None:
    """The one ERROR line for records ``first .. going_on_from - 1`` of ``where`` that retention
    deleted before ``reader`` read them."""
    log.error(
        "records %d..%d of %s were deleted by retention before the %s read them: %s; "
        "going on from offset %d",
        first,
        going_on_from - 1,
        where,
        reader,
        consequence,
        going_on_from,
    )
