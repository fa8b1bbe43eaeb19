"""Closing blocks by count and by time, and the dedup window."""

from __future__ import annotations

import collections
import random
import tracemalloc

import pytest

from contracts.event_log import LogRecord
from trainer.blocks import BlockPolicy, DedupWindow, OpenBlock, dedup_hash

POLICY = BlockPolicy(base_block_size=5, block_size=3, interval_s=10.0, min_block_size=2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fill(block: OpenBlock, count: int) -> None:
    for _ in range(count):
        n = len(block)
        block.add_event(user=n, item=n, timestamp=50.0 + n)


def test_the_base_block_closes_at_its_own_size_only() -> None:
    clock = FakeClock()
    block = OpenBlock(0, POLICY, clock=clock)
    fill(block, 4)
    clock.now += 1_000  # time never closes block 0
    assert not block.should_close()
    fill(block, 1)
    assert block.should_close() and len(block) == 5


def test_later_blocks_close_after_block_size_events() -> None:
    block = OpenBlock(1, POLICY, clock=FakeClock())
    fill(block, 2)
    assert not block.should_close()
    fill(block, 1)
    assert block.should_close()
    assert (block.first_timestamp, block.last_timestamp) == (50.0, 52.0)


def test_later_blocks_close_after_the_interval_with_enough_events() -> None:
    clock = FakeClock()
    block = OpenBlock(1, POLICY, clock=clock)
    assert block.seconds_left() == float("inf")  # no event, no deadline
    fill(block, 1)  # the interval starts with the first event
    clock.now += 4.0
    assert block.seconds_left() == 6.0
    clock.now += 6.0
    assert not block.should_close()  # interval over but fewer than min_block_size events
    fill(block, 1)
    assert block.should_close()


def test_record_positions_are_kept_for_the_commit() -> None:
    block = OpenBlock(1, POLICY)
    for partition, offset in [(0, 4), (1, 9), (0, 7), (0, 5)]:
        block.add_record(LogRecord(partition, offset, b"x"))
    assert len(block) == 0
    assert block.last_records() == [LogRecord(0, 7, None), LogRecord(1, 9, None)]
    assert block.log_range() == {"0": [4, 7], "1": [9, 9]}
    block.forget_records()
    assert block.last_records() == [] and block.log_range() == {}


def test_a_block_keeps_no_bytes_of_the_records_it_read() -> None:
    # 60 rejected 1 MB messages between two events must not stay in memory until the block
    # closes (the trainer grew by ~540 MB with 600 junk messages of 900 KB).
    block = OpenBlock(1, POLICY)
    tracemalloc.start()
    try:
        for offset in range(60):
            block.add_record(LogRecord(0, offset, bytes(1_000_000)))
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 100_000, kept


def test_dedup_window_drops_repeats_and_forgets_the_oldest() -> None:
    window = DedupWindow(capacity=3)
    assert [window.add(k) for k in [1, 2, 1, 3]] == [True, True, False, True]
    assert window.add(4) is True  # evicts 1
    assert 1 not in window and 2 in window and len(window) == 3
    assert window.add(1) is True
    restored = DedupWindow(3, window.to_array().tolist())
    assert restored.to_array().tolist() == [3, 4, 1]
    assert restored.add(3) is False


def test_dedup_hash_is_stable_and_distinguishes_keys() -> None:
    assert dedup_hash("event-1") == dedup_hash("event-1")
    assert dedup_hash("event-1") != dedup_hash("event-2")
    assert -(2**63) <= dedup_hash("x") < 2**63


@pytest.mark.parametrize("capacity", [1, 2, 7])
def test_dedup_window_matches_a_first_in_first_out_reference(capacity: int) -> None:
    rng = random.Random(capacity)
    window, reference = DedupWindow(capacity), collections.deque()
    for _ in range(500):
        key = rng.randrange(12) - 6
        expected = key not in reference
        if expected:
            reference.append(key)
            if len(reference) > capacity:
                reference.popleft()
        assert window.add(key) is expected
        assert window.to_array().tolist() == list(reference)
        assert len(window) == len(reference)
    restored = DedupWindow(capacity, window.to_array().tolist())
    assert restored.to_array().tolist() == list(reference)
