"""Seen-items sets in Redis: per-user state out of the server process (distributed mode).

With ``CCD_SEEN_STORE=redis`` each user's items live in one Redis SET, ``{prefix}:seen:{<user>}``;
the braces are a Redis Cluster hash tag, so a cluster shards the sets by user, and every key a
request reads for one user sits on one shard. ``{``, ``}`` and ``%`` in a user id are
percent-escaped (``seen_key``) so that the tag is exactly the id; ids are at most
``MAX_ID_LENGTH`` (256) characters, so keys stay short. Item ids ever named are kept in one more
SET, ``{prefix}:seen-items`` (``knows_item``).

Who writes: ``ccd indexer`` (``service.indexer``), the one consumer of the event stream that
fills the sets, and the server that accepts ``POST /events`` (so that the poster's next request
excludes the item at once, before the indexer reads it back). SADD is idempotent: a pair written
twice, or re-read after an indexer restart, is one member.

Who reads: every server, per request, with one round trip: ``items_of_many`` sends one SMEMBERS
per user in one pipeline (a batch request is one pipeline for all its users; the fast lane's
one-user requests of one event-loop turn, ranked together, share one too). The read is a
blocking call on the event loop, like the ranking it precedes: one round trip (~0.25 ms for 100
items with hiredis on localhost, docs/BENCHMARKS.md "Seen items in Redis"). A replica holds
no pairs and replays no log, so its memory does not grow with the number of pairs and it is
ready as soon as it has a model.

Failures: reads go through a ``CircuitBreaker``; a failed read (Redis down, or slower than
``CCD_SEEN_TIMEOUT_S``) raises ``SeenUnavailable``, which the routes answer with 503 and
Retry-After, never with a list that might hold seen items. While the breaker is open, reads fail
at once, without a Redis round trip, for ``cooldown_s``.

Counts (``n_users``, ``n_pairs``, ``counts``: the ``ccd_seen_users`` / ``ccd_seen_pairs`` gauges
and the dashboard, read at most every 5 s, ``service.metrics.SEEN_COUNTS_MAX_AGE_S``) are kept
in the hash ``{prefix}:seen-stats`` by whoever adds pairs; under concurrent writers of the same
new user they are approximate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from contracts.redis_client import connect
from service.breaker import BreakerOpen, CircuitBreaker

log = logging.getLogger(__name__)

# After a failed read, reads answer SeenUnavailable at once for this long before trying again.
SEEN_COOLDOWN_S = 2.0
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


class SeenUnavailable(RuntimeError):
    """The seen-items store could not be read; the caller must not rank without it."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def seen_key(prefix: str, user_id: str) -> str:
    """The Redis key of ``user_id``'s set: its id, escaped, as the Cluster hash tag.

    Examples:
        >>> seen_key("ccd", "u1")
        'ccd:seen:{u1}'
        >>> seen_key("ccd", "a{b}%")
        'ccd:seen:{a%7Bb%7D%25}'
    """
    return f"{prefix}:seen:{{{user_id.translate(_ESCAPES)}}}"


def group_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """(user, item) pairs as user -> items.

    Examples:
        >>> grouped = group_pairs([("u", "a"), ("v", "b"), ("u", "a"), ("u", "c")])
        >>> {user: sorted(items) for user, items in grouped.items()}
        {'u': ['a', 'c'], 'v': ['b']}
    """
    grouped: dict[str, set[str]] = {}
    for user, item in pairs:
        grouped.setdefault(user, set()).add(item)
    return grouped


class RedisSeenIndex:
    """The seen-items sets in Redis, behind the same verbs as ``service.seen.SeenItems``."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.5) -> None:
        self._redis = connect(url, socket_timeout=timeout_s, decode_responses=True)
        self.prefix = prefix
        self._items_key = f"{prefix}:seen-items"
        self._stats_key = f"{prefix}:seen-stats"
        self.breaker = CircuitBreaker(SEEN_COOLDOWN_S)

    def key(self, user_id: str) -> str:
        return seen_key(self.prefix, user_id)

    def items_of(self, user_id: str) -> frozenset[str]:
        """The user's items (one SMEMBERS); ``SeenUnavailable`` if Redis cannot answer."""
        return self.items_of_many([user_id])[0]

    def items_of_many(self, user_ids: Sequence[str]) -> list[frozenset[str]]:
        """Each user's items, in ``user_ids`` order, in one round trip (one pipeline)."""
        return self._guarded(lambda: self._read(user_ids))

    def _read(self, user_ids: Sequence[str]) -> list[frozenset[str]]:
        pipe = self._redis.pipeline(transaction=False)
        for user in user_ids:
            pipe.smembers(self.key(user))
        return [frozenset(members) for members in pipe.execute()]

    def _guarded(self, read: Any) -> Any:
        import redis

        try:
            return self.breaker.call(read)
        except BreakerOpen:
            raise SeenUnavailable(
                "seen-items store (Redis) failed recently; not retrying yet",
                self.breaker.retry_after_s(),
            ) from None
        except redis.RedisError as error:
            log.warning("reading seen items from Redis failed: %s", error)
            raise SeenUnavailable(
                f"seen-items store (Redis) unavailable: {error}", self.breaker.retry_after_s()
            ) from None

    def add(self, pairs: Iterable[tuple[str, str]]) -> int:
        """SADDs the pairs (idempotent); returns how many were new. Raises ``redis.RedisError``
        if Redis cannot be written (the caller decides: the indexer retries, a server logs)."""
        grouped = group_pairs(pairs)
        if not grouped:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for user, items in grouped.items():
            pipe.sadd(self.key(user), *items)
            pipe.scard(self.key(user))
        pipe.sadd(self._items_key, *set().union(*grouped.values()))
        replies = pipe.execute()
        added = replies[0:-1:2]
        sizes = replies[1:-1:2]
        new_pairs = sum(added)
        new_users = sum(1 for a, size in zip(added, sizes, strict=True) if a and a == size)
        if new_pairs:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hincrby(self._stats_key, "pairs", new_pairs)
            pipe.hincrby(self._stats_key, "users", new_users)
            pipe.execute()
        return new_pairs

    def knows_item(self, item_id: str) -> bool:
        """Whether some event named this item (``SeenUnavailable`` if Redis cannot answer)."""
        return bool(self._guarded(lambda: self._redis.sismember(self._items_key, item_id)))

    def _stat(self, name: str) -> int | None:
        try:
            value = self._redis.hget(self._stats_key, name)
        except Exception:  # the dashboard shows "unknown" rather than failing
            return None
        return int(value or 0)

    def counts(self) -> tuple[int, int] | None:
        """(users, pairs) in one round trip (approximate; None if Redis cannot answer).
        ``ServiceMetrics.refresh_seen_counts`` reads it for /metrics and the dashboard."""
        try:
            users, pairs = self._redis.hmget(self._stats_key, ["users", "pairs"])
        except Exception:  # the gauges say "unknown" (NaN) rather than failing the scrape
            return None
        return int(users or 0), int(pairs or 0)

    @property
    def n_users(self) -> int | None:
        """Users with a set (approximate; None if Redis cannot answer)."""
        return self._stat("users")

    @property
    def n_pairs(self) -> int | None:
        """Distinct (user, item) pairs (approximate; None if Redis cannot answer)."""
        return self._stat("pairs")

    def close(self) -> None:
        self._redis.close()
