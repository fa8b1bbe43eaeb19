"""``kill -9`` of the trainer process at every step of a block, then restarts: by counting, every
event is in exactly one published block, none twice, versions strictly increasing.

The embedded log and store, one crash at each crash point of ``trainer.faults`` (the same on
real Kafka and Redis, with two trainers and ``SIGKILL`` at random moments: test_single_writer).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.event_log import SqliteEventLog
from contracts.events import InteractionEvent
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from tests.faults.harness import (
    BASE,
    BLOCK,
    CRASHED,
    TRAINER_SETTINGS,
    TrainerProcess,
    audit,
    blocks_published,
    expected_blocks,
    make_events,
    unique_in_order,
    wait_for,
)

# One crash at each point, in the order a block meets them, each in a later block.
CRASH_PLAN = ["filling@0", "training@1", "checkpointed@2", "published@3", "committed@4"]


def embedded_log(events: list[InteractionEvent]) -> list[InteractionEvent]:
    """The log as appended: the events with 30 re-sent copies spliced in (same event ids)."""
    return events[:350] + events[10:30] + events[350:600] + events[300:310] + events[600:]


@pytest.mark.slow
def test_a_crash_at_every_step_loses_and_repeats_nothing_embedded(
    tmp_path: Path, figures: dict
) -> None:
    settings = {**TRAINER_SETTINGS, "data_dir": tmp_path / "data"}
    events = make_events(BASE + 7 * BLOCK, "emb")  # blocks 0..7
    logged = embedded_log(events)
    log = SqliteEventLog(Settings(data_dir=settings["data_dir"]).event_log_path)
    log.append(logged[:400])
    log.append_raw([b"{not json", b'{"user_id": "u1"}'], [None, "u1"])  # two malformed
    log.append(logged[400:])
    log.close()
    blocks = expected_blocks(unique_in_order(logged), BASE, BLOCK)
    assert len(blocks) == 8

    trainer = TrainerProcess("trainer", settings, tmp_path / "trainer.log")
    store = FileModelStore(Path(settings["data_dir"]) / "models")
    for crash_at in CRASH_PLAN:
        code = trainer.start(crash_at).wait_exit()
        assert code == CRASHED, f"no crash at {crash_at}\n{trainer.tail()}"
    assert trainer.count(r"\[fault\] .* crash at ") == len(CRASH_PLAN)
    # The restarts found the block checkpointed but unpublished (after "checkpointed@2") and
    # the one published but uncommitted (after "published@3").
    assert trainer.count("block 2 was checkpointed but not published") == 1
    assert trainer.count("block 3 was published as version 4 before the restart") == 1

    trainer.start()  # no crash: blocks 5, 6, 7
    wait_for("all 8 blocks", lambda: blocks_published(store) == 8, [trainer])
    assert trainer.stop() == 0
    result = audit(store, blocks)
    assert result.versions == list(range(1, 9))
    figures.update(crashes=len(CRASH_PLAN), **result.figures(), resent=30, malformed=2)
