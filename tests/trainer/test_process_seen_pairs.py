"""The seen-pairs helpers: membership, merge and a user's rows, by binary search."""

from __future__ import annotations

import numpy as np

from trainer.process import contains_sorted, insert_sorted, rows_of_users


def test_rows_of_users_equals_a_filter_over_all_pairs() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, 5_000)
    items = rng.integers(0, 1_000, 5_000)
    pairs = np.unique((users.astype(np.int64) << 32) | items)
    chosen = np.sort(rng.choice(400, 50, replace=False))  # some of them have no pairs
    expected = pairs[np.isin(pairs >> 32, chosen)]
    assert np.array_equal(rows_of_users(pairs, chosen), expected)
    assert rows_of_users(pairs, np.array([], dtype=np.int64)).size == 0
    assert rows_of_users(np.array([], dtype=np.int64), chosen).size == 0


def test_contains_and_insert_sorted_equal_isin_and_union() -> None:
    rng = np.random.default_rng(1)
    seen = np.unique(rng.integers(0, 10_000, 3_000))
    block = np.unique(rng.integers(0, 12_000, 800))
    assert np.array_equal(contains_sorted(seen, block), np.isin(block, seen))
    assert np.array_equal(insert_sorted(seen, block), np.union1d(seen, block))
    empty = np.array([], dtype=seen.dtype)
    assert np.array_equal(insert_sorted(empty, block), block)
    assert not contains_sorted(empty, block).any()
