"""Synthetic catalogues the size of the paper's datasets, for serving benchmarks.

Embeddings are random (N(0, 1/d)): top-k cost does not depend on what the vectors mean, only on
the sizes. Each user also gets a history of items (Poisson with the dataset's mean, drawn from a
Zipf-like popularity), appended to the embedded event log so that the server's seen-items index
holds a realistic number of items to exclude per request.

A teacher snapshot stores its members side by side in one table: columns
``[0, d_1)`` are member 1's, ``[d_1, d_1 + d_2)`` member 2's, and so on, with the member sizes
in ``meta["teacher_member_dims"]`` (see ``bench.teacher``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import orjson

from contracts.event_log import SqliteEventLog
from contracts.model_store import FileModelStore, ModelSnapshot

_APPEND_BATCH = 20_000


@dataclass(frozen=True)
class Catalogue:
    """Sizes of one dataset (ccd-<name>/interactions.tsv: users, items, interactions / users)
    and the CCD models trained on it (ccd-method.md §2: the student's and teachers' dims)."""

    name: str
    users: int
    items: int
    student_dim: int
    teacher_dims: tuple[int, ...]
    mean_seen: float
    teacher_note: str

    def scaled(self, scale: float) -> Catalogue:
        """The same catalogue with ``scale`` times the users and items (for smoke runs)."""
        if scale == 1.0:
            return self
        return Catalogue(
            self.name,
            max(10, round(self.users * scale)),
            max(50, round(self.items * scale)),
            self.student_dim,
            self.teacher_dims,
            min(self.mean_seen, 10.0),
            self.teacher_note,
        )


CATALOGUES = {
    "gowalla": Catalogue(
        "gowalla",
        users=29_858,
        items=40_988,
        student_dim=16,
        teacher_dims=(64,) * 5,
        mean_seen=971_195 / 29_858,
        teacher_note="5 BPR-MF members d=64 (the preset's 2 Mult-VAE members are left out: "
        "they are not dot-product models and would only slow the teacher further)",
    ),
    "yelp": Catalogue(
        "yelp",
        users=14_950,
        items=12_259,
        student_dim=8,
        teacher_dims=(128,) * 5,
        mean_seen=315_814 / 14_950,
        teacher_note="5 LightGCN members d=128 (served by their final propagated embeddings)",
    ),
}


def user_id(index: int) -> str:
    return f"u{index}"


def item_id(index: int) -> str:
    return f"i{index}"


def _popularity(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like weights (I,), in a random item order."""
    weights = 1.0 / (1.0 + np.arange(n_items, dtype=np.float64))
    return rng.permutation(weights / weights.sum())


def histories(cat: Catalogue, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(users (n,), items (n,)) of every user's past interactions, distinct within a user."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, rng.poisson(cat.mean_seen, size=cat.users))
    users = np.repeat(np.arange(cat.users), counts)
    items = rng.choice(cat.items, size=len(users), p=_popularity(cat.items, rng))
    pairs = np.unique(users.astype(np.int64) << 32 | items.astype(np.int64))
    return pairs >> 32, pairs & 0xFFFFFFFF


def snapshot(cat: Catalogue, dims: tuple[int, ...], seed: int = 0) -> ModelSnapshot:
    """A snapshot with random embeddings of ``sum(dims)`` columns (one member per entry)."""
    rng = np.random.default_rng(seed + 1)
    total = sum(dims)
    scale = np.repeat([1.0 / np.sqrt(d) for d in dims], dims).astype(np.float32)
    meta = {"synthetic": True, "catalogue": cat.name, "published_at": time.time()}
    if len(dims) > 1:
        meta["teacher_member_dims"] = list(dims)
    return ModelSnapshot(
        user_ids=[user_id(u) for u in range(cat.users)],
        item_ids=[item_id(i) for i in range(cat.items)],
        user_embeddings=rng.standard_normal((cat.users, total), dtype=np.float32) * scale,
        item_embeddings=rng.standard_normal((cat.items, total), dtype=np.float32) * scale,
        item_popularity=(_popularity(cat.items, rng) * 1e6).astype(np.float32),
        meta=meta,
    )


def student_snapshot(cat: Catalogue, seed: int = 0) -> ModelSnapshot:
    return snapshot(cat, (cat.student_dim,), seed)


def teacher_snapshot(cat: Catalogue, seed: int = 0) -> ModelSnapshot:
    return snapshot(cat, cat.teacher_dims, seed)


def write_events(path, users: np.ndarray, items: np.ndarray, start_time: float) -> int:
    """Append the pairs to the embedded event log at ``path`` (as the server's POST would)."""
    log = SqliteEventLog(path)
    try:
        for first in range(0, len(users), _APPEND_BATCH):
            u = users[first : first + _APPEND_BATCH].tolist()
            i = items[first : first + _APPEND_BATCH].tolist()
            keys = [user_id(x) for x in u]
            values = [
                orjson.dumps({"user_id": key, "item_id": item_id(y), "timestamp": start_time})
                for key, y in zip(keys, i, strict=True)
            ]
            log.append_raw(values, keys)
    finally:
        log.close()
    return len(users)


def publish(store_dir, snap: ModelSnapshot) -> int:
    store = FileModelStore(store_dir)
    try:
        return store.publish(snap)
    finally:
        store.close()
