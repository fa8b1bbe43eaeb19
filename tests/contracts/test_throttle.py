"""The malformed-message warnings: the first ones in full, then one summary per interval."""

from __future__ import annotations

import pytest

import contracts.throttle
from contracts.throttle import WarningThrottle


def test_burst_then_one_summary_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(contracts.throttle.time, "monotonic", lambda: now[0])
    throttle = WarningThrottle(burst=3, interval_s=10.0)
    assert [throttle.allow() for _ in range(3)] == [True, True, True]
    assert [throttle.allow() for _ in range(5)] == [False] * 5
    assert throttle.summary() == 0  # not due before the interval has passed
    now[0] = 110.0
    assert throttle.summary() == 5  # every suppressed one is reported, once
    assert throttle.summary() == 0
    throttle.allow()
    now[0] = 115.0
    assert throttle.summary() == 0
    now[0] = 120.0
    assert throttle.summary() == 1
    assert throttle.seen == 9
