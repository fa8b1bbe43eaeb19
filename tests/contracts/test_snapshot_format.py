"""Snapshot encoding: a round trip keeps every value; a damaged blob or metadata is refused."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.model_store import CorruptModelError, ModelSnapshot, decode_snapshot, encode_snapshot


def make_snapshot(n_users: int = 3, n_items: int = 4, dim: int = 2, seed: int = 0) -> ModelSnapshot:
    rng = np.random.default_rng(seed)
    return ModelSnapshot(
        user_ids=[f"user-{i}" for i in range(n_users)],
        item_ids=[f"item-é{i}" for i in range(n_items)],  # non-ASCII ids survive
        user_embeddings=rng.standard_normal((n_users, dim)).astype(np.float32),
        item_embeddings=rng.standard_normal((n_items, dim)).astype(np.float32),
        item_popularity=np.arange(n_items, dtype=np.float32),
        meta={"version": 7, "block_index": 2},
    )


def test_round_trip_keeps_ids_arrays_and_meta() -> None:
    snapshot = make_snapshot()
    blob, meta = encode_snapshot(snapshot)
    assert meta["n_users"] == 3 and meta["n_items"] == 4 and meta["dim"] == 2
    assert meta["size_bytes"] == len(blob) and meta["block_index"] == 2
    back = decode_snapshot(blob, meta)
    assert back.user_ids == snapshot.user_ids and back.item_ids == snapshot.item_ids
    np.testing.assert_array_equal(back.user_embeddings, snapshot.user_embeddings)
    np.testing.assert_array_equal(back.item_embeddings, snapshot.item_embeddings)
    np.testing.assert_array_equal(back.item_popularity, [0, 1, 2, 3])
    assert back.version == 7


def test_a_flipped_byte_fails_the_checksum() -> None:
    blob, meta = encode_snapshot(make_snapshot())
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(CorruptModelError, match="checksum"):
        decode_snapshot(bytes(damaged), meta)


def test_a_truncated_blob_is_refused() -> None:
    blob, meta = encode_snapshot(make_snapshot())
    with pytest.raises(CorruptModelError):
        decode_snapshot(blob[:-10], meta)


def test_metadata_that_disagrees_with_the_arrays_is_refused() -> None:
    blob, meta = encode_snapshot(make_snapshot())
    with pytest.raises(CorruptModelError, match="dimension"):
        decode_snapshot(blob, {**meta, "dim": 3})


def test_inconsistent_snapshots_cannot_be_encoded() -> None:
    snapshot = make_snapshot()
    snapshot.user_ids = snapshot.user_ids[:-1]
    with pytest.raises(CorruptModelError):
        encode_snapshot(snapshot)
    nan = make_snapshot()
    nan.item_embeddings[0, 0] = np.nan
    with pytest.raises(CorruptModelError, match="NaN"):
        encode_snapshot(nan)
