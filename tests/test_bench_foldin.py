"""``ccd bench foldin`` end to end on a tiny synthetic stream (no ../shared data needed)."""

from __future__ import annotations

from pathlib import Path

from bench import foldin, report


def test_foldin_benchmark_measures_both_strategies_through_the_server(tmp_path: Path) -> None:
    args = foldin.build_parser().parse_args(
        ["--datasets", "synthetic:4000", "--learners", "als", "--out", str(tmp_path)]
    )
    result = foldin.run(args)
    entry = result["results"]["synthetic:4000/als"]
    assert set(entry["by_events"]) == set(foldin.REVEALED)
    for row in entry["by_events"].values():
        assert row["users"] > 0 and 0.0 <= row["popular"] <= 1.0 and 0.0 <= row["fold_in"] <= 1.0
    assert entry["validation_choice"] in entry["validation_grid_3_events"]
    assert "fold-in R@20" in report.section("foldin", result)
