"""Memory per new entity and per event, measured; a block above ``max_block_events`` is split.

What grows with the stream, per new user / item: the id maps, the learner's tables (teachers and
student for "ccd", one table for "bpr") and the item counts; per distinct (user, item) pair: the
seen pairs (8 bytes). Bounded whatever the stream: the dedup window (``dedup_window`` keys)
and the open block (``max_block_events`` events). The README's "Guarantees" section states them.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contracts.event_log import LogRecord, SqliteEventLog
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from models.api import BlockData, Interactions
from tests.faults.harness import digest, make_events, unique_in_order
from trainer.blocks import BlockPolicy, DedupWindow, OpenBlock, dedup_hash
from trainer.ids import IdMap
from trainer.process import Trainer, build_learner


def tensor_bytes(state: Any) -> int:
    """Bytes of every tensor / array in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(value) for value in state)
    return 0


def block(index: int, n_users: int, n_items: int, users: range, items: range) -> BlockData:
    """150 interactions between ``users`` and ``items`` (every block the same count, so that
    what the learner keeps per block does not change between measurements)."""
    rng = np.random.default_rng(index)
    u = torch.from_numpy(rng.choice(np.asarray(users), 150))
    i = torch.from_numpy(rng.choice(np.asarray(items), 150))
    return BlockData(index, n_users, n_items, Interactions(u, i), Interactions(u[:5], i[:5]))


@pytest.mark.parametrize("learner_name", ["bpr", pytest.param("ccd", marks=pytest.mark.slow)])
def test_the_learner_state_grows_by_a_fixed_amount_per_new_user_and_item(
    learner_name: str, figures: dict
) -> None:
    """Blocks bring 40 new users, then 80 more, then 30 new items, then 60 more, each followed
    by a block with no new entity (tables that lag one block behind catch up). Growth per user
    must be the same for 40 and 80 new users, likewise per item: linear, nothing else grows."""
    torch.manual_seed(0)
    learner = make_learner(learner_name)
    users, items = 60, 40
    sizes, index = [], 0

    def learn(new_users: int, new_items: int, new_ones: bool) -> None:
        nonlocal users, items, index
        users, items = users + new_users, items + new_items
        user_range = range(users - new_users, users) if new_users and new_ones else range(users)
        item_range = range(items - new_items, items) if new_items and new_ones else range(items)
        learner.learn_block(block(index, users, items, user_range, item_range))
        index += 1

    for _ in range(3):  # the base block, then tables that exist from the second block on
        learn(0, 0, False)
    sizes.append(tensor_bytes(learner.state_dict()))
    for new_users, new_items in ((40, 0), (80, 0), (0, 30), (0, 60)):
        learn(new_users, new_items, True)
        learn(0, 0, False)
        sizes.append(tensor_bytes(learner.state_dict()))
    per_user = [(sizes[1] - sizes[0]) / 40, (sizes[2] - sizes[1]) / 80]
    per_item = [(sizes[3] - sizes[2]) / 30, (sizes[4] - sizes[3]) / 60]
    assert per_user[0] == per_user[1] > 0 and per_item[0] == per_item[1] > 0
    if learner_name == "bpr":  # one float32 table of dimension 16 for each side
        assert (per_user[0], per_item[0]) == (16 * 4, 16 * 4)
    figures.update(learner=learner_name, bytes_per_user=per_user[0], bytes_per_item=per_item[0])


def make_learner(name: str) -> Any:
    """The trainer's learner of that name; for "ccd" with one epoch per stage, which changes
    its speed, not the shapes of its state."""
    if name == "ccd":
        from models.ccd import CCDConfig, CCDLearner

        epochs = {"base_epochs": 1, "kd_epochs": 1, "student_epochs": 1, "teacher_epochs": 1}
        return CCDLearner(CCDConfig.preset("stream", **epochs))
    learner, used = build_learner(Settings(learner=name, seed=0))
    assert used == name
    return learner


def traced_bytes_per(count: int, fill: Any) -> float:
    """Python heap bytes per element that ``fill()`` allocates (and keeps) for ``count``."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept is not None
    return (after - before) / count


def test_bookkeeping_bytes_per_entity_per_event_and_per_key(figures: dict) -> None:
    n = 20_000

    def id_map() -> IdMap:
        ids = IdMap()
        for k in range(n):
            ids.add(f"user-{k:07d}")  # 12 characters
        return ids

    def dedup() -> DedupWindow:
        window = DedupWindow(n)
        for k in range(n):
            window.add(dedup_hash(f"event-{k}"))
        return window

    events = [e.to_bytes() for e in make_events(n, "mem")]

    def open_block() -> OpenBlock:
        opened = OpenBlock(1, BlockPolicy(10**9, 10**9, 3600.0, 1))
        for offset, value in enumerate(events):
            opened.add_record(LogRecord(0, offset, value))
            opened.add_event(offset % 5000, offset % 3000, 1.0, dedup_hash(str(offset)))
        return opened

    per_id = traced_bytes_per(n, id_map)
    per_key = traced_bytes_per(n, dedup)
    per_event = traced_bytes_per(n, open_block)
    assert per_id < 250 and per_key < 250 and per_event < 600
    figures.update(
        id_map_bytes_per_id=round(per_id),
        dedup_bytes_per_key=round(per_key),
        open_block_bytes_per_event=round(per_event),
        event_json_bytes=round(sum(map(len, events)) / n),
    )


def test_a_block_above_max_block_events_is_split_not_refused(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        learner="bpr",
        base_block_size=500,
        block_size=150,  # above max_block_events the Settings refuse it (tests/contracts)
        block_interval_s=3600,
        max_block_events=150,
        torch_threads=1,
    )
    events = make_events(600, "split")
    log = SqliteEventLog(settings.event_log_path)
    log.append(events)
    log.close()
    trainer = Trainer(settings)
    trainer.run(max_blocks=4)
    trainer.close()
    store = FileModelStore(settings.model_store_dir)
    metas = [store.load_meta(v) for v in store.versions()]
    ids = unique_in_order(events)
    # Every block closes at 150 events: the base block of 500 is cut at the cap, the rest follows.
    assert [m["events"] for m in metas] == [150, 150, 150, 150]
    assert [m["event_digest"] for m in metas] == [
        digest(ids[start : start + 150]) for start in range(0, 600, 150)
    ]
