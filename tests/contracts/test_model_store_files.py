"""The embedded file model store: versions, atomic pointer, rollback, pruning, notifications."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from contracts.model_store import CorruptModelError, FileModelStore, ModelSnapshot, open_model_store
from contracts.settings import Settings


def snapshot(fill: float, n_users: int = 2) -> ModelSnapshot:
    return ModelSnapshot(
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=["a", "b", "c"],
        user_embeddings=np.full((n_users, 4), fill, dtype=np.float32),
        item_embeddings=np.full((3, 4), fill, dtype=np.float32),
        item_popularity=np.array([3, 2, 1], dtype=np.float32),
        meta={"block_index": int(fill)},
    )


def test_publish_numbers_versions_and_moves_the_pointer(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path, keep_versions=5)
    assert store.current_version() is None and store.versions() == []
    with pytest.raises(KeyError):
        store.load()
    assert [store.publish(snapshot(v)) for v in (1.0, 2.0, 3.0)] == [1, 2, 3]
    assert store.versions() == [1, 2, 3] and store.current_version() == 3
    current = store.load()
    assert current.version == 3 and current.meta["block_index"] == 3
    assert float(current.user_embeddings[0, 0]) == 3.0
    assert float(store.load(1).item_embeddings[2, 3]) == 1.0
    assert (tmp_path / "CURRENT").read_text().strip() == "3"
    # No temporary files or staging directories are left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == [
        "CURRENT",
        "v00000001",
        "v00000002",
        "v00000003",
    ]


def test_rollback_points_at_an_older_version_and_new_versions_keep_counting(
    tmp_path: Path,
) -> None:
    store = FileModelStore(tmp_path, keep_versions=5)
    for value in (1.0, 2.0, 3.0):
        store.publish(snapshot(value))
    store.set_current(1)
    assert store.current_version() == 1 and store.load().version == 1
    with pytest.raises(KeyError):
        store.set_current(9)
    assert store.publish(snapshot(4.0)) == 4  # never reuses a number


def test_prune_keeps_the_newest_versions_and_the_current_one(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path, keep_versions=2)
    for value in range(1, 5):
        store.publish(snapshot(float(value)))
    assert store.versions() == [3, 4]
    with pytest.raises(KeyError):
        store.load(1)
    store.set_current(3)
    store.publish(snapshot(5.0))
    assert store.versions() == [4, 5]  # 3 was current before the publish, not after


def test_a_damaged_blob_is_refused(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path)
    store.publish(snapshot(1.0))
    blob_path = tmp_path / "v00000001" / "model.npz"
    data = bytearray(blob_path.read_bytes())
    data[100] ^= 0x01
    blob_path.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError):
        store.load()
    (tmp_path / "v00000001" / "meta.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="metadata"):
        store.load(1)


def test_meta_json_holds_the_checksum(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path)
    store.publish(snapshot(1.0))
    meta = json.loads((tmp_path / "v00000001" / "meta.json").read_text())
    assert len(meta["sha256"]) == 64 and meta["version"] == 1 and meta["n_items"] == 3


def test_wait_for_update_sees_a_publish_from_another_store_object(tmp_path: Path) -> None:
    writer, reader = FileModelStore(tmp_path), FileModelStore(tmp_path)
    assert reader.wait_for_update(0.2) is False
    timer = threading.Timer(0.3, lambda: writer.publish(snapshot(1.0)))
    started = time.monotonic()
    timer.start()
    assert reader.wait_for_update(5.0) is True
    assert time.monotonic() - started < 2.0
    assert reader.load().version == 1
    assert reader.wait_for_update(0.2) is False  # consumed
    writer.publish(snapshot(2.0))
    writer.set_current(1)
    assert reader.wait_for_update(0.5) is True  # a rollback is an update too


def test_open_model_store_uses_files_without_redis(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, keep_versions=3)
    store = open_model_store(settings)
    assert isinstance(store, FileModelStore) and store.keep_versions == 3
    store.publish(snapshot(1.0))
    assert (settings.model_store_dir / "CURRENT").exists()


def test_leftovers_of_a_crashed_publish_are_ignored_then_removed(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path)
    (tmp_path / ".staging-dead").mkdir()
    (tmp_path / ".staging-dead" / "model.npz").write_bytes(b"half")
    (tmp_path / ".CURRENT.abc.tmp").write_text("9")
    assert store.versions() == [] and store.current_version() is None
    assert store.publish(snapshot(1.0)) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == [
        "CURRENT",
        "v00000001",
    ]
