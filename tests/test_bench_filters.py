"""bench.filters at tiny sizes: every condition is measured and the report renders it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import filters, report


def test_category_sets_are_disjoint_and_sized_by_their_fraction() -> None:
    sets = filters.category_sets(10_000)
    assert [len(indices) for indices in sets.values()] == [1000, 100, 10]
    union = np.concatenate(list(sets.values()))
    assert len(np.unique(union)) == len(union)


def test_filters_benchmark_runs_and_reports(tmp_path: Path) -> None:
    args = filters.build_parser().parse_args(
        ["--scale", "0.01", "--rounds", "20", "--out", str(tmp_path)]
    )
    result = filters.run(args)
    http, ranking = result["results"]["http"], result["results"]["ranking"]
    assert set(http) == set(filters.conditions())
    assert set(ranking) == {name for name in http if "route" not in name}
    assert all(row["requests"] == 20 for row in [*http.values(), *ranking.values()])
    assert len(result["targets"]) == 3
    assert all(target["met"] is None for target in result["targets"])  # scaled: no verdict
    text = report.section("filters", result)
    assert "0.1 % eligible" in text and "Ranking alone" in text
