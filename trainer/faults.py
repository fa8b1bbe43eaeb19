"""Crash points for the fault-injection tests: a test hook, inert unless the variable is set.

``CCD_FAULT_CRASH_AT=POINT[@BLOCK]`` makes the trainer end itself with ``os._exit(137)`` (the
status of a ``kill -9``: no cleanup, no flush, no lease release) when it reaches ``POINT`` while
processing block ``BLOCK`` (any block when omitted). The points, in the order a block meets them:

- ``filling``: the open block holds half of the events it closes at;
- ``training``: 5 ms into ``learn_block`` (from a timer thread, so the step is cut mid-way),
  or at its end when it is shorter than that;
- ``checkpointed``: the checkpoint is durable, the model is not published yet;
- ``published``: the model is published, the log positions are not committed yet;
- ``committed``: the positions are committed, the next block is not opened yet.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CRASH_ENV = "CCD_FAULT_CRASH_AT"
CRASH_EXIT_CODE = 137
POINTS = ("filling", "training", "checkpointed", "published", "committed")
MID_STEP_DELAY_S = 0.005


@dataclass(frozen=True)
class CrashPlan:
    """Where to crash (``point`` None: never)."""

    point: str | None = None
    block: int | None = None

    @classmethod
    def from_env(cls) -> CrashPlan:
        spec = os.environ.get(CRASH_ENV, "").strip()
        if not spec:
            return cls()
        point, _, block = spec.partition("@")
        if point not in POINTS or (block and not block.isdigit()):
            raise ValueError(f"{CRASH_ENV}={spec!r}: expected one of {POINTS}, optionally @BLOCK")
        return cls(point, int(block) if block else None)

    def _matches(self, point: str, block_index: int) -> bool:
        return point == self.point and self.block in (None, block_index)

    def hit(self, point: str, block_index: int) -> None:
        """Crash now if the plan names this point and block."""
        if self._matches(point, block_index):
            _die(point, block_index)

    @contextmanager
    def during(self, point: str, block_index: int) -> Iterator[None]:
        """Crash in the middle of the ``with`` body if the plan names this point and block."""
        timer = None
        if self._matches(point, block_index):
            timer = threading.Timer(MID_STEP_DELAY_S, _die, (point, block_index))
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
                # A step shorter than the delay (a tiny block), or one the timer thread could not
                # interrupt on a busy machine, must not end uncut: the planned crash happens here.
                _die(point, block_index)


def _die(point: str, block_index: int) -> None:
    os.write(2, f"[fault] {CRASH_ENV}: crash at {point} of block {block_index}\n".encode())
    os._exit(CRASH_EXIT_CODE)
