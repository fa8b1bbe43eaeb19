"""RedisModelStore against the real redis-server `make test` starts (no mocks)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import redis

import contracts.model_store as model_store
from contracts.model_store import (
    CorruptModelError,
    ModelSnapshot,
    RedisModelStore,
    open_model_store,
)
from contracts.settings import Settings

pytestmark = pytest.mark.integration


def snapshot(fill: float, n_users: int = 3, dim: int = 8) -> ModelSnapshot:
    rng = np.random.default_rng(int(fill))
    return ModelSnapshot(
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=["a", "b"],
        user_embeddings=rng.standard_normal((n_users, dim)).astype(np.float32) + fill,
        item_embeddings=np.full((2, dim), fill, dtype=np.float32),
        item_popularity=np.array([5, 1], dtype=np.float32),
        meta={"block_index": int(fill)},
    )


@pytest.fixture
def store(redis_url: str, unique_name: str):
    store = RedisModelStore(redis_url, prefix=unique_name, keep_versions=3)
    yield store
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{unique_name}:*"))
    if keys:
        client.delete(*keys)
    client.close()
    store.close()


def test_publish_load_versions_and_pointer(store: RedisModelStore) -> None:
    assert store.current_version() is None and store.versions() == []
    with pytest.raises(KeyError):
        store.load()
    first, second = snapshot(1.0), snapshot(2.0)
    assert store.publish(first) == 1 and store.publish(second) == 2
    assert store.versions() == [1, 2] and store.current_version() == 2
    loaded = store.load()
    assert loaded.version == 2 and loaded.meta["block_index"] == 2 and "chunks" not in loaded.meta
    np.testing.assert_array_equal(loaded.user_embeddings, second.user_embeddings)
    np.testing.assert_array_equal(store.load(1).user_embeddings, first.user_embeddings)


def test_large_payloads_are_split_into_chunks(
    store: RedisModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_store, "REDIS_CHUNK_BYTES", 64 * 1024)
    big = snapshot(3.0, n_users=5_000, dim=16)  # ~320 KB of user embeddings
    version = store.publish(big)
    meta_key = f"{store.prefix}:model:{version}:meta"

    meta = json.loads(store._redis.get(meta_key))
    assert meta["chunks"] == -(-meta["size_bytes"] // (64 * 1024)) > 4
    chunk_sizes = [
        store._redis.strlen(f"{store.prefix}:model:{version}:chunk:{i}")
        for i in range(meta["chunks"])
    ]
    assert max(chunk_sizes) == 64 * 1024 and sum(chunk_sizes) == meta["size_bytes"]
    # Completed versions do not expire (chunks are written with a TTL until the flip).
    assert store._redis.ttl(f"{store.prefix}:model:{version}:chunk:0") == -1
    np.testing.assert_array_equal(store.load().user_embeddings, big.user_embeddings)


def test_prune_rollback_and_a_corrupt_chunk(store: RedisModelStore) -> None:
    for value in range(1, 6):
        store.publish(snapshot(float(value)))
    assert store.versions() == [3, 4, 5]
    assert store._redis.get(f"{store.prefix}:model:1:meta") is None
    assert store._redis.get(f"{store.prefix}:model:1:chunk:0") is None  # chunks deleted too
    store.set_current(3)
    assert store.current_version() == 3 and store.load().meta["block_index"] == 3
    with pytest.raises(KeyError):
        store.set_current(1)
    key = f"{store.prefix}:model:4:chunk:0"
    data = bytearray(store._redis.get(key))
    data[50] ^= 0xFF
    store._redis.set(key, bytes(data))
    with pytest.raises(CorruptModelError):
        store.load(4)
    store._redis.delete(key)
    with pytest.raises(CorruptModelError, match="missing"):
        store.load(4)


def test_wait_for_update_is_woken_by_publish_and_rollback(
    store: RedisModelStore, redis_url: str
) -> None:
    listener = RedisModelStore(redis_url, prefix=store.prefix)
    try:
        assert listener.wait_for_update(0.2) is False  # subscribes; nothing happened
        timer = threading.Timer(0.3, lambda: store.publish(snapshot(1.0)))
        started = time.monotonic()
        timer.start()
        assert listener.wait_for_update(10.0) is True
        assert time.monotonic() - started < 5.0
        assert listener.load().version == 1
        store.publish(snapshot(2.0))
        store.publish(snapshot(3.0))
        assert listener.wait_for_update(5.0) is True
        assert listener.wait_for_update(0.3) is False  # queued announcements were drained
        store.set_current(2)
        assert listener.wait_for_update(5.0) is True and listener.current_version() == 2
    finally:
        listener.close()


def test_a_publish_before_the_first_wait_is_not_missed(
    store: RedisModelStore, redis_url: str
) -> None:
    listener = RedisModelStore(redis_url, prefix=store.prefix)
    store.publish(snapshot(1.0))  # before the listener subscribed
    assert listener.wait_for_update(1.0) is True
    listener.close()


def test_open_model_store_uses_redis_when_configured(redis_url: str, unique_name: str) -> None:
    store = open_model_store(Settings(redis_url=redis_url, redis_prefix=unique_name))
    assert isinstance(store, RedisModelStore) and store.prefix == unique_name
    store.close()


def test_versions_never_go_back_when_redis_lost_its_data(
    store: RedisModelStore, redis_url: str, unique_name: str
) -> None:
    # A Redis restarted without persistence starts the version counter again at 0: 7 -> 1.
    for fill in (1.0, 2.0, 3.0):
        store.publish(snapshot(fill))
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{unique_name}:next_version")  # the counter lost, the versions kept
    assert store.publish(snapshot(4.0)) == 4
    client.delete(*client.keys(f"{unique_name}:*"))  # everything lost
    assert store.publish(snapshot(5.0), after=4) == 5  # the writer's last version rules
    assert store.publish(snapshot(6.0)) == 6 and store.versions() == [5, 6]
    client.close()
