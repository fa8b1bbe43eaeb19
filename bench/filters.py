"""Filtered recommendations: latency with 10 %, 1 % and 0.1 % of a Gowalla-sized catalogue
eligible, beside unfiltered requests, in one run.

    ccd bench filters                                              # full run (a few minutes)
    python -m bench.filters --scale 0.02 --requests 100 --out /tmp/b   # smoke run

The catalogue (``bench.catalogue``: 40,988 items, student d=16, random embeddings; every user's
history in the event log, excluded from every answer as in production) gets three categories on
disjoint random item sets of 10 %, 1 % and 0.1 % of the items, written to the embedded catalogue
store before the server starts. Each round sends one request of every condition for one random
user, so the machine's noise falls on all conditions alike:

- ``unfiltered``: ``GET /recommendations/{user}?k=20``, answered by the fast lane
  (``service.routers.recommendations.OneUserFastLane``);
- ``categories=<10 % | 1 % | 0.1 %>``: the filtered requests, also answered by the fast lane;
- ``unfiltered, route`` and ``1 % eligible, route``: the same requests with a parameter
  spelled so that the fast lane leaves them to the FastAPI route (``exclude_seen=yes``,
  ``diversity=0e0``): what the lane saves.

``http``: the real app (``bench.server`` under uvicorn, pinned to one core, one BLAS thread),
one keep-alive connection from this process pinned to the other core; the latency of each
request, sent one at a time. ``ranking``: the same requests ranked in this process (rank options
from the catalogue masks, then ``ServingModel.recommend_many``), without HTTP.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import catalogue
from bench.common import (
    Target,
    add_output_args,
    add_target,
    child_env,
    cpu_plan,
    free_port,
    markdown_table,
    new_result,
    percentiles,
    pinned,
    ratio,
    spawn,
    text_table,
    this_process_on,
    wait_http,
)
from bench.report import save_result
from contracts.catalogue import CatalogueEntry, ItemMetadata, SqliteCatalogue
from service.catalogue import ItemFilter, ItemMasks
from service.ranking import ServingModel

NAME = "filters"
TITLE = "Filtered recommendations: 10 %, 1 %, 0.1 % of the catalogue eligible vs unfiltered"
READY_TIMEOUT_S = 600.0
FRACTIONS = (0.1, 0.01, 0.001)
UNFILTERED, ROUTE = "unfiltered", "unfiltered, route"
FILTERED_ROUTE = "1 % eligible, route"


def category_of(fraction: float) -> str:
    """The category name holding ``fraction`` of the items, e.g. ``eligible-1%``."""
    return f"eligible-{fraction * 100:g}%"


def conditions() -> dict[str, str]:
    """Condition name -> the query string it adds to ``?k=...``. ``exclude_seen=yes`` and
    ``diversity=0e0`` mean what the defaults mean, but the fast lane leaves them to the route."""
    found = {UNFILTERED: "", ROUTE: "&exclude_seen=yes"}
    for fraction in FRACTIONS:
        found[f"{fraction * 100:g} % eligible"] = f"&categories={category_of(fraction)}"
    found[FILTERED_ROUTE] = f"&categories={category_of(0.01)}&diversity=0e0"
    return found


def category_sets(n_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint random item index sets, one per fraction (at least one item each)."""
    order = np.random.default_rng(seed + 7).permutation(n_items)
    sets, start = {}, 0
    for fraction in FRACTIONS:
        size = max(1, round(n_items * fraction))
        sets[category_of(fraction)] = np.sort(order[start : start + size])
        start += size
    return sets


def write_catalogue(path: Path, sets: dict[str, np.ndarray]) -> int:
    store = SqliteCatalogue(path)
    try:
        items = {
            catalogue.item_id(int(index)): ItemMetadata(categories=[category])
            for category, indices in sets.items()
            for index in indices
        }
        return store.put(items)
    finally:
        store.close()


def prepare(work: Path, cat: catalogue.Catalogue) -> tuple[Path, Any, dict[str, np.ndarray]]:
    """A data dir with the histories, one student version and the catalogue."""
    from bench.serving import prepare_data_dir

    data_dir = prepare_data_dir(work, cat, teacher=False)
    sets = category_sets(cat.items)
    write_catalogue(data_dir / "catalogue.sqlite", sets)
    return data_dir, catalogue.student_snapshot(cat), sets


def http_latencies(
    base_port: int, cat: catalogue.Catalogue, rounds: int, k: int, seed: int
) -> dict[str, list[float]]:
    """Milliseconds per request of each condition, rounds interleaved."""
    queries = conditions()
    samples: dict[str, list[float]] = {name: [] for name in queries}
    rng = np.random.default_rng(seed)
    connection = http.client.HTTPConnection("127.0.0.1", base_port, timeout=30)
    try:
        for _ in range(rounds):
            user = catalogue.user_id(int(rng.integers(cat.users)))
            for name, query in queries.items():
                started = time.perf_counter()
                connection.request("GET", f"/recommendations/{user}?k={k}{query}")
                response = connection.getresponse()
                body = response.read()
                samples[name].append((time.perf_counter() - started) * 1e3)
                if response.status != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status} {body[:200]!r}")
    finally:
        connection.close()
    return samples


def ranking_latencies(
    snapshot: Any, cat: catalogue.Catalogue, sets: dict[str, np.ndarray], rounds: int, k: int
) -> dict[str, list[float]]:
    """Milliseconds per ranking call of each condition, in this process (no HTTP)."""
    from service.ranking import limit_blas_threads

    limit_blas_threads(1)
    model = ServingModel.from_snapshot(snapshot)
    entries = {
        catalogue.item_id(int(index)): CatalogueEntry(categories=(category,))
        for category, indices in sets.items()
        for index in indices
    }
    masks = ItemMasks.build(model, entries, 1, frozenset(sets), frozenset())
    users, items = catalogue.histories(cat)
    starts = np.searchsorted(users, np.arange(cat.users + 1))
    filters: dict[str, ItemFilter | None] = {UNFILTERED: None}
    for fraction in FRACTIONS:
        filters[f"{fraction * 100:g} % eligible"] = ItemFilter(categories=(category_of(fraction),))
    samples: dict[str, list[float]] = {name: [] for name in filters}
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        row = int(rng.integers(cat.users))
        seen = [catalogue.item_id(int(i)) for i in items[starts[row] : starts[row + 1]]]
        for name, item_filter in filters.items():
            started = time.perf_counter()
            if item_filter is None:
                model.recommend_many([catalogue.user_id(row)], k, [seen])
            else:
                masks.check(item_filter)
                options = masks.options(item_filter, 604_800.0)
                model.recommend_many([catalogue.user_id(row)], k, [seen], options)
            samples[name].append((time.perf_counter() - started) * 1e3)
    return samples


def summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    base = percentiles(samples[UNFILTERED], (50, 99))
    rows = {}
    for name, values in samples.items():
        points = percentiles(values, (50, 99))
        rows[name] = {
            "requests": len(values),
            "latency_ms": points,
            "p50_vs_unfiltered": ratio(points["p50"], base["p50"]),
            "p99_vs_unfiltered": ratio(points["p99"], base["p99"]),
        }
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = new_result(NAME, TITLE, {key: getattr(args, key) for key in ("scale", "rounds", "k")})
    server_cores, client_cores = cpu_plan()
    result["params"]["server_cores"], result["params"]["client_cores"] = server_cores, client_cores
    cat = catalogue.CATALOGUES["gowalla"].scaled(args.scale)
    with tempfile.TemporaryDirectory(prefix="ccd-bench-filters-") as folder:
        data_dir, snapshot, sets = prepare(Path(folder), cat)
        eligible = {name: int(indices.size) for name, indices in sets.items()}
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "bench.server",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ]
        child = spawn("server", pinned(command, server_cores), data_dir / "server.log", child_env())
        try:
            wait_http(
                f"http://127.0.0.1:{port}/health/ready",
                READY_TIMEOUT_S,
                child,
                ok=lambda body: body.get("status") == "ready",
            )
            with this_process_on(client_cores):
                http_latencies(port, cat, max(1, args.rounds // 10), args.k, seed=99)  # warm-up
                http = http_latencies(port, cat, args.rounds, args.k, seed=0)
        finally:
            child.stop()
        with this_process_on(client_cores):
            ranking = ranking_latencies(snapshot, cat, sets, args.rounds, args.k)
    result["results"] = {
        "sizes": {"users": cat.users, "items": cat.items, "student_dim": cat.student_dim},
        "eligible_items": eligible,
        "http": summary(http),
        "ranking": summary(ranking),
    }
    _targets(result, args)
    result["notes"] += [
        "Filtered requests are answered by the fast lane (ranked alone, not batched with "
        "others); the '..., route' rows are the same requests through FastAPI's routing and "
        "validation, for comparison.",
        "Eligible items are gathered first (np.flatnonzero of the combined mask), then ranked: "
        "scoring is over the whole catalogue (one GEMV), the top-k over the eligible ones only.",
        "Latency: one request at a time on one keep-alive connection (http.client), so no "
        "queueing; the client's own time (~0.1 ms) is in every figure alike.",
    ]
    if args.scale != 1.0:
        result["notes"].append(f"Scaled catalogue (x{args.scale}): not the issue's sizes.")
    return result


def _targets(result: dict[str, Any], args: argparse.Namespace) -> None:
    full = args.scale == 1.0
    rows = result["results"]["http"]
    for fraction in FRACTIONS:
        name = f"{fraction * 100:g} % eligible"
        value = rows[name]["p50_vs_unfiltered"]
        add_target(
            result,
            Target(
                f"filtered p50 / unfiltered p50, {name} (Gowalla, HTTP)",
                "<= 2x",
                value,
                "x",
                (value is not None and value <= 2.0) if full else None,
                f"p50 {rows[name]['latency_ms']['p50']:.3f} vs "
                f"{rows[UNFILTERED]['latency_ms']['p50']:.3f} ms"
                + ("" if full else f" (scaled x{args.scale})"),
            ),
        )


HEADERS = ["condition", "requests", "p50 ms", "p99 ms", "p50 / unfiltered", "p99 / unfiltered"]


def table_rows(rows: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            name,
            row["requests"],
            row["latency_ms"]["p50"],
            row["latency_ms"]["p99"],
            row["p50_vs_unfiltered"],
            row["p99_vs_unfiltered"],
        ]
        for name, row in rows.items()
    ]


def render(result: dict[str, Any]) -> str:
    results = result["results"]
    sizes = results["sizes"]
    eligible = ", ".join(
        f"{name} {count:,} items" for name, count in results["eligible_items"].items()
    )
    parts = [
        f"{sizes['users']:,} users, {sizes['items']:,} items, student d={sizes['student_dim']}; "
        f"categories: {eligible}.\n",
        "HTTP (the real app, one connection, one request at a time):\n",
        markdown_table(HEADERS, table_rows(results["http"])),
        "\nRanking alone (in process, no HTTP):\n",
        markdown_table(HEADERS, table_rows(results["ranking"])),
    ]
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench filters", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="catalogue size factor")
    parser.add_argument("--rounds", type=int, default=3000, help="requests per condition")
    parser.add_argument("--k", type=int, default=20)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    for part in ("http", "ranking"):
        print(f"\n{part}:")
        print(text_table(HEADERS, table_rows(result["results"][part])))
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
