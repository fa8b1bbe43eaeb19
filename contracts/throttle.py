"""Log lines about many similar occurrences without a log flood (shared by the trainer and the
server, so that neither imports the other)."""

from __future__ import annotations

import logging
import threading
import time


class WarningThrottle:
    """Per-message warnings without a log flood: the first ``burst`` are logged one by one,
    after that at most one summary line per ``interval_s`` (a producer with a bad clock can
    send millions of rejected events, one that adds a field millions of events with a field
    the contract does not know; every one is still counted)."""

    def __init__(self, burst: int = 20, interval_s: float = 10.0) -> None:
        self.burst, self.interval_s = burst, interval_s
        self.seen = 0
        self.suppressed = 0
        self._next_summary = 0.0

    def allow(self) -> bool:
        """Count one occurrence; True if the caller should log it in full."""
        self.seen += 1
        if self.seen <= self.burst:
            if self.seen == self.burst:
                self._next_summary = time.monotonic() + self.interval_s
            return True
        self.suppressed += 1
        return False

    def summary(self) -> int:
        """Occurrences not logged since the last summary, if one is due now (else 0)."""
        if self.suppressed == 0 or time.monotonic() < self._next_summary:
            return 0
        count, self.suppressed = self.suppressed, 0
        self._next_summary = time.monotonic() + self.interval_s
        return count


# Characters of an error message an outage line shows.
MAX_ERROR_CHARS = 300


class OutageLog:
    """A dependency's outages in the log: one line when it goes down and one when it is back,
    however many attempts fail in between (a retry loop logged a line every second and a
    traceback every poll). Thread-safe: several threads may report on one dependency."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger, self.what = logger, what
        self.down_since: float | None = None  # monotonic clock
        self.failures = 0  # failed attempts in the current (or last) outage
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> bool:
        """Count a failed attempt; True (and one line logged) if it starts an outage."""
        with self._lock:
            self.failures += 1
            if self.down_since is not None:
                return False
            self.down_since, self.failures = time.monotonic(), 1
        reason = f"{type(error).__name__}: {error}".replace("\n", " ")[:MAX_ERROR_CHARS]
        self.logger.warning(
            "%s unreachable (%s); retrying quietly until it is back", self.what, reason
        )
        return True

    def succeeded(self) -> bool:
        """Note a successful attempt; True (and one line logged) if it ends an outage."""
        with self._lock:
            if self.down_since is None:
                return False
            lasted, failures = time.monotonic() - self.down_since, self.failures
            self.down_since = None
        self.logger.warning(
            "%s reachable again after %.1f s (%d failed attempts)", self.what, lasted, failures
        )
        return True

    @property
    def down(self) -> bool:
        return self.down_since is not None
