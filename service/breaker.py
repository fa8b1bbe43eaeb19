"""A circuit breaker in front of the event log.

While the log is down every append would wait for the producer's timeouts (seconds) on a worker
thread, and enough waiting requests would take the threads recommendations need too. After one
failure the breaker answers "unavailable" at once for ``cooldown_s``; then it lets a single probe
through (half-open) and closes again when that probe succeeds. Callers tell clients to come back
after ``retry_after_s()`` seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class BreakerOpen(RuntimeError):
    """The protected call was not attempted: it failed recently and is cooling down."""


class CircuitBreaker:
    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def call(self, function: Callable[[], T]) -> T:
        """``function()``, or ``BreakerOpen`` while cooling down or while another probe runs.
        Any exception of ``function`` opens the breaker and is re-raised."""
        self._enter()
        try:
            result = function()
        except BaseException:
            with self._lock:
                self._open_until = self._clock() + self._cooldown_s
                self._probing = False
            raise
        with self._lock:
            self._open_until = 0.0
            self._probing = False
        return result

    def _enter(self) -> None:
        with self._lock:
            if self._open_until == 0.0:
                return  # closed: every call goes through
            if self._probing or self._clock() < self._open_until:
                raise BreakerOpen("the event log failed recently; not retrying yet")
            self._probing = True  # half-open: this call is the probe

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until != 0.0

    def retry_after_s(self) -> int:
        """Whole seconds (at least 1) until a call may be attempted again."""
        with self._lock:
            remaining = self._open_until - self._clock() if self._open_until else 0.0
        return max(1, math.ceil(remaining))
