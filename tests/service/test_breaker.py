"""The event log's circuit breaker, on a hand-driven clock."""

from __future__ import annotations

import threading

import pytest

from service.breaker import BreakerOpen, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail() -> None:
    raise ConnectionError("log down")


def test_closed_open_half_open_closed() -> None:
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=2.0, clock=clock)
    assert breaker.call(lambda: 7) == 7 and not breaker.is_open
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.is_open and breaker.retry_after_s() == 2
    calls: list[int] = []
    clock.now += 1.2  # still cooling down: not even attempted
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: calls.append(1))
    assert calls == [] and breaker.retry_after_s() == 1  # ceil(0.8)
    clock.now += 0.8  # cooldown over: one probe, which fails again and reopens
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.retry_after_s() == 2
    clock.now += 2.0  # the next probe succeeds and closes it
    assert breaker.call(lambda: "ok") == "ok"
    assert not breaker.is_open and breaker.retry_after_s() == 1
    assert breaker.call(lambda: "again") == "again"


def test_only_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=1.0, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.now += 1.0
    probing, release = threading.Event(), threading.Event()

    def slow_probe() -> str:
        probing.set()
        release.wait(5)
        return "probed"

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(breaker.call(slow_probe)))
    thread.start()
    assert probing.wait(5)
    with pytest.raises(BreakerOpen):  # a second caller does not pile onto the dead log
        breaker.call(lambda: "second")
    release.set()
    thread.join(5)
    assert results == ["probed"] and not breaker.is_open
