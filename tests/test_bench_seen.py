"""bench.seen: one tiny run on the real Kafka and Redis (four `ccd serve` processes), so the
benchmark keeps working; its figures are not checked beyond being measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.seen import histories, main

pytestmark = pytest.mark.slow


def test_histories_hold_distinct_items_per_user() -> None:
    rows = histories(users=20, per_user=7, items=30)
    assert rows.shape == (20, 7)
    assert all(len(set(row.tolist())) == 7 for row in rows)


def test_a_tiny_run_measures_both_modes(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    argv = ["--users", "50", "--per-user", "5", "--items", "100", "--requests", "20"]
    assert (
        main([*argv, "--kafka", kafka_bootstrap, "--redis", redis_url, "--out", str(tmp_path)]) == 0
    )
    result = json.loads((tmp_path / "seen.json").read_text())
    assert set(result["rss_ready_mib"]) == {"memory-empty", "memory", "redis-empty", "redis"}
    assert result["params"]["pairs"] == 250
    assert result["http_ms"]["redis"]["p50"] > 0 and result["redis"]["used_bytes_per_user"] > 0
