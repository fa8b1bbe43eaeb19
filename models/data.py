"""Block data: loading the shipped interaction file, the per-user block split, sparse views.

CSR views are plain ``(indptr, indices)`` long tensors: the items of user u are
``indices[indptr[u]:indptr[u + 1]]``, sorted ascending and de-duplicated.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.api import BlockData, Interactions

SPLITS = ("train", "valid", "test")
COLUMNS = ("block", "split", "user", "item")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CSR = tuple[Tensor, Tensor]


def resolve_dataset(name_or_path: str | Path) -> Path:
    """``"yelp"`` / ``"gowalla"`` -> ``../shared/data/ccd-<name>/interactions.tsv``; else a path."""
    name = str(name_or_path)
    if name.lower() in ("yelp", "gowalla"):
        return SHARED_DATA / f"ccd-{name.lower()}" / "interactions.tsv"
    return Path(name_or_path)


def read_block_table(path: str | Path) -> np.ndarray:
    """The TSV as an int64 array (n, 4) with columns block, split (0/1/2 = train/valid/test),
    user, item, whatever the file's column order."""
    with open(path) as handle:
        names = handle.readline().strip().split("\t")
        if sorted(names) != sorted(COLUMNS):
            raise ValueError(f"{path}: expected columns {COLUMNS}, got {names}")
        codes = {name: code for code, name in enumerate(SPLITS)}

        def split_code(name: str) -> int:
            if name not in codes:
                raise ValueError(f"{path}: unknown split {name!r}")
            return codes[name]

        table = np.loadtxt(
            handle,
            dtype=np.int64,
            delimiter="\t",
            converters={names.index("split"): split_code},
            ndmin=2,
        )
    if table.size == 0:
        return np.empty((0, 4), dtype=np.int64)
    return table[:, [names.index(c) for c in COLUMNS]]


def load_block_file(path: str | Path) -> list[BlockData]:
    """One BlockData per block of an ``interactions.tsv`` (block, split, user, item).

    ``n_users`` / ``n_items`` of block k = max id seen in blocks 0..k (any split) + 1, the code's
    cumulative ``p_total``. Train/valid/test are taken as given (row order kept).
    """
    table = read_block_table(path)
    blocks: list[BlockData] = []
    n_users = n_items = 0
    for index in np.unique(table[:, 0]):
        rows = table[table[:, 0] == index]
        n_users = max(n_users, int(rows[:, 2].max()) + 1)
        n_items = max(n_items, int(rows[:, 3].max()) + 1)
        parts = [_interactions(rows[rows[:, 1] == code]) for code in range(len(SPLITS))]
        blocks.append(BlockData(int(index), n_users, n_items, *parts))
    return blocks


def _interactions(rows: np.ndarray) -> Interactions:
    return Interactions(torch.from_numpy(rows[:, 2].copy()), torch.from_numpy(rows[:, 3].copy()))


def split_block(
    users: Tensor,
    items: Tensor,
    n_users: int,
    n_items: int,
    index: int,
    seed: int,
    test_fraction: float = 0.1,
    with_test: bool = True,
    weights: Tensor | None = None,
) -> BlockData:
    """The code's per-user random split of one block's interactions (ccd-method.md §1.2).

    Per user with n interactions (shuffled): the first n_test = max(floor(f·n), 1) go to test,
    the next n_test to valid, the rest to train. Valid/test items absent from the block's train
    items are dropped; a user whose valid or test list is then empty leaves both. With
    ``with_test=False`` (streaming) the would-be test part joins train and valid is kept
    (filtered the same way). ``weights`` (n,) follow their pairs into each part.
    """
    users_np = users.cpu().numpy().astype(np.int64)
    items_np = items.cpu().numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users_np)), users_np))
    users_np, items_np = users_np[order], items_np[order]
    weights_np = None if weights is None else weights.float().cpu().numpy()[order]
    _, starts, counts = np.unique(users_np, return_index=True, return_counts=True)
    position = np.arange(len(users_np)) - np.repeat(starts, counts)
    n_test = np.repeat(np.maximum(np.floor(test_fraction * counts).astype(np.int64), 1), counts)
    is_test = position < n_test
    is_valid = (position >= n_test) & (position < 2 * n_test)
    is_train = ~(is_test | is_valid)
    if not with_test:
        is_train |= is_test
        is_test[:] = False
    train_items = np.unique(items_np[is_train])
    is_valid &= np.isin(items_np, train_items)
    is_test &= np.isin(items_np, train_items)
    # A user must keep both a valid and a test item (only a valid one when with_test=False).
    has_valid = np.isin(users_np, users_np[is_valid])
    has_test = np.isin(users_np, users_np[is_test]) if with_test else np.ones_like(has_valid)
    keep = has_valid & has_test
    is_valid &= keep
    is_test &= keep

    def part(mask: np.ndarray) -> Interactions:
        part_weights = None if weights_np is None else torch.from_numpy(weights_np[mask])
        return Interactions(
            torch.from_numpy(users_np[mask]), torch.from_numpy(items_np[mask]), part_weights
        )

    return BlockData(index, n_users, n_items, part(is_train), part(is_valid), part(is_test))


def user_item_lists(inter: Interactions, n_users: int) -> CSR:
    """CSR ``(indptr (n_users+1,), indices (nnz,))`` of the distinct items per user.

    Examples:
        >>> pairs = Interactions(torch.tensor([0, 0, 2, 0]), torch.tensor([3, 1, 1, 3]))
        >>> user_item_lists(pairs, 3)  # user 0: items 1, 3; user 1: none; user 2: item 1
        (tensor([0, 2, 2, 3]), tensor([1, 3, 1]))
    """
    users, items = inter.users.long(), inter.items.long()
    if len(inter) and int(users.max()) >= n_users:
        raise ValueError(f"user id {int(users.max())} >= n_users {n_users}")
    stride = int(items.max()) + 1 if len(inter) else 1
    keys = torch.unique(users * stride + items)  # sorted: by user, then item
    counts = torch.bincount(keys // stride, minlength=n_users)
    indptr = torch.zeros(n_users + 1, dtype=torch.long, device=keys.device)
    indptr[1:] = torch.cumsum(counts, 0)
    return indptr, keys % stride


def gather_rows(indptr: Tensor, indices: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """Entries of the CSR rows of ``users`` (B,) as (row position in ``users``, column) pairs.

    Users beyond the CSR's rows have no entries.
    """
    n_rows = indptr.numel() - 1
    users = users.long()
    inside = users < n_rows
    safe = users.clamp(max=max(n_rows - 1, 0))
    starts = indptr[safe] if n_rows > 0 else torch.zeros_like(users)
    counts = torch.where(inside, indptr[safe + 1] - starts, 0) if n_rows > 0 else starts
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    offsets = torch.arange(rows.numel(), device=users.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    return rows, indices[torch.repeat_interleave(starts, counts) + offsets]


def dense_rows(indptr: Tensor, indices: Tensor, users: Tensor, n_cols: int) -> Tensor:
    """Binary float rows of ``users`` (B,), shape (B, n_cols); columns >= n_cols are dropped."""
    rows, cols = gather_rows(indptr, indices, users)
    keep = cols < n_cols
    out = torch.zeros(users.numel(), n_cols, device=indices.device)
    out[rows[keep], cols[keep]] = 1.0
    return out


def interaction_matrix(inter: Interactions, n_users: int, n_items: int) -> Tensor:
    """Binary user-item matrix as a sparse CSR float32 tensor, shape (n_users, n_items)."""
    indptr, indices = user_item_lists(inter, n_users)
    if len(indices) and int(indices.max()) >= n_items:
        raise ValueError(f"item id {int(indices.max())} >= n_items {n_items}")
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            indptr,
            indices,
            torch.ones(indices.numel(), device=indices.device),
            (n_users, n_items),
            device=indices.device,
            check_invariants=False,
        )
