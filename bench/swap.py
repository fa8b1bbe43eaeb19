"""Swap-impact benchmark: request latency while new model versions are swapped in, versus steady.

    ccd bench swap                                         # about 1 minute
    python -m bench.swap --scale 0.02 --seconds 2 --swap-every 0.5 --out /tmp/b     # smoke

The server (``bench.server``, one core) serves a Gowalla-sized student from the file store while
wrk offers ``--rate`` requests/s (paced, see ``bench.loadgen``). The same run is done twice, side
by side: steady (no new version), then with a new version published every ``--swap-every``
seconds by this process (as the trainer would), each one loaded by the server's reload thread
(decode, checksum, id maps, norms) and swapped in while requests keep coming.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import catalogue
from bench.common import (
    Target,
    add_output_args,
    add_target,
    cpu_plan,
    markdown_table,
    new_result,
    ratio,
    this_process_on,
)
from bench.report import print_and_save
from bench.serving import ServerUnderTest, prepare_data_dir

NAME = "swap"
TITLE = "Swap impact: latency during model swaps vs steady state"


class Publisher(threading.Thread):
    """Publishes the snapshot again every ``every_s`` seconds until stopped."""

    def __init__(self, store_dir: Path, snapshot: Any, every_s: float) -> None:
        super().__init__(name="publisher", daemon=True)
        self.store_dir, self.snapshot, self.every_s = store_dir, snapshot, every_s
        self.stop = threading.Event()
        self.versions: list[int] = []
        self.publish_s: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.snapshot.meta["published_at"] = time.time()
            started = time.perf_counter()
            self.versions.append(catalogue.publish(self.store_dir, self.snapshot))
            self.publish_s.append(time.perf_counter() - started)


def served_version(base_url: str) -> int:
    return int(httpx.get(f"{base_url}/model", timeout=10).json()["version"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: v for k, v in vars(args).items() if k != "out"}
    result = new_result(NAME, TITLE, params)
    cat = catalogue.CATALOGUES[args.catalogue].scaled(args.scale)
    _, client_cores = cpu_plan()
    with (
        this_process_on(client_cores),  # the publisher stays off the server's core
        tempfile.TemporaryDirectory(prefix="ccd-bench-swap-") as folder,
    ):
        data_dir = prepare_data_dir(Path(folder), cat, teacher=False)
        snapshot = catalogue.student_snapshot(cat)
        with ServerUnderTest(data_dir, cat) as server:
            server.load(connections=4, duration_s=args.warmup)
            steady = server.load(args.connections, args.seconds, rate=args.rate)
            first = served_version(server.base_url)
            publisher = Publisher(data_dir / "models", snapshot, args.swap_every)
            publisher.start()
            swapping = server.load(args.connections, args.seconds, rate=args.rate)
            publisher.stop.set()
            publisher.join()
            time.sleep(1.0)
            last = served_version(server.base_url)
    result["results"] = {
        "catalogue": {"name": cat.name, "users": cat.users, "items": cat.items},
        "steady": steady.as_dict(),
        "swapping": swapping.as_dict(),
        "versions_published": len(publisher.versions),
        "versions_swapped_in": last - first,
        "mean_publish_s": sum(publisher.publish_s) / max(1, len(publisher.publish_s)),
        "p99_ratio": ratio(swapping.latency_ms["p99"], steady.latency_ms["p99"]),
        "max_ratio": ratio(swapping.latency_ms["max"], steady.latency_ms["max"]),
    }
    value = swapping.latency_ms["p99"]
    add_target(
        result,
        Target(
            f"p99 during swaps ({cat.name}, {args.rate:g} requests/s offered)",
            "(no target: vs steady state)",
            value,
            "ms",
            None,
            f"steady p99 {steady.latency_ms['p99']:.2f} ms; a swap every {args.swap_every:g} s",
        ),
    )
    result["notes"] += [
        "Same server, same offered load, steady run first then the run with swaps.",
        "Each swap: the store's pointer moves, the server's reload thread loads and checks the "
        "version (sha256, npz decode, id maps, item norms) and swaps one reference; requests in "
        "flight keep the old model. The reload thread shares the core and the GIL with requests.",
    ]
    return result


HEADERS = [
    "run",
    "offered/s",
    "achieved/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "server CPU µs/req",
]


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    r = result["results"]
    rows = []
    for label, run_ in (("steady", r["steady"]), ("during swaps", r["swapping"])):
        latency = run_["latency_ms"]
        rows.append(
            [
                label,
                run_["offered_rps"],
                run_["requests_per_s"],
                latency["p50"],
                latency["p95"],
                latency["p99"],
                latency["p999"],
                latency["max"],
                run_["server_cpu_us_per_request"],
            ]
        )
    return rows


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    cat = r["catalogue"]
    return (
        f"{cat['name']}-sized student ({cat['users']:,} users, {cat['items']:,} items); "
        f"{r['versions_swapped_in']} versions swapped in during the second run "
        f"({r['versions_published']} published, {r['mean_publish_s']:.2f} s per publish). "
        f"p99 during swaps / steady: {r['p99_ratio']:.2f}x; max: {r['max_ratio']:.2f}x.\n\n"
        + markdown_table(HEADERS, table_rows(result))
        + "\n"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench swap", description=__doc__)
    parser.add_argument("--catalogue", choices=sorted(catalogue.CATALOGUES), default="gowalla")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=500.0, help="offered requests/s")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--swap-every", type=float, default=2.0, help="seconds between versions")
    parser.add_argument("--warmup", type=float, default=3.0)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    return print_and_save(result, HEADERS, table_rows(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
