"""Log lines about many similar occurrences without a log flood (shared by the trainer and the
server, so that neither imports the other)."""

from __future__ import annotations

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
