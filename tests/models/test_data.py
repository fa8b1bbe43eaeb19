"""Block file loading, the per-user block split and the sparse views."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from models.api import Interactions
from models.data import (
    dense_rows,
    interaction_matrix,
    load_block_file,
    resolve_dataset,
    split_block,
    user_item_lists,
)

TSV = """block\tsplit\tuser\titem
0\ttrain\t0\t1
0\ttrain\t1\t0
0\tvalid\t0\t0
0\ttest\t2\t1
1\ttrain\t3\t1
1\ttrain\t0\t4
1\ttest\t0\t1
"""


def test_load_block_file(tmp_path: Path) -> None:
    path = tmp_path / "interactions.tsv"
    path.write_text(TSV)
    blocks = load_block_file(path)
    assert [b.index for b in blocks] == [0, 1]
    b0, b1 = blocks
    assert (b0.n_users, b0.n_items) == (3, 2)
    assert (b1.n_users, b1.n_items) == (4, 5)  # cumulative max id + 1
    assert b0.train.users.tolist() == [0, 1] and b0.train.items.tolist() == [1, 0]
    assert b0.valid.users.tolist() == [0] and b0.test.users.tolist() == [2]
    assert b1.train.items.tolist() == [1, 4] and len(b1.valid) == 0
    assert b1.test.users.dtype == torch.long


def test_load_block_file_other_column_order_and_bad_split(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_text("user\titem\tblock\tsplit\n5\t2\t0\ttrain\n1\t7\t0\ttest\n")
    (block,) = load_block_file(path)
    assert (block.n_users, block.n_items) == (6, 8)
    assert block.train.users.tolist() == [5] and block.test.items.tolist() == [7]
    path.write_text("block\tsplit\tuser\titem\n0\ttraining\t0\t0\n")
    with pytest.raises(ValueError):
        load_block_file(path)


def test_resolve_dataset() -> None:
    path = resolve_dataset("yelp")
    assert path.parts[-3:] == ("data", "ccd-yelp", "interactions.tsv")
    assert path.parent.parent.parent.name == "shared"
    assert resolve_dataset("/x/y.tsv") == Path("/x/y.tsv")


def make_stream() -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [(0, 3)]  # one interaction: 1 test item, no train -> lost
    pairs += [(1, 7), (1, 7)]  # two: 1 test + 1 valid (item 7 is in train via user 2)
    pairs += [(2, 7)] * 10  # ten: 1 test, 1 valid, 8 train
    pairs += [(3, 8), (3, 9)]  # two, items never in train -> dropped from valid and test
    pairs += [(4, i) for i in range(10, 30)]  # twenty: 2 test, 2 valid, 16 train
    pairs += [(5, i) for i in range(10, 30)]  # the same items, so most valid/test items survive
    users, items = zip(*pairs, strict=True)
    return torch.tensor(users), torch.tensor(items)


def per_user(inter: Interactions) -> Counter:
    return Counter(inter.users.tolist())


def test_split_block_small_users() -> None:
    users, items = make_stream()
    block = split_block(users, items, 6, 30, index=3, seed=0)
    assert (block.index, block.n_users, block.n_items) == (3, 6, 30)
    train, valid, test = per_user(block.train), per_user(block.valid), per_user(block.test)
    assert train[0] == 0 and valid[0] == 0 and test[0] == 0
    assert train[1] == 0 and valid[1] == 1 and test[1] == 1
    assert train[2] == 8 and valid[2] == 1 and test[2] == 1
    assert train[3] == 0 and valid[3] == 0 and test[3] == 0
    assert train[4] == 16 and valid[4] <= 2 and test[4] <= 2
    train_items = set(block.train.items.tolist())
    assert set(block.valid.items.tolist()) <= train_items
    assert set(block.test.items.tolist()) <= train_items
    assert set(valid) == set(test)  # a user is in valid iff in test


def test_split_block_is_seeded() -> None:
    users, items = make_stream()
    a = split_block(users, items, 6, 30, 0, seed=1)
    b = split_block(users, items, 6, 30, 0, seed=1)
    c = split_block(users, items, 6, 30, 0, seed=2)
    assert torch.equal(a.test.items, b.test.items) and torch.equal(a.train.items, b.train.items)
    assert not torch.equal(a.train.items, c.train.items)


def test_split_block_streaming_keeps_test_part_in_train() -> None:
    users, items = make_stream()
    block = split_block(users, items, 6, 30, 0, seed=0, with_test=False)
    assert len(block.test) == 0
    train, valid = per_user(block.train), per_user(block.valid)
    assert train[0] == 1  # the would-be test item
    assert train[1] == 1 and valid[1] == 1
    assert train[2] == 9 and valid[2] == 1
    assert train[3] == 1 and valid[3] == 0  # valid item 8 or 9 not in train -> dropped
    assert train[4] == 18 and valid[4] <= 2
    assert len(block.train) + len(block.valid) <= len(users) - 1


def test_sparse_views() -> None:
    inter = Interactions(torch.tensor([2, 0, 2, 2]), torch.tensor([3, 1, 0, 3]))
    indptr, indices = user_item_lists(inter, 4)
    assert indptr.tolist() == [0, 1, 1, 3, 3] and indices.tolist() == [1, 0, 3]
    matrix = interaction_matrix(inter, 4, 5)
    assert matrix.layout == torch.sparse_csr
    expected = torch.zeros(4, 5)
    expected[0, 1] = expected[2, 0] = expected[2, 3] = 1.0
    assert torch.equal(matrix.to_dense(), expected)
    rows = dense_rows(indptr, indices, torch.tensor([2, 7, 0]), 2)
    assert rows.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]  # column 3 beyond n_cols
    with pytest.raises(ValueError):
        user_item_lists(inter, 2)


@pytest.mark.skipif(not resolve_dataset("yelp").exists(), reason="../shared/data/ccd-yelp absent")
def test_shipped_yelp_sizes() -> None:
    blocks = load_block_file(resolve_dataset("yelp"))
    assert len(blocks) == 6
    assert [len(b.train) for b in blocks] == [119869, 33032, 20189, 20056, 23567, 21291]
    assert (blocks[-1].n_users, blocks[-1].n_items) == (14950, 12261)
