"""Recommendation ids in every answer, and the bounded impression stores (embedded table,
Redis stream on the real redis-server)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.impressions import (
    Impression,
    ImpressionRecorder,
    RedisImpressionStore,
    SqliteImpressionStore,
)
from service.metrics import ServiceMetrics
from tests.service.conftest import wait_until


def _impression(n: int, user: str | None = "u0") -> Impression:
    return Impression(f"r{n}", user, ("i0", f"i{n}"), 1, "default", 1000.0 + n)


def test_every_answer_carries_a_fresh_recommendation_id(ready_client: TestClient) -> None:
    one = ready_client.get("/recommendations/u0", params={"k": 2}).json()
    again = ready_client.get("/recommendations/u0", params={"k": 2}).json()
    batch = ready_client.post("/recommendations", json={"user_ids": ["u0", "u1"], "k": 2}).json()
    similar = ready_client.get("/items/i0/similar", params={"k": 2}).json()
    ids = [one["recommendation_id"], again["recommendation_id"], similar["recommendation_id"]]
    ids += [result["recommendation_id"] for result in batch["results"]]
    assert all(len(rid) == 12 for rid in ids)
    assert len(set(ids)) == len(ids)


def test_answers_are_recorded_in_the_embedded_store(ready_client: TestClient) -> None:
    body = ready_client.get("/recommendations/u1", params={"k": 3}).json()
    state = ready_client.app.state.service  # type: ignore[attr-defined]
    wait_until(lambda: len(state.impressions.store.recent(10)) == 1)
    (kept,) = state.impressions.store.recent(10)
    assert kept.recommendation_id == body["recommendation_id"]
    assert (kept.user_id, kept.version, kept.arm) == ("u1", 1, "default")
    assert list(kept.items) == [item["item_id"] for item in body["items"]]
    assert abs(kept.at - time.time()) < 10


def test_embedded_store_keeps_the_newest_rows_only(tmp_path: Path) -> None:
    store = SqliteImpressionStore(tmp_path / "impressions.sqlite", max_len=5)
    store.write([_impression(n) for n in range(8)])
    store.write([_impression(n) for n in range(8, 12)])
    assert [kept.recommendation_id for kept in store.recent(100)] == [
        f"r{n}" for n in range(11, 6, -1)
    ]
    store.close()


def test_redis_stream_is_capped(redis_url: str, unique_name: str) -> None:
    store = RedisImpressionStore(redis_url, unique_name, max_len=200)
    client = redis.Redis.from_url(redis_url)
    try:
        for start in range(0, 1000, 100):
            store.write([_impression(n) for n in range(start, start + 100)])
        # MAXLEN ~ trims whole macro nodes (100 entries by default): 200..300 are kept.
        assert 200 <= client.xlen(store.key) < 300
        newest = store.recent(2)
        assert [kept.recommendation_id for kept in newest] == ["r999", "r998"]
        assert newest[0].items == ("i0", "i999")
    finally:
        client.delete(store.key)
        client.close()
        store.close()


def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    metrics = ServiceMetrics()
    store = SqliteImpressionStore(tmp_path / "impressions.sqlite", max_len=100)
    batches: list[list[Impression]] = []
    recorder = ImpressionRecorder(store, metrics, max_buffered=3, on_batch=batches.append)
    ids = [recorder.record("u0", ["i1", "i2"], 4) for _ in range(5)]  # thread not started
    assert len(set(ids)) == 5
    assert metrics.registry.get_sample_value("ccd_impressions_dropped_total") == 2
    assert recorder.flush() == 3
    assert [i.recommendation_id for i in batches[0]] == ids[:3]
    assert metrics.registry.get_sample_value("ccd_impressions_total") == 3
    store.close()


def test_disabled_recorder_still_answers_ids(tmp_path: Path) -> None:
    recorder = ImpressionRecorder(None, ServiceMetrics(), max_buffered=3)
    assert len(recorder.record("u0", ["i1"], 1)) == 12
    assert recorder.flush() == 0


class _DownStore:
    """An impression store whose writes fail until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.kept: list[Impression] = []

    def write(self, batch: list[Impression]) -> None:
        if not self.up:
            raise ConnectionError("store down")
        self.kept.extend(batch)

    def recent(self, count: int) -> list[Impression]:
        return self.kept[-count:][::-1]

    def close(self) -> None:
        pass


def test_a_store_outage_is_counted_and_logged_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, store = ServiceMetrics(), _DownStore()
    indexed: list[Impression] = []
    recorder = ImpressionRecorder(store, metrics, max_buffered=100, on_batch=indexed.extend)
    with caplog.at_level(logging.WARNING, logger="service.impressions"):
        for _ in range(5):
            recorder.record("u0", ["i1"], 1)
            recorder.flush()
        store.up = True
        recorder.record("u0", ["i1"], 1)
        recorder.flush()
    assert metrics.registry.get_sample_value("ccd_impressions_store_failures_total") == 5
    assert len(indexed) == 6 and len(store.kept) == 1  # attribution saw every one
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and "unreachable" in lines[0] and "reachable again" in lines[1]
