"""The fault-injection crash points end the process where they promise, even for tiny steps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.faults import CRASH_EXIT_CODE

SCRIPT = """
from trainer.faults import CrashPlan
with CrashPlan("training", 1).during("training", {block}):
    pass  # a step far shorter than the timer's delay
print("survived")
"""


@pytest.mark.parametrize(("block", "code"), [(1, CRASH_EXIT_CODE), (2, 0)])
def test_a_step_shorter_than_the_delay_still_crashes_when_planned(block: int, code: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(block=block)], capture_output=True, text=True
    )
    assert done.returncode == code
    assert ("survived" in done.stdout) is (code == 0)
    assert ("crash at training of block 1" in done.stderr) is (code != 0)
