"""Freshness benchmark: how soon an event shows in recommendations, and a new version in service.

    ccd bench freshness                       # about 3 minutes
    python -m bench.freshness --seconds 5 --base-events 600 --block-size 100 \
        --learner bpr --scale 0.02 --publishes 2 --out /tmp/b                # smoke

Embedded mode (SQLite event log, file model store), everything real: the server (``bench.server``,
pinned to one core), a second server replica on the same data dir, and ``ccd train`` as a child
process. After the trainer has published the first version from a base history, this process
POSTs single events to the first server at ``--rate`` events/s for ``--seconds`` and measures:

1. excluded as seen: for probe events, (user, item) where the item is in the user's current
   top-k, the time from the POST's answer until the item is gone from the user's
   recommendations, on the server that took the POST and on the replica (which learns of the
   event only through its seen-items tailer reading the log);
2. reflected in a version: for every event, the time from its POST until the server first
   serves a model version whose block holds it (block size ``--block-size``);
3. publish to served: this process publishes ``--publishes`` versions of a Gowalla-sized student
   into a separate store and times each from the end of ``publish()`` until GET /model shows it
   (the server polls the file store's pointer; Redis would notify by pub/sub).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import catalogue
from bench.common import (
    Child,
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
    spawn,
    wait_http,
)
from bench.report import print_and_save

NAME = "freshness"
TITLE = "Freshness: event to recommendation, publish to served"
POINTS = (50, 90, 95, 99, 100)
POLL_S = 0.005
VERSION_POLL_S = 0.02
JSON = {"content-type": "application/json"}  # POST /events refuses other bodies (415)


def start_server(data_dir: Path, name: str, cores: list[int] | None) -> tuple[Child, str]:
    port = free_port()
    command = [sys.executable, "-m", "bench.server", "--data-dir", str(data_dir)]
    command += ["--port", str(port)]
    if cores is not None:
        command = pinned(command, cores)
    child = spawn(name, command, data_dir.parent / f"{name}.log", child_env())
    return child, f"http://127.0.0.1:{port}"


def start_trainer(data_dir: Path, args: argparse.Namespace) -> Child:
    command = [sys.executable, "-m", "ccd", "train", "--data-dir", str(data_dir)]
    command += ["--learner", args.learner, "--block-size", str(args.block_size)]
    command += ["--base-block-size", str(args.base_events), "--block-interval", "3600"]
    env = child_env(CCD_LOG_LEVEL="WARNING", CCD_TORCH_THREADS="1", CCD_SEED=str(args.seed))
    return spawn("trainer", command, data_dir.parent / "trainer.log", env)


def write_base_history(data_dir: Path, args: argparse.Namespace) -> tuple[int, int]:
    """The base block's events (synthetic, dated a day ago); returns (users, items) known."""
    from contracts.event_log import SqliteEventLog
    from trainer.synthetic import SyntheticStream

    stream = SyntheticStream(
        n_users=args.users,
        n_items=args.items,
        seed=args.seed,
        n_events=args.base_events,
        start_time=time.time() - 86_400,
    )
    log = SqliteEventLog(data_dir / "events.sqlite")
    try:
        events = list(stream)
        log.append(events)
    finally:
        log.close()
    return args.users, args.items


class VersionWatcher(threading.Thread):
    """Polls GET /model; records when each version was first served and its metadata."""

    def __init__(self, base_url: str) -> None:
        super().__init__(name="version-watcher", daemon=True)
        self.base_url = base_url
        self.seen: dict[int, dict[str, Any]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while not self.stop.wait(VERSION_POLL_S):
                try:
                    response = client.get("/model")
                except httpx.HTTPError:
                    continue
                if response.status_code != 200:
                    continue
                body = response.json()
                version = int(body["version"])
                if version not in self.seen:
                    meta = body.get("meta", {})
                    self.seen[version] = {
                        "served_at": time.time(),
                        "last_timestamp": (meta.get("data_range") or {}).get("last_timestamp"),
                        "trained_at": meta.get("trained_at"),
                        "events": meta.get("events"),
                    }

    def first_version_with(self, timestamp: float) -> float | None:
        """When the first version holding an event of ``timestamp`` was served (None: never)."""
        times = [
            v["served_at"]
            for v in self.seen.values()
            if v["last_timestamp"] is not None and v["last_timestamp"] >= timestamp
        ]
        return min(times) if times else None


def recommended(client: httpx.Client, user: str, k: int) -> list[str]:
    response = client.get(f"/recommendations/{user}", params={"k": k})
    response.raise_for_status()
    return [entry["item_id"] for entry in response.json()["items"]]


def wait_excluded(client: httpx.Client, user: str, item: str, k: int, timeout_s: float) -> float:
    """Seconds until ``item`` is gone from ``user``'s top-k (inf on timeout)."""
    started = time.time()
    while time.time() - started < timeout_s:
        if item not in recommended(client, user, k):
            return time.time() - started
        time.sleep(POLL_S)
    return float("inf")


def post_stream(
    primary: str, replica: str, watcher: VersionWatcher, n_users: int, n_items: int, args
) -> dict[str, Any]:
    """POST events at ``args.rate``; every ``args.probe_every``-th one is a probe."""
    rng = random.Random(args.seed)
    posted: list[tuple[float, float]] = []  # (timestamp, answered at)
    post_latency, primary_excl, replica_excl = [], [], []
    with (
        httpx.Client(base_url=primary, timeout=10.0) as a,
        httpx.Client(base_url=replica, timeout=10.0) as b,
    ):
        started = time.time()
        count = 0
        while time.time() - started < args.seconds:
            user = f"u{rng.randrange(n_users)}"
            probe = count % args.probe_every == 0
            item = recommended(a, user, args.k)[0] if probe else f"i{rng.randrange(n_items)}"
            timestamp = time.time()
            body = {"user_id": user, "item_id": item, "timestamp": timestamp}
            body["event_id"] = f"fresh-{args.seed}-{count}"
            response = a.post("/events", content=orjson.dumps(body), headers=JSON)
            response.raise_for_status()
            answered = time.time()
            posted.append((timestamp, answered))
            post_latency.append(answered - timestamp)
            if probe:
                primary_excl.append(wait_excluded(a, user, item, args.k, 5.0))
                replica_excl.append(wait_excluded(b, user, item, args.k, 10.0))
            count += 1
            time.sleep(max(0.0, started + count / args.rate - time.time()))
        # Not measured: one block's worth of events more, so the last measured ones get trained.
        filler = [
            {"user_id": f"u{rng.randrange(n_users)}", "item_id": f"i{rng.randrange(n_items)}"}
            for _ in range(args.block_size)
        ]
        a.post("/events", content=orjson.dumps(filler), headers=JSON).raise_for_status()
    return {
        "posted": posted,
        "post_latency": post_latency,
        "primary_exclusion": primary_excl,
        "replica_exclusion": replica_excl,
    }


def model_freshness(watcher: VersionWatcher, posted: list[tuple[float, float]], wait_s: float):
    """Per event: served time of the first version holding it, minus its POST time."""
    deadline = time.time() + wait_s
    last_timestamp = posted[-1][0] if posted else 0.0
    while time.time() < deadline and watcher.first_version_with(last_timestamp) is None:
        time.sleep(0.2)
    delays, missing = [], 0
    for timestamp, _ in posted:
        served = watcher.first_version_with(timestamp)
        if served is None:
            missing += 1
        else:
            delays.append(served - timestamp)
    return delays, missing


def measure_event_freshness(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    server_cores, _ = cpu_plan()
    data_dir = work / "stream"
    data_dir.mkdir()
    n_users, n_items = write_base_history(data_dir, args)
    trainer = start_trainer(data_dir, args)
    primary, primary_url = start_server(data_dir, "primary", server_cores)
    replica, replica_url = start_server(data_dir, "replica", None)
    try:
        for child, url in ((primary, primary_url), (replica, replica_url)):
            wait_http(
                f"{url}/health/ready",
                args.ready_timeout,
                child,
                ok=lambda body: body.get("status") == "ready",
            )
        print("servers ready (first version published)", flush=True)
        watcher = VersionWatcher(primary_url)
        watcher.start()
        stream = post_stream(primary_url, replica_url, watcher, n_users, n_items, args)
        delays, missing = model_freshness(watcher, stream["posted"], args.settle_timeout)
        watcher.stop.set()
        if trainer.process.poll() is not None:
            raise RuntimeError(f"the trainer died:\n{trainer.log_tail()}")
    finally:
        for child in (primary, replica, trainer):
            child.stop()
    versions = sorted(watcher.seen.items())
    trained_to_served = [
        v["served_at"] - v["trained_at"] for _, v in versions[1:] if v["trained_at"] is not None
    ]
    return {
        "events_posted": len(stream["posted"]),
        "probes": len(stream["primary_exclusion"]),
        "post_latency_ms": _ms(stream["post_latency"]),
        "excluded_on_primary_ms": _ms(stream["primary_exclusion"]),
        "excluded_on_replica_ms": _ms(stream["replica_exclusion"]),
        "in_served_version_s": percentiles(delays, POINTS),
        "events_never_in_a_version": missing,
        "versions_served": len(versions),
        "trained_to_served_s": percentiles(trained_to_served, POINTS),
    }


def _ms(seconds: list[float]) -> dict[str, float | None]:
    finite = [s * 1000 for s in seconds if s != float("inf")]
    out = percentiles(finite, POINTS)
    out["timeouts"] = len(seconds) - len(finite)
    return out


def measure_publish_to_served(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Publish versions of a Gowalla-sized student; time each until the server serves it."""
    server_cores, _ = cpu_plan()
    cat = catalogue.CATALOGUES["gowalla"].scaled(args.scale)
    data_dir = work / "publish"
    data_dir.mkdir()
    snapshot = catalogue.student_snapshot(cat)
    catalogue.publish(data_dir / "models", snapshot)
    server, url = start_server(data_dir, "publish-server", server_cores)
    publish_s, served_s = [], []
    try:
        wait_http(
            f"{url}/health/ready", args.ready_timeout, server, ok=lambda b: b["status"] == "ready"
        )
        with httpx.Client(base_url=url, timeout=5.0) as client:
            for _ in range(args.publishes):
                time.sleep(args.publish_gap)
                snapshot.meta["published_at"] = time.time()
                started = time.time()
                version = catalogue.publish(data_dir / "models", snapshot)
                published = time.time()
                publish_s.append(published - started)
                while client.get("/model").json()["version"] != version:
                    if time.time() - published > 30:
                        raise TimeoutError(f"version {version} not served within 30 s")
                    time.sleep(POLL_S)
                served_s.append(time.time() - published)
    finally:
        server.stop()
    return {
        "catalogue": {"users": cat.users, "items": cat.items, "dim": cat.student_dim},
        "store": "file (embedded)",
        "publishes": len(served_s),
        "publish_s": percentiles(publish_s, POINTS),
        "publish_to_served_s": percentiles(served_s, POINTS),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: v for k, v in vars(args).items() if k != "out"}
    result = new_result(NAME, TITLE, params)
    with tempfile.TemporaryDirectory(prefix="ccd-bench-fresh-") as folder:
        work = Path(folder)
        result["results"]["events"] = measure_event_freshness(work, args)
        result["results"]["publish"] = measure_publish_to_served(work, args)
    _targets(result, scaled=args.scale != 1.0)
    result["notes"] += [
        "Embedded mode: SQLite event log and file model store in one data dir; the first "
        "server is pinned to one core, the replica, the trainer and this client share the "
        "other.",
        f"Trainer: `ccd train --learner {args.learner}` with blocks of {args.block_size} events "
        f"after a base block of {args.base_events} synthetic events; events are posted one per "
        f"request at {args.rate:g}/s, so a block fills in about "
        f"{args.block_size / args.rate:.1f} s before it is trained.",
        "Excluded as seen: the probe's item is the user's current top item; the POSTing server "
        "adds it to its seen-items index at once, a replica only when its tailer reads the log.",
        "Publish to served: from the end of the store's publish() to GET /model showing it, "
        "Gowalla-sized student.",
    ]
    return result


def _targets(result: dict[str, Any], scaled: bool) -> None:
    value = result["results"]["publish"]["publish_to_served_s"]["p100"]
    add_target(
        result,
        Target(
            "publish to served, new version (Gowalla-sized student, file store)",
            "< 1 s",
            value,
            "s",
            None if value is None or scaled else value < 1.0,
            f"worst of {result['results']['publish']['publishes']} publishes"
            + (" (scaled catalogue)" if scaled else ""),
        ),
    )


# --- report -------------------------------------------------------------------------------------


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    events, publish = result["results"]["events"], result["results"]["publish"]
    rows = [
        ["POST /events answered", "ms", events["post_latency_ms"], events["events_posted"]],
        ["excluded as seen, same server", "ms", events["excluded_on_primary_ms"], events["probes"]],
        ["excluded as seen, replica", "ms", events["excluded_on_replica_ms"], events["probes"]],
        ["in a served version", "s", events["in_served_version_s"], events["events_posted"]],
        [
            "trainer's trained_at to served",
            "s",
            events["trained_to_served_s"],
            events["versions_served"] - 1,
        ],
        ["publish() itself", "s", publish["publish_s"], publish["publishes"]],
        ["publish to served", "s", publish["publish_to_served_s"], publish["publishes"]],
    ]
    return [
        [name, unit, n, *(values.get(f"p{p}") for p in POINTS)] for name, unit, values, n in rows
    ]


HEADERS = ["measure", "unit", "samples", *(f"p{p}" if p < 100 else "max" for p in POINTS)]


def render(result: dict[str, Any]) -> str:
    events = result["results"]["events"]
    never = events["events_never_in_a_version"]
    tail = (
        f"\n{never} posted events were never in a served version before the end.\n" if never else ""
    )
    return markdown_table(HEADERS, table_rows(result)) + "\n" + tail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench freshness", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long events are posted")
    parser.add_argument("--rate", type=float, default=100.0, help="events posted per second")
    parser.add_argument("--block-size", type=int, default=1_000)
    parser.add_argument("--base-events", type=int, default=5_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--learner", choices=["ccd", "bpr"], default="ccd")
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--publishes", type=int, default=10)
    parser.add_argument("--publish-gap", type=float, default=1.0)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the published student")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    return print_and_save(result, HEADERS, table_rows(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
