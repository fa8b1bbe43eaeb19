"""Seen items in the server (``CCD_SEEN_STORE=memory``) vs in Redis (``redis``), side by side in
one run: resident memory of a `ccd serve` with N (user, item) pairs indexed, time to ready, the
per-request latency the Redis read adds, and Redis memory per user.

    python -m bench.seen --kafka HOST:PORT --redis redis://HOST:PORT/0     # ~4 minutes
    python -m bench.seen --users 1000 --per-user 10 --requests 200 ...      # smoke run

Set-up: ``--users`` users with ``--per-user`` distinct items each out of ``--items`` (N = users x
per-user pairs) and one model (every user and item, d=16). Four `ccd serve` processes: memory
mode with an empty log and replaying the N events from the embedded log; Redis mode with no sets
and with the N pairs written to Redis beforehand (as ``ccd indexer`` writes them, with
``RedisSeenIndex.add``; its rate is reported too). Memory is VmRSS from /proc once ready (1 s
after), and again after the requests. Latency:
GET /recommendations/{user}?k=20 (exclude_seen: the user's 100 items left out), one request at a
time on one keep-alive connection per server (http.client), the two servers' requests
interleaved so that the machine's load falls on both alike; plus the read alone in this process
(``items_of_many`` of 1 and of 100 users). Redis memory per user: ``used_memory`` before and
after the write, over users, and ``MEMORY USAGE`` of sampled keys. Needs a Kafka broker (the
Redis mode's settings require it: its tailer follows the log for attribution) and a Redis; exits
with a clear message without them. Writes ``docs/benchmarks/seen.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    child_env,
    exact_command,
    free_port,
    machine_info,
    percentiles,
    spawn,
    wait_http,
)
from contracts.event_log import SqliteEventLog
from contracts.model_store import FileModelStore, ModelSnapshot, RedisModelStore

DIM = 16
K = 20


def user_id(n: int) -> str:
    return f"user-{n}"


def item_id(n: int) -> str:
    return f"item-{n}"


def histories(users: int, per_user: int, items: int, seed: int = 0) -> np.ndarray:
    """(users, per_user) distinct item indices per row."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(items, per_user, replace=False) for _ in range(users)])


def snapshot(users: int, items: int, seed: int = 0) -> ModelSnapshot:
    rng = np.random.default_rng(seed)
    return ModelSnapshot(
        [user_id(n) for n in range(users)],
        [item_id(n) for n in range(items)],
        rng.standard_normal((users, DIM)).astype(np.float32),
        rng.standard_normal((items, DIM)).astype(np.float32),
        rng.permutation(items).astype(np.float32) + 1,
    )


def pairs_of(history: np.ndarray) -> list[tuple[str, str]]:
    return [(user_id(u), item_id(int(i))) for u, row in enumerate(history) for i in row]


def write_log(path: Path, pairs: list[tuple[str, str]]) -> None:
    log = SqliteEventLog(path)
    try:
        for first in range(0, len(pairs), 20_000):
            chunk = pairs[first : first + 20_000]
            values = [json.dumps({"user_id": u, "item_id": i}).encode() for u, i in chunk]
            log.append_raw(values, [u for u, _ in chunk])
    finally:
        log.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Server:
    """`ccd serve` with ``env``; ``ready_s``: start to /health/ready 200."""

    def __init__(self, name: str, env: dict[str, str], work: Path) -> None:
        self.name = name
        self.port = free_port()
        started = time.monotonic()
        self.child = spawn(
            name,
            [sys.executable, "-m", "ccd", "serve"],
            work / f"{name}.log",
            child_env(**env, CCD_PORT=str(self.port), CCD_LOG_LEVEL="WARNING"),
        )
        wait_http(f"http://127.0.0.1:{self.port}/health/ready", 900.0, self.child)
        self.ready_s = time.monotonic() - started
        metrics = http_get(self.port, "/metrics")[1].decode()
        loaded = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("ccd_model_loaded_timestamp_seconds")
        )
        self.model_to_ready_s = max(0.0, time.time() - loaded)
        time.sleep(1.0)  # settle (the allocator, the first requests' imports)
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.rss_ready_mib = self.rss_mib()

    def rss_mib(self) -> float:
        return rss_mib(self.child.process.pid)

    def request_ms(self, path: str) -> float:
        started = time.perf_counter()
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status == 200, body[:300]
        return elapsed

    def stop(self) -> None:
        self.connection.close()
        self.child.stop()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def fill_redis(index: Any, pairs: list[tuple[str, str]], raw: Any) -> dict[str, float]:
    before = int(raw.info("memory")["used_memory"])
    started = time.perf_counter()
    for first in range(0, len(pairs), 5000):  # the indexer's batch size
        index.add(pairs[first : first + 5000])
    seconds = time.perf_counter() - started
    after = int(raw.info("memory")["used_memory"])
    return {"write_s": seconds, "pairs_per_s": len(pairs) / seconds, "used_bytes": after - before}


def read_latency(index: Any, users: int, rounds: int, batch: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(rounds):
        chosen = [user_id(int(u)) for u in rng.integers(0, users, batch)]
        started = time.perf_counter()
        index.items_of_many(chosen)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples, (50, 99))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from contracts.redis_client import connect
    from service.seen import SeenItems
    from service.seen_store import RedisSeenIndex, seen_key

    prefix = f"bench-seen-{uuid.uuid4().hex[:8]}"
    history = histories(args.users, args.per_user, args.items)
    pairs = pairs_of(history)
    model = snapshot(args.users, args.items)
    raw = connect(args.redis, socket_timeout=30)  # one server: it reads INFO memory
    work = Path(tempfile.mkdtemp(prefix="bench-seen-"))
    servers: list[Server] = []
    try:
        empty_dir, memory_dir = work / "empty", work / "memory"
        for data_dir in (empty_dir, memory_dir):
            FileModelStore(data_dir / "models").publish(model)
        write_log(memory_dir / "events.sqlite", pairs)
        index = RedisSeenIndex(args.redis, prefix)
        written = fill_redis(index, pairs, raw)
        sample = [
            seen_key(prefix, user_id(n)) for n in range(0, args.users, max(1, args.users // 200))
        ]
        key_bytes = [int(raw.memory_usage(key) or 0) for key in sample]
        RedisModelStore(args.redis, prefix).publish(model)
        RedisModelStore(args.redis, f"{prefix}-empty").publish(model)  # no seen sets there

        def redis_env(key_prefix: str) -> dict[str, str]:
            return {
                "CCD_SEEN_STORE": "redis",
                "CCD_REDIS_URL": args.redis,
                "CCD_REDIS_PREFIX": key_prefix,
                "CCD_KAFKA_BOOTSTRAP_SERVERS": args.kafka,
                "CCD_KAFKA_TOPIC": prefix,
                "CCD_KAFKA_DEAD_LETTER_TOPIC": f"{prefix}.dead-letter",
                "CCD_DATA_DIR": str(work / key_prefix),
            }

        for name, env in [
            ("memory-empty", {"CCD_DATA_DIR": str(empty_dir)}),
            ("memory", {"CCD_DATA_DIR": str(memory_dir)}),
            ("redis-empty", redis_env(f"{prefix}-empty")),
            ("redis", redis_env(prefix)),
        ]:
            servers.append(Server(name, env, work))
        memory, in_redis = servers[1], servers[3]
        rng = np.random.default_rng(2)
        latency: dict[str, list[float]] = {"memory": [], "redis": []}
        for n in range(args.requests):
            path = f"/recommendations/{user_id(int(rng.integers(0, args.users)))}?k={K}"
            order = (memory, in_redis) if n % 2 == 0 else (in_redis, memory)
            for server in order:
                latency[server.name].append(server.request_ms(path))
        local = SeenItems()
        local.add(pairs)
        result = {
            "name": "seen",
            "command": exact_command(),
            "machine": machine_info(),
            "params": {
                "users": args.users,
                "per_user": args.per_user,
                "items": args.items,
                "pairs": len(pairs),
                "requests": args.requests,
                "k": K,
            },
            "rss_ready_mib": {s.name: round(s.rss_ready_mib, 1) for s in servers},
            "rss_after_requests_mib": {s.name: round(s.rss_mib(), 1) for s in servers},
            "ready_s": {s.name: round(s.ready_s, 2) for s in servers},
            "model_to_ready_s": {s.name: round(s.model_to_ready_s, 2) for s in servers},
            "http_ms": {name: percentiles(v, (50, 99)) for name, v in latency.items()},
            "read_ms": {
                "redis_1_user": read_latency(index, args.users, args.requests, 1),
                "redis_100_users": read_latency(index, args.users, args.requests // 4, 100),
                "memory_1_user": read_latency(local, args.users, args.requests, 1),
            },
            "redis": {
                "version": raw.info("server")["redis_version"],
                "write_pairs_per_s": round(written["pairs_per_s"]),
                "used_bytes_per_user": round(written["used_bytes"] / args.users),
                "used_bytes_per_pair": round(written["used_bytes"] / len(pairs), 1),
                "memory_usage_per_key_p50": int(np.median(key_bytes)),
                "encoding": str(raw.object("encoding", seen_key(prefix, user_id(0))), "ascii"),
            },
        }
        index.close()
        return result
    finally:
        for server in servers:
            server.stop()
        for key in raw.scan_iter(f"{prefix}*", count=10_000):  # and {prefix}-empty
            raw.delete(key)
        raw.close()


def render(result: dict[str, Any]) -> str:
    rss, ready, http_ms = result["rss_ready_mib"], result["model_to_ready_s"], result["http_ms"]
    after = result["rss_after_requests_mib"]
    reads, red = result["read_ms"], result["redis"]
    p = result["params"]

    def ms(entry: dict[str, float]) -> str:
        return f"{entry['p50']:.2f} / {entry['p99']:.2f} ms"

    rows = [
        (
            f"server RSS once ready, memory mode: no pairs / {p['pairs']:,} pairs",
            f"{rss['memory-empty']} / {rss['memory']} MiB",
        ),
        (
            f"server RSS once ready, Redis mode: no pairs / {p['pairs']:,} pairs",
            f"{rss['redis-empty']} / {rss['redis']} MiB",
        ),
        (
            f"server RSS after {p['requests']:,} requests: memory / Redis mode",
            f"{after['memory']} / {after['redis']} MiB",
        ),
        (
            "ready after start: memory (replay) / Redis",
            f"{result['ready_s']['memory']} s / {result['ready_s']['redis']} s",
        ),
        (
            "ready after loading the model: memory / Redis",
            f"{ready['memory']} s / {ready['redis']} s",
        ),
        ("GET /recommendations p50 / p99, memory", ms(http_ms["memory"])),
        ("GET /recommendations p50 / p99, Redis", ms(http_ms["redis"])),
        (
            "the read alone, 1 user: memory / Redis (p50)",
            f"{reads['memory_1_user']['p50']:.3f} / {reads['redis_1_user']['p50']:.3f} ms",
        ),
        ("the read alone, 100 users in one pipeline, p50 / p99", ms(reads["redis_100_users"])),
        (
            "Redis memory per user / per pair (used_memory)",
            f"{red['used_bytes_per_user']} B / {red['used_bytes_per_pair']} B",
        ),
        (
            "MEMORY USAGE of one user's set, p50",
            f"{red['memory_usage_per_key_p50']} B ({red['encoding']})",
        ),
        (
            "indexer-style write (SADD pipelines of 5000 pairs)",
            f"{red['write_pairs_per_s']:,} pairs/s",
        ),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=2000, help="per server")
    parser.add_argument("--kafka", default=os.environ.get("CCD_TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--redis", default=os.environ.get("CCD_TEST_REDIS_URL"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.kafka or not args.redis:
        print("bench seen: needs a Kafka broker and a Redis (--kafka, --redis)", file=sys.stderr)
        return 2
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seen.json").write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
