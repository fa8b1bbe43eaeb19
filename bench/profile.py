"""Where a served request spends its time: py-spy samples the server while wrk loads it.

    python -m bench.profile [--catalogue gowalla] [--seconds 10] [--connections 4] [--teacher]

Needs ``py-spy`` (pip install py-spy==0.4.3). Prints the functions with the most samples, by
own time and by inclusive time, and writes the collapsed stacks (flamegraph input) under
``--out`` (default: a temporary folder that is kept and named).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import catalogue
from bench.common import text_table
from bench.serving import ServerUnderTest, prepare_data_dir

# Leaf frames of a thread that waits (py-spy cannot always tell idle threads in a container).
IDLE_LEAVES = (
    "Condition.wait (",
    "EpollSelector.select (",
    "Event.wait (",
    "sleep (",
    "wait_for_update (",
)
# Own time grouped by where the leaf frame's file lives: first matching fragment wins.
FAMILIES = (
    ("ranking (service/ranking.py, torch)", ("service/ranking.py", "bench/teacher.py", "models/")),
    ("seen-items lookup", ("service/seen.py",)),
    ("route handler (service/routers)", ("service/routers",)),
    ("metrics middleware (prometheus)", ("prometheus_client", "service/metrics.py")),
    ("pydantic (validation, serialisation)", ("pydantic",)),
    ("FastAPI / Starlette", ("fastapi/", "starlette/")),
    ("thread-pool hop (anyio, threading, queue)", ("anyio/", "threading.py", "queue.py")),
    ("HTTP parsing (uvicorn, h11, httptools)", ("uvicorn/", "h11/", "httptools")),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py", "uvloop")),
)


def summarise(collapsed: Path, top: int) -> tuple[str, str, str, int]:
    """(families table, own-time table, inclusive-time table, active samples) of py-spy's
    collapsed stacks, samples of waiting threads left out."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    families: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        families[_family(stack.split(";")[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def table(counter: Counter[str], limit: int | None = top) -> str:
        rows = [(f"{100 * n / max(1, total):.1f}%", name) for name, n in counter.most_common(limit)]
        return text_table(["share", "where"], rows)

    return table(families, None), table(own), table(inclusive), total


def _family(frame: str) -> str:
    for name, fragments in FAMILIES:
        if any(fragment in frame for fragment in fragments):
            return name
    return "other"


def _short(frame: str) -> str:
    """``fn (path/to/file.py:12)`` -> ``fn (file.py)``: lines split one function into many."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--catalogue", choices=sorted(catalogue.CATALOGUES), default="gowalla")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--teacher", action="store_true")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy==0.4.3", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="ccd-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    cat = catalogue.CATALOGUES[args.catalogue].scaled(args.scale)
    with tempfile.TemporaryDirectory(prefix="ccd-bench-") as work:
        data_dir = prepare_data_dir(Path(work), cat, teacher=args.teacher)
        with ServerUnderTest(data_dir, cat, teacher=args.teacher, http=args.http) as server:
            server.load(connections=args.connections, duration_s=1.0)  # warm up
            collapsed = out / "stacks.txt"
            spy = subprocess.Popen(
                server.pinned_to_client(
                    [py_spy, "record", "--format", "raw", "--rate", str(args.rate)]
                    + ["--duration", str(round(args.seconds)), "--nonblocking"]
                    + ["--pid", str(server.child.process.pid), "--output", str(collapsed)]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            time.sleep(0.5)
            run = server.load(connections=args.connections, duration_s=args.seconds)
            spy.wait(timeout=args.seconds + 60)
    families, own, inclusive, total = summarise(collapsed, args.top)
    print(f"{run.requests_per_s:.0f} requests/s, p50 {run.latency_ms['p50']:.2f} ms while sampled")
    print(f"\n{total} active samples (waiting threads left out); own time by part:\n{families}")
    print(f"\nown time by function:\n{own}\n\ninclusive time:\n{inclusive}")
    print(f"\ncollapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
