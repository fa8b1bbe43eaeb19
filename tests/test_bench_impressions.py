"""bench.impressions: its summary over rounds and its per-impression measurements, tiny."""

from __future__ import annotations

from bench.impressions import memory_per_impression, summarise


def test_summary_takes_the_median_over_rounds() -> None:
    runs = [
        {
            "round": n,
            "impressions": on,
            "connections": 1,
            "requests_per_s": 100.0 + n,
            "p50_ms": 1.0 + n,
            "p99_ms": 5.0 + n,
            "server_cpu_us_per_request": 900.0 + 10 * n,
        }
        for n in range(3)
        for on in (False, True)
    ]
    rows = summarise(runs)
    assert [(r["connections"], r["impressions"], r["rounds"]) for r in rows] == [
        (1, False, 3),
        (1, True, 3),
    ]
    assert (rows[0]["p50_ms"], rows[0]["p99_ms"], rows[0]["server_cpu_us_per_request"]) == (
        2.0,
        6.0,
        910.0,
    )


def test_per_impression_costs_are_measured() -> None:
    memory = memory_per_impression(count=300, k=5, n_items=50)
    assert memory["count"] == 300 and memory["k"] == 5
    assert 100 < memory["index_bytes_per_impression"] < 5000
    assert memory["sqlite_bytes_per_impression"] > 0
    assert memory["record_us_per_impression"] > 0 and memory["flush_us_per_impression"] > 0
