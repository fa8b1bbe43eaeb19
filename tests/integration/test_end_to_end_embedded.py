"""The end-to-end scenario of ``test_end_to_end.py`` in embedded mode: no Kafka, no Redis.

`ccd serve`, `ccd train` and `ccd produce` run as separate processes that share one data
directory: the SQLite event log and the versioned-file model store in it are their only link.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_end_to_end import SCALE, Launcher, Sizes, report, run_scenario

EMBEDDED_SIZES = Sizes(
    base_block=1000 * SCALE, block=500 * SCALE, users=150 * SCALE, items=100 * SCALE
)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    yield started
    started.stop_all()


def test_embedded_events_to_blocks_to_versions_to_answers(
    launcher: Launcher, data_dir: Path, tmp_path: Path
) -> None:
    settings = {"data_dir": data_dir, "learner": "ccd"}  # no Kafka or Redis address: embedded
    numbers = run_scenario(launcher, settings, EMBEDDED_SIZES, tmp_path)
    assert numbers["learner"] == "ccd"
    assert (data_dir / "events.sqlite").is_file() and (data_dir / "models" / "CURRENT").is_file()
    report("embedded (SQLite log, file store)", numbers)
