"""Serving benchmark: GET /recommendations/{user} of the real app under uvicorn (one process,
pinned to one core), loaded by wrk pinned to the other core; student and teacher ensemble side
by side on Gowalla- and Yelp-sized synthetic catalogues.

    ccd bench serving                      # full run (about 8 minutes)
    python -m bench.serving --scale 0.02 --duration 1 --out /tmp/b   # smoke run

Per catalogue and model: closed-loop throughput and p50/p95/p99 latency at several connection
counts, an offered-load run at ``--rate`` requests/s (student only), and the batch endpoint
(POST /recommendations with ``--batch-users`` users) in users/s. Every user has a history in the
event log (the seen-items index excludes it, as in production).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import catalogue
from bench.catalogue import Catalogue
from bench.common import (
    Target,
    add_output_args,
    add_target,
    child_env,
    cpu_plan,
    free_port,
    markdown_table,
    new_result,
    pinned,
    process_cpu_s,
    ratio,
    spawn,
    text_table,
    tool_version,
    wait_http,
)
from bench.loadgen import WrkRun, run_wrk, wrk_path
from bench.report import save_result

NAME = "serving"
TITLE = "Serving: student vs teacher, GET /recommendations/{user}"
READY_TIMEOUT_S = 600.0  # the seen-items tailer reads ~1M events at start on a busy core


def prepare_data_dir(work: Path, cat: Catalogue, teacher: bool, seed: int = 0) -> Path:
    """A data dir holding the catalogue's event history and one published version (student or
    teacher). The event log is written once per catalogue and copied for the other model."""
    shared_log = work / f"{cat.name}-events.sqlite"
    if not shared_log.exists():
        users, items = catalogue.histories(cat, seed)
        catalogue.write_events(shared_log, users, items, start_time=time.time() - 3600)
    data_dir = work / f"{cat.name}-{'teacher' if teacher else 'student'}"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_log, data_dir / "events.sqlite")
    snap = (
        catalogue.teacher_snapshot(cat, seed) if teacher else catalogue.student_snapshot(cat, seed)
    )
    catalogue.publish(data_dir / "models", snap)
    return data_dir


class ServerUnderTest:
    """``python -m bench.server`` pinned to the server core, ready once the model is loaded and
    the seen-items index has caught up; ``load()`` runs wrk on the client core."""

    def __init__(
        self,
        data_dir: Path,
        cat: Catalogue,
        teacher: bool = False,
        http: str = "auto",
        reload_poll_s: float = 5.0,
    ) -> None:
        self.data_dir, self.cat, self.teacher, self.http = data_dir, cat, teacher, http
        self.reload_poll_s = reload_poll_s
        self.server_cores, self.client_cores = cpu_plan()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerUnderTest:
        command = [
            sys.executable,
            "-m",
            "bench.server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--http",
            self.http,
            "--reload-poll-s",
            str(self.reload_poll_s),
        ] + (["--teacher"] if self.teacher else [])
        self.child = spawn(
            "server", pinned(command, self.server_cores), self.data_dir / "server.log", child_env()
        )
        try:
            wait_http(
                f"{self.base_url}/health/ready",
                READY_TIMEOUT_S,
                self.child,
                ok=lambda body: body.get("status") == "ready",
            )
        except BaseException:
            self.child.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.child.stop()

    def pinned_to_client(self, command: list[str]) -> list[str]:
        return pinned(command, self.client_cores)

    def load(
        self,
        connections: int,
        duration_s: float,
        rate: float | None = None,
        batch: int = 0,
        k: int = 20,
    ) -> WrkRun:
        """One wrk run; also records the CPU time the server used meanwhile (a cost per request
        that other processes on the machine disturb far less than wall-clock latency)."""
        cpu_before = process_cpu_s(self.child.process.pid)
        run = run_wrk(
            self.base_url,
            self.cat.users,
            connections,
            duration_s,
            self.client_cores,
            k=k,
            rate=rate,
            batch=batch,
        )
        run.server_cpu_s = process_cpu_s(self.child.process.pid) - cpu_before
        return run


def bench_model(
    work: Path, cat: Catalogue, teacher: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """Every run of one model on one catalogue."""
    label = "teacher" if teacher else "student"
    data_dir = prepare_data_dir(work, cat, teacher)
    out: dict[str, Any] = {"closed": [], "paced": None, "batch": []}
    with ServerUnderTest(data_dir, cat, teacher=teacher, http=args.http) as server:
        server.load(connections=4, duration_s=args.warmup)
        for connections in args.concurrency:
            run = server.load(connections, args.duration, k=args.k)
            out["closed"].append(run.as_dict())
            _progress(cat, label, "closed", run)
        if not teacher and args.rate > 0:
            run = server.load(args.paced_connections, args.paced_duration, rate=args.rate, k=args.k)
            out["paced"] = run.as_dict()
            _progress(cat, label, f"paced {args.rate:g}/s", run)
        if args.batch_users > 0:
            for connections in args.batch_concurrency:
                run = server.load(connections, args.duration, batch=args.batch_users, k=args.k)
                out["batch"].append(run.as_dict())
                _progress(cat, label, f"batch of {args.batch_users}", run)
    return out


def _progress(cat: Catalogue, label: str, mode: str, run: WrkRun) -> None:
    latency = run.latency_ms
    print(
        f"  {cat.name:8s} {label:7s} {mode:14s} c={run.connections:<3d} "
        f"{run.requests_per_s:8.1f} req/s  p50 {latency['p50']:7.2f}  p95 {latency['p95']:7.2f}  "
        f"p99 {latency['p99']:7.2f} ms",
        flush=True,
    )


def ratios(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Student/teacher throughput and teacher/student latency, per connection count and at
    each model's best throughput."""
    per_level = []
    for s, t in zip(student["closed"], teacher["closed"], strict=True):
        per_level.append(
            {
                "connections": s["connections"],
                "throughput_ratio": ratio(s["requests_per_s"], t["requests_per_s"]),
                "p50_ratio": ratio(t["latency_ms"]["p50"], s["latency_ms"]["p50"]),
                "p99_ratio": ratio(t["latency_ms"]["p99"], s["latency_ms"]["p99"]),
            }
        )
    best_s = max(r["requests_per_s"] for r in student["closed"])
    best_t = max(r["requests_per_s"] for r in teacher["closed"])
    batch = {}
    if student["batch"] and teacher["batch"]:
        batch["users_per_s_ratio"] = ratio(
            max(r["users_per_s"] for r in student["batch"]),
            max(r["users_per_s"] for r in teacher["batch"]),
        )
    return {
        "per_connections": per_level,
        "max_throughput_ratio": ratio(best_s, best_t),
        **batch,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk_path()  # fail early when missing
    result = new_result(NAME, TITLE, _params(args))
    result["versions"]["wrk"] = tool_version(["wrk", "--version"])
    server_cores, client_cores = cpu_plan()
    result["params"]["server_cores"], result["params"]["client_cores"] = server_cores, client_cores
    with tempfile.TemporaryDirectory(prefix="ccd-bench-serving-") as folder:
        work = Path(folder)
        for name in args.catalogues:
            cat = catalogue.CATALOGUES[name].scaled(args.scale)
            entry: dict[str, Any] = {
                "sizes": _sizes(cat),
                "student": bench_model(work, cat, False, args),
            }
            if not args.no_teacher:
                entry["teacher"] = bench_model(work, cat, True, args)
                entry["ratios"] = ratios(entry["student"], entry["teacher"])
            result["results"][name] = entry
    _targets(result, args)
    result["notes"] += [
        "Synthetic embeddings (random N(0, 1/d)) at the datasets' sizes; each user has a "
        "history (Poisson, the dataset's mean interactions per user, Zipf-like item "
        "popularity) in the embedded event log, excluded from every answer as in production.",
        "Server: `python -m bench.server` = the app `ccd serve` runs, under uvicorn, one process "
        "pinned with taskset to one core, 1 BLAS thread, log level WARNING (no access "
        "log). Load: wrk (one thread) pinned to the other core, a random known user per request.",
        "Path of a request: the app's fast lane (service.routers.recommendations."
        "OneUserFastLane) answers valid GET /recommendations/{user} requests without FastAPI's "
        "routing and validation, and ranks the requests that arrive in one event-loop turn "
        "together (one users x items score matrix); with several connections open, requests are "
        "batched that way, with one they are ranked one by one.",
        "Offered load: wrk has no constant-rate mode, so a Lua delay() hook hands each request "
        "the next slot of a global schedule (LuaJIT ffi clock); latency is timed from the "
        "actual send; 'achieved' is the rate wrk really sent.",
        "Teacher: the rank ensemble of ccd-method.md §2.1 (mean over members of "
        "(1 / (rank + 1)) ** 0.05, ranks by full sort per member), served through the same "
        "route, seen-items exclusion, top-k and serialisation (bench.teacher).",
    ]
    if args.scale != 1.0:
        result["notes"].append(f"Scaled catalogue (x{args.scale}): not the issue's sizes.")
    return result


def _params(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "catalogues",
        "scale",
        "duration",
        "warmup",
        "concurrency",
        "rate",
        "paced_connections",
        "paced_duration",
        "batch_users",
        "batch_concurrency",
        "k",
        "http",
    )
    return {key: getattr(args, key) for key in keys}


def _sizes(cat: Catalogue) -> dict[str, Any]:
    return {
        "users": cat.users,
        "items": cat.items,
        "student_dim": cat.student_dim,
        "teacher_dims": list(cat.teacher_dims),
        "mean_seen_per_user": round(cat.mean_seen, 1),
        "teacher": cat.teacher_note,
    }


def _targets(result: dict[str, Any], args: argparse.Namespace) -> None:
    entry = result["results"].get("gowalla")
    if entry is None:
        return
    full = args.scale == 1.0  # a scaled catalogue is not the target's setting
    scaled = "" if full else f" (scaled x{args.scale})"
    paced = entry["student"]["paced"]
    if paced is not None:
        achieved = paced["requests_per_s"]
        note = f"achieved {achieved:.0f} of {args.rate:g} requests/s offered{scaled}"
        for point, limit in (("p50", 1.5), ("p99", 5.0)):
            value = paced["latency_ms"][point]
            add_target(
                result,
                Target(
                    f"{point} at {args.rate:g} requests/s offered (Gowalla, student)",
                    f"<= {limit} ms",
                    value,
                    "ms",
                    (value <= limit and achieved >= 0.95 * args.rate) if full else None,
                    note,
                ),
            )
    best = max(r["requests_per_s"] for r in entry["student"]["closed"])
    add_target(
        result,
        Target(
            "sustained throughput, one server process (Gowalla, student)",
            ">= 2,000 requests/s",
            best,
            "requests/s",
            best >= 2000 if full else None,
            f"best closed-loop level{scaled}",
        ),
    )
    if "ratios" in entry:
        value = entry["ratios"]["max_throughput_ratio"]
        add_target(
            result,
            Target(
                "student / teacher throughput (Gowalla)",
                ">= 20x",
                value,
                "x",
                None if value is None or not full else value >= 20,
                f"best closed-loop level of each{scaled}",
            ),
        )


# --- report -------------------------------------------------------------------------------------


def table_rows(entry: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for label in ("student", "teacher"):
        runs = entry.get(label)
        if runs is None:
            continue
        listed = [("closed", r) for r in runs["closed"]]
        if runs["paced"] is not None:
            listed.append(("offered", runs["paced"]))
        listed += [(f"batch {r['batch_users']}", r) for r in runs["batch"]]
        for mode, r in listed:
            latency = r["latency_ms"]
            errors = sum(r["errors"].values())
            rows.append(
                [
                    label,
                    mode,
                    r["connections"],
                    r["offered_rps"],
                    r["requests_per_s"],
                    r["users_per_s"],
                    latency["p50"],
                    latency["p95"],
                    latency["p99"],
                    r.get("server_cpu_us_per_request"),
                    errors,
                ]
            )
    return rows


HEADERS = [
    "model",
    "mode",
    "conns",
    "offered/s",
    "requests/s",
    "users/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "server CPU µs/req",
    "errors",
]


def ratio_rows(entry: dict[str, Any]) -> list[list[Any]]:
    ratios_ = entry.get("ratios")
    if not ratios_:
        return []
    rows = [
        [f"c={r['connections']}", r["throughput_ratio"], r["p50_ratio"], r["p99_ratio"]]
        for r in ratios_["per_connections"]
    ]
    rows.append(["best of each", ratios_["max_throughput_ratio"], None, None])
    if "users_per_s_ratio" in ratios_:
        rows.append(["batch users/s", ratios_["users_per_s_ratio"], None, None])
    return rows


RATIO_HEADERS = ["level", "student/teacher req/s", "teacher/student p50", "teacher/student p99"]


def render(result: dict[str, Any]) -> str:
    parts = []
    for name, entry in result["results"].items():
        sizes = entry["sizes"]
        parts.append(
            f"**{name}**: {sizes['users']:,} users, {sizes['items']:,} items, student d="
            f"{sizes['student_dim']}, teacher {sizes['teacher']}; "
            f"{sizes['mean_seen_per_user']} seen items per user on average.\n"
        )
        parts.append(markdown_table(HEADERS, table_rows(entry)))
        if entry.get("ratios"):
            parts.append("\nRatios (same run, same machine):\n")
            parts.append(markdown_table(RATIO_HEADERS, ratio_rows(entry)))
        parts.append("")
    return "\n".join(parts)


def print_tables(result: dict[str, Any]) -> None:
    for name, entry in result["results"].items():
        print(f"\n{name}:")
        print(text_table(HEADERS, table_rows(entry)))
        if entry.get("ratios"):
            print(text_table(RATIO_HEADERS, ratio_rows(entry)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench serving", description=__doc__)
    parser.add_argument(
        "--catalogues", nargs="+", choices=sorted(catalogue.CATALOGUES), default=["gowalla", "yelp"]
    )
    parser.add_argument("--scale", type=float, default=1.0, help="catalogue size factor")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per closed run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rate", type=float, default=1000.0, help="offered requests/s (0: skip)")
    parser.add_argument("--paced-connections", type=int, default=32)
    parser.add_argument("--paced-duration", type=float, default=20.0)
    parser.add_argument("--batch-users", type=int, default=100, help="0: skip the batch runs")
    parser.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print_tables(result)
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
