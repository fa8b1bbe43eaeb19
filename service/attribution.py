"""Outcome attribution: which events followed which impressions, and the online hit rates.

An event for (user, item) read within ``attribution_window_s`` of an impression that showed the
item is a *hit* of that impression, counted for the impression's model version and arm:

* an event that carries a ``recommendation_id`` is matched by that id only (the impression must
  be one this server made, for the same user, and show the item); an id this server does not
  hold (another replica's, or expired) is not matched here;
* an event without one goes to the newest impression of the user, within the window, that
  showed the item (last touch).

An (impression, item) pair counts once, however many events repeat it.

Where it runs: in the seen-items tailer (``service.seen.SeenTailer`` calls ``observe`` with
every batch it reads), not at ``POST /events``. The tailer reads every event of the log,
whatever way it came in (``POST /events`` on any replica, ``ccd produce``, producers writing to
Kafka directly), in a background thread, off the request path. Each replica's tailer reads the
whole log but matches only the impressions this replica served (held here), so no impression
is counted by two replicas, and Prometheus sums over replicas give the fleet's numbers. Time is
this server's clock when the tailer reads the event (``now`` of ``observe``), not the event's
own timestamp, which a replayed file sets in the past; the tailer follows the log within a
fraction of a second, far below a window of minutes.

Counts are kept per (time bucket of the impression, version, arm), with ``BUCKETS`` buckets over
``online_window_s``; ``stats`` sums those of the window. A hit counts in its impression's
bucket, so the newest impressions have had less time to collect theirs.

Memory bound: at most ``max_impressions`` impressions (the oldest leave first, and any older than
the window), each ~0.6-1 KB at 20 items (the item strings are the model's own, shared; measured
in docs/BENCHMARKS.md), plus ``BUCKETS`` x versions x arms counters.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from service.impressions import Impression
from service.metrics import ServiceMetrics

# Buckets of the sliding window of the online statistics.
BUCKETS = 60
# z of the two-sided 95 % interval.
_Z95 = 1.959963984540054


@dataclass(slots=True)
class Counts:
    """Counters of one (bucket, version, arm): impressions, items shown, impressions with at
    least one hit, and (impression, item) hits."""

    impressions: int = 0
    shown: int = 0
    hit_impressions: int = 0
    hits: int = 0

    def add(self, other: Counts) -> None:
        self.impressions += other.impressions
        self.shown += other.shown
        self.hit_impressions += other.hit_impressions
        self.hits += other.hits


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion; (0, 1) without trials.

    Examples:
        >>> low, high = wilson_interval(30, 100)
        >>> round(low, 3), round(high, 3)
        (0.219, 0.396)
        >>> wilson_interval(0, 0)
        (0.0, 1.0)
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = _Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def summary(counts: Counts) -> dict[str, float | int | list[float]]:
    """The JSON row of one group: counts, hit rate with its 95 % interval, CTR@k.

    Examples:
        >>> row = summary(Counts(impressions=4, shown=40, hit_impressions=1, hits=2))
        >>> row["hit_rate"], row["ctr"]
        (0.25, 0.05)
    """
    rate = counts.hit_impressions / counts.impressions if counts.impressions else 0.0
    return {
        "impressions": counts.impressions,
        "shown": counts.shown,
        "hit_impressions": counts.hit_impressions,
        "hits": counts.hits,
        "hit_rate": rate,
        "hit_rate_ci95": list(wilson_interval(counts.hit_impressions, counts.impressions)),
        "ctr": counts.hits / counts.shown if counts.shown else 0.0,
    }


class Attribution:
    """Thread-safe index of recent impressions and the windowed counts of their hits.

    ``add`` (the impression recorder's thread) and ``observe`` (the tailer's thread) take one
    lock; ``stats`` and ``impressions_of`` (request threads) too, briefly.
    """

    def __init__(
        self,
        metrics: ServiceMetrics,
        window_s: float,
        online_window_s: float,
        max_impressions: int,
    ) -> None:
        self._metrics = metrics
        self.window_s = window_s
        self.online_window_s = online_window_s
        self.max_impressions = max_impressions
        self._bucket_s = online_window_s / BUCKETS
        self._by_id: dict[str, Impression] = {}  # insertion (= time) order
        self._by_user: dict[str, deque[Impression]] = {}
        self._counts: dict[tuple[int, int, str], Counts] = {}
        self._exported: set[tuple[str, str]] = set()  # label sets of online_hit_rate
        self._lock = threading.Lock()

    def add(self, batch: Iterable[Impression]) -> None:
        """Indexes impressions (in time order) and counts them."""
        with self._lock:
            for impression in batch:
                self._by_id[impression.recommendation_id] = impression
                if impression.user_id is not None:
                    self._by_user.setdefault(impression.user_id, deque()).append(impression)
                counts = self._counts_of(impression)
                counts.impressions += 1
                counts.shown += len(impression.items)
            self._evict(time.time())
            self._metrics.impressions_indexed.set(len(self._by_id))

    def _counts_of(self, impression: Impression) -> Counts:
        bucket = int(impression.at // self._bucket_s)
        key = (bucket, impression.version, impression.arm)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = Counts()
        return counts

    def _evict(self, now: float) -> None:
        """Drops impressions beyond the cap or the window, and buckets beyond the online one."""
        horizon = now - self.window_s
        while self._by_id:
            oldest = next(iter(self._by_id.values()))
            if len(self._by_id) <= self.max_impressions and oldest.at >= horizon:
                break
            del self._by_id[oldest.recommendation_id]
            if oldest.user_id is not None:
                queue = self._by_user[oldest.user_id]
                queue.popleft()  # the user's oldest: impressions arrive in time order
                if not queue:
                    del self._by_user[oldest.user_id]
        first_bucket = int((now - self.online_window_s) // self._bucket_s)
        for key in [key for key in self._counts if key[0] < first_bucket]:
            del self._counts[key]

    def observe(
        self, events: Iterable[tuple[str, str, str | None]], now: float | None = None
    ) -> int:
        """Attributes (user_id, item_id, recommendation_id or None) events read at ``now``
        (default: the clock); returns the number of new hits."""
        now = time.time() if now is None else now
        new_hits = 0
        with self._lock:
            if not self._by_id:
                return 0
            for user, item, rid in events:
                impression = self._match(user, item, rid, now)
                if impression is not None and self._hit(impression, item, rid is not None):
                    new_hits += 1
        return new_hits

    def _match(self, user: str, item: str, rid: str | None, now: float) -> Impression | None:
        if rid is not None:
            impression = self._by_id.get(rid)
            if impression is None or item not in impression.items:
                return None
            if impression.user_id not in (None, user):
                return None
            return impression if 0 <= now - impression.at <= self.window_s else None
        for impression in reversed(self._by_user.get(user, ())):
            if now - impression.at > self.window_s:
                return None
            if item in impression.items and impression.at <= now:
                return impression
        return None

    def _hit(self, impression: Impression, item: str, by_id: bool) -> bool:
        if impression.hits is None:
            impression.hits = set()
        elif item in impression.hits:
            return False
        counts = self._counts_of(impression)
        if not impression.hits:
            counts.hit_impressions += 1
            self._metrics.impression_hits.labels(impression.arm).inc()
        impression.hits.add(item)
        counts.hits += 1
        self._metrics.attributed_events.labels(impression.arm, "id" if by_id else "user_item").inc()
        return True

    def stats(self, now: float | None = None) -> dict[str, object]:
        """Hit rate and CTR@k over the online window, per version, per arm, and in all."""
        now = time.time() if now is None else now
        first_bucket = int((now - self.online_window_s) // self._bucket_s)
        by_version: dict[tuple[int, str], Counts] = {}
        by_arm: dict[str, Counts] = {}
        total = Counts()
        with self._lock:
            for (bucket, version, arm), counts in self._counts.items():
                if bucket < first_bucket:
                    continue
                by_version.setdefault((version, arm), Counts()).add(counts)
                by_arm.setdefault(arm, Counts()).add(counts)
                total.add(counts)
            indexed = len(self._by_id)
        self._export(by_version)
        return {
            "window_s": self.online_window_s,
            "attribution_window_s": self.window_s,
            "impressions_indexed": indexed,
            "max_impressions": self.max_impressions,
            "total": summary(total),
            "versions": [
                {"version": version, "arm": arm, **summary(counts)}
                for (version, arm), counts in sorted(by_version.items())
            ],
            "arms": [{"arm": arm, **summary(counts)} for arm, counts in sorted(by_arm.items())],
        }

    def _export(self, by_version: dict[tuple[int, str], Counts]) -> None:
        """The windowed hit rate per (version, arm) as a gauge; label sets of versions that
        left the window are removed, so the series stay as few as the window's versions."""
        gauge = self._metrics.online_hit_rate
        current = {(str(version), arm) for version, arm in by_version}
        for labels in self._exported - current:
            gauge.remove(*labels)
        for (version, arm), counts in by_version.items():
            rate = counts.hit_impressions / counts.impressions if counts.impressions else 0.0
            gauge.labels(str(version), arm).set(rate)
        self._exported = current

    def impressions_of(self, user_id: str, count: int = 10) -> list[Impression]:
        """The user's newest impressions held here, newest first."""
        with self._lock:
            return list(reversed(self._by_user.get(user_id, ())))[:count]
