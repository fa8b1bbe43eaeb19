"""Impressions benchmark: what recording every answer costs on the hot path, and per impression.

    ccd bench impressions                                   # Gowalla-sized, 4 x 20 s runs
    python -m bench.impressions --scale 0.02 --duration 1 --rounds 1 --out /tmp/b   # smoke run

Latency: the real app under uvicorn (``python -m bench.server``, one process pinned to one core)
answers GET /recommendations/{user} (k=20, a random known user per request) with
``CCD_RECORD_IMPRESSIONS`` false and true, alternated ``--rounds`` times so that drift of the
shared machine hits both alike. The client is Python (``http.client``, keep-alive, one thread per
connection) pinned to the other core: it times each request from send to the end of the body.

Memory: ``--count`` impressions of ``k`` items added to the attribution index (tracemalloc;
item and user strings are the model's and the request's own, shared, as in the server), then
written to the embedded table (file bytes per row) and, given a Redis URL (``--redis-url`` or
``CCD_TEST_REDIS_URL``), to a stream (``MEMORY USAGE`` per entry).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import catalogue
from bench.common import (
    add_output_args,
    child_env,
    cpu_plan,
    free_port,
    markdown_table,
    new_result,
    percentiles,
    pinned,
    process_cpu_s,
    spawn,
    text_table,
    this_process_on,
    wait_http,
)
from bench.report import save_result
from bench.serving import READY_TIMEOUT_S, prepare_data_dir

NAME = "impressions"
TITLE = "Impressions: hot-path cost of recording every answer, bytes per impression"


def _client(port: int, users: list[str], k: int, stop_at: float, out: list[float]) -> None:
    """One keep-alive connection sending requests until ``stop_at``; latencies (ms) to ``out``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = random.Random(len(out))
    while time.perf_counter() < stop_at:
        user = users[rng.randrange(len(users))]
        started = time.perf_counter()
        connection.request("GET", f"/recommendations/{user}?k={k}")
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            out.append((time.perf_counter() - started) * 1000)
    connection.close()


def closed_loop(port: int, users: list[str], k: int, connections: int, seconds: float) -> list:
    """Latencies (ms) of ``connections`` clients sending back to back for ``seconds``."""
    stop_at = time.perf_counter() + seconds
    samples: list[list[float]] = [[] for _ in range(connections)]
    threads = [
        threading.Thread(target=_client, args=(port, users, k, stop_at, samples[n]))
        for n in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [value for part in samples for value in part]


def latency_run(
    data_dir: Path, users: list[str], record: bool, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One server with impressions on or off; one closed-loop run per connection count."""
    server_cores, client_cores = cpu_plan()
    port = free_port()
    command = [
        *(sys.executable, "-m", "bench.server", "--data-dir", str(data_dir), "--port", str(port)),
    ]
    env = child_env(CCD_RECORD_IMPRESSIONS=str(record).lower())
    child = spawn("server", pinned(command, server_cores), data_dir / "server.log", env)
    rows = []
    try:
        wait_http(
            f"http://127.0.0.1:{port}/health/ready",
            READY_TIMEOUT_S,
            child,
            ok=lambda body: body.get("status") == "ready",
        )
        with this_process_on(client_cores):
            closed_loop(port, users, args.k, 2, args.warmup)
            for connections in args.concurrency:
                cpu_before = process_cpu_s(child.process.pid)
                samples = closed_loop(port, users, args.k, connections, args.duration)
                cpu = process_cpu_s(child.process.pid) - cpu_before
                rows.append(_row(record, connections, samples, cpu, args.duration))
    finally:
        child.stop()
    return rows


def _row(record: bool, connections: int, samples: list[float], cpu_s: float, seconds: float):
    points = percentiles(samples, (50, 99))
    return {
        "impressions": record,
        "connections": connections,
        "requests": len(samples),
        "requests_per_s": round(len(samples) / seconds, 1),
        "p50_ms": round(points["p50"], 3) if samples else None,
        "p99_ms": round(points["p99"], 3) if samples else None,
        "server_cpu_us_per_request": round(cpu_s / len(samples) * 1e6, 1) if samples else None,
    }


def memory_per_impression(count: int, k: int, n_items: int) -> dict[str, Any]:
    """Bytes per impression in the attribution index, the embedded table and a Redis stream."""
    from service.attribution import Attribution
    from service.impressions import (
        Impression,
        RedisImpressionStore,
        SqliteImpressionStore,
        new_recommendation_id,
    )
    from service.metrics import ServiceMetrics

    item_ids = [catalogue.item_id(index) for index in range(n_items)]
    user_ids = [catalogue.user_id(index) for index in range(count // 4 + 1)]
    rng = random.Random(0)
    now = time.time()
    impressions = [
        Impression(
            new_recommendation_id(),
            user_ids[rng.randrange(len(user_ids))],
            tuple(rng.sample(item_ids, k)),
            7,
            "default",
            now,
        )
        for _ in range(count)
    ]  # built before tracing: the hot path makes them, the index keeps them
    index = Attribution(ServiceMetrics(), 3600.0, 3600.0, count)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    index.add(impressions)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    index_bytes = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # The impression objects and their tuples (alive either way) are what the index keeps.
    object_bytes = sum(_impression_bytes(impression) for impression in impressions[:1000]) / 1000
    out: dict[str, Any] = {
        "count": count,
        "k": k,
        "index_bytes_per_impression": round(index_bytes / count + object_bytes, 1),
    }
    with tempfile.TemporaryDirectory(prefix="ccd-bench-impressions-") as folder:
        path = Path(folder) / "impressions.sqlite"
        table = SqliteImpressionStore(path, count)
        for start in range(0, count, 1000):
            table.write(impressions[start : start + 1000])
        table.close()
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
        out["sqlite_bytes_per_impression"] = round(size / count, 1)
    out.update(_cpu_per_impression(count, impressions, Path(tempfile.gettempdir())))
    redis_url = os.environ.get("CCD_TEST_REDIS_URL")
    if redis_url:
        from contracts.redis_client import connect

        prefix = f"bench-impressions-{os.getpid()}"
        stream = RedisImpressionStore(redis_url, prefix, count)
        client = connect(redis_url, socket_timeout=30)
        try:
            for start in range(0, count, 1000):
                stream.write(impressions[start : start + 1000])
            usage = client.memory_usage(stream.key, samples=0)
            out["redis_bytes_per_impression"] = round(usage / client.xlen(stream.key), 1)
        finally:
            client.delete(stream.key)
            client.close()
            stream.close()
    return out


def _cpu_per_impression(count: int, shown: list[Any], folder: Path) -> dict[str, float]:
    """CPU µs per impression (``time.process_time``: less disturbed by other processes than
    wall time): ``record`` (the request's share) and ``flush`` (the background thread's:
    attribution index and embedded table), in this process, one thread."""
    from service.attribution import Attribution
    from service.impressions import ImpressionRecorder, SqliteImpressionStore
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    index = Attribution(metrics, 3600.0, 3600.0, count)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        store = SqliteImpressionStore(Path(work) / "impressions.sqlite", count)
        recorder = ImpressionRecorder(store, metrics, count, on_batch=index.add)
        items = [list(impression.items) for impression in shown]  # what the route passes
        started = time.process_time()
        for impression, shown_items in zip(shown, items, strict=True):
            recorder.record(impression.user_id, shown_items, 7)
        recorded = time.process_time()
        while recorder.flush(max_batch=200):  # ~0.2 s worth at 1,000 requests/s
            pass
        flushed = time.process_time()
        store.close()
    return {
        "record_us_per_impression": round((recorded - started) / count * 1e6, 2),
        "flush_us_per_impression": round((flushed - recorded) / count * 1e6, 2),
    }


def _impression_bytes(impression: Any) -> int:
    """The object, its items tuple and its id string (items and user are shared strings)."""
    return (
        sys.getsizeof(impression)
        + sys.getsizeof(impression.items)
        + sys.getsizeof(impression.recommendation_id)
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = new_result(NAME, TITLE, _params(args))
    cat = catalogue.CATALOGUES["gowalla"].scaled(args.scale)
    users = [catalogue.user_id(index) for index in range(cat.users)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ccd-bench-impressions-") as folder:
        data_dir = prepare_data_dir(Path(folder), cat, teacher=False)
        for round_ in range(args.rounds):
            for record in (False, True):
                for row in latency_run(data_dir, users, record, args):
                    runs.append({"round": round_, **row})
                    print(f"round {round_} impressions={record}: {row}", flush=True)
    from contracts.settings import Settings

    cap = Settings.model_fields["impressions_max"].default
    memory = memory_per_impression(args.count, args.k, cat.items)
    memory["cap"] = cap
    memory["index_mib_at_cap"] = round(memory["index_bytes_per_impression"] * cap / 2**20, 1)
    result["results"] = {
        "sizes": {"users": cat.users, "items": cat.items, "dim": cat.student_dim},
        "latency": runs,
        "summary": summarise(runs),
        "memory": memory,
    }
    result["notes"] += [
        "Hot path with impressions: one 12-character id from 9 random bytes, one Impression "
        "object and a deque append; a background thread writes batches every 0.2 s (here to "
        "the embedded SQLite table) and indexes them for attribution.",
        "Latency is timed by a Python client (keep-alive http.client) on the other core, so "
        "it includes the client's own overhead; the with/without difference is the figure.",
        f"The cap (CCD_IMPRESSIONS_MAX, default {cap:,}) bounds the buffer, the index, the "
        "embedded table and the Redis stream alike.",
    ]
    if args.scale != 1.0:
        result["notes"].append(f"Scaled catalogue (x{args.scale}): not Gowalla's full size.")
    return result


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (connections, impressions): the median over rounds of p50, p99 and CPU."""
    import statistics

    out = []
    for connections in sorted({r["connections"] for r in runs}):
        for record in (False, True):
            same = [
                r for r in runs if r["connections"] == connections and r["impressions"] == record
            ]
            same = [r for r in same if r["p50_ms"] is not None]
            if not same:
                continue
            out.append(
                {
                    "connections": connections,
                    "impressions": record,
                    "rounds": len(same),
                    "requests_per_s": statistics.median(r["requests_per_s"] for r in same),
                    "p50_ms": statistics.median(r["p50_ms"] for r in same),
                    "p99_ms": statistics.median(r["p99_ms"] for r in same),
                    "server_cpu_us_per_request": statistics.median(
                        r["server_cpu_us_per_request"] for r in same
                    ),
                }
            )
    return out


def _params(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("scale", "duration", "warmup", "rounds", "concurrency", "k", "count")
    return {key: getattr(args, key) for key in keys}


HEADERS = ["conns", "impressions", "rounds", "requests/s", "p50 ms", "p99 ms", "server CPU µs/req"]
MEMORY_HEADERS = ["where", "bytes per impression", "cap", "at the cap"]


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            r["connections"],
            "on" if r["impressions"] else "off",
            r["rounds"],
            r["requests_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["server_cpu_us_per_request"],
        ]
        for r in result["results"]["summary"]
    ]


def memory_rows(result: dict[str, Any]) -> list[list[Any]]:
    memory = result["results"]["memory"]
    cap = memory["cap"]
    rows = []
    for key, where in (
        ("index_bytes_per_impression", "server memory (attribution index)"),
        ("sqlite_bytes_per_impression", "embedded table (file)"),
        ("redis_bytes_per_impression", "Redis stream (MEMORY USAGE)"),
    ):
        if key in memory:
            at_cap = f"{memory[key] * cap / 2**20:.1f} MiB"
            rows.append([where, memory[key], f"{cap:,}", at_cap])
    return rows


def render(result: dict[str, Any]) -> str:
    sizes = result["results"]["sizes"]
    memory = result["results"]["memory"]
    return "\n".join(
        [
            f"{sizes['users']:,} users, {sizes['items']:,} items, d={sizes['dim']}; medians "
            "over the rounds, impressions off and on alternated:\n",
            markdown_table(HEADERS, table_rows(result)),
            f"\nPer impression ({memory['count']:,} impressions of k={memory['k']} items):\n",
            markdown_table(MEMORY_HEADERS, memory_rows(result)),
            f"\nCPU per impression (one thread, {memory['count']:,} impressions): "
            f"{memory['record_us_per_impression']} µs on the request path (`record`), "
            f"{memory['flush_us_per_impression']} µs in the background thread (`flush`: "
            "attribution index and embedded table).",
            "",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench impressions", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="of the Gowalla catalogue")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="off/on alternations")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--count", type=int, default=50_000, help="impressions for memory")
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print("\n" + text_table(HEADERS, table_rows(result)))
    print(text_table(MEMORY_HEADERS, memory_rows(result)))
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
