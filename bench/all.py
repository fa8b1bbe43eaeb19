"""Run every benchmark, one after the other, and write the report.

    ccd bench all                 # the full report (~1.5 h on two quiet cores, mostly Yelp)
    ccd bench all --quick --out /tmp/bench     # tiny sizes: checks that everything runs

Also the dispatcher of ``ccd bench NAME [options]`` (NAME: serving, ingest, update, freshness,
swap, all, report, profile).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback

from bench import NAMES, common
from bench.common import DEFAULT_OUT, add_output_args

# Tiny sizes per benchmark: seconds each on a busy machine, numbers meaningless.
QUICK = {
    "serving": "--scale 0.02 --duration 1 --warmup 1 --paced-duration 1 --concurrency 1 4 "
    "--batch-concurrency 1 --batch-users 10",
    "ingest": "--backend sqlite --seconds 3 --backlog-events 20000 --block-sizes 5000 "
    "--base-block-size 5000 --live-rate 2000",
    "update": "--parts stream --stream-blocks 1 --scale 0.1 --no-retrain",
    "freshness": "--seconds 5 --rate 40 --base-events 600 --block-size 100 --learner bpr "
    "--scale 0.02 --publishes 2 --publish-gap 0.2",
    "swap": "--scale 0.02 --seconds 2 --swap-every 0.5 --warmup 1",
    "learners": "--blocks 1 --base-events 600 --block-events 300 --users 80 --items 60",
    "filters": "--scale 0.02 --rounds 50",
    "impressions": "--scale 0.02 --duration 1 --warmup 0.5 --rounds 1 --count 500",
    "foldin": "--datasets synthetic:4000 --learners als",
    "scale": "--users 50 200 --items 300 --dim 4 --requests 10 --http-requests 5 "
    "--ann-min-items 100 --churn-blocks 1 --churn-users 60 --churn-items 40 "
    "--churn-base-events 300 --churn-block-events 150",
}
USAGE = (
    "usage: ccd bench {serving,ingest,update,freshness,swap,learners,filters,impressions,scale,"
    "foldin,all,report,profile} "
    "[options]\n"
    "  ccd bench NAME --help   lists the options of one benchmark"
)


def run_all(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ccd bench all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    add_output_args(parser)
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        extra = QUICK[name].split() if args.quick else []
        command = [*extra, "--out", str(args.out)]
        print(f"\n=== ccd bench {name} {' '.join(command)}", flush=True)
        started = time.monotonic()
        shown = [*extra, "--out", common.display_path(args.out)]  # no machine's paths in reports
        common.invoked_as = shlex.join(["ccd", "bench", name, *shown]) + "  # via ccd bench all"
        try:
            importlib.import_module(f"bench.{name}").main(command)
        except Exception:  # one failing benchmark must not lose the others' results
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.out.resolve() == DEFAULT_OUT.resolve():
        print("report: docs/BENCHMARKS.md")
    return 0


def dispatch(argv: list[str]) -> int:
    """``ccd bench NAME [options]``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all(rest)
    if name in (*NAMES, "report", "profile"):
        return int(importlib.import_module(f"bench.{name}").main(rest) or 0)
    print(f"ccd bench: unknown benchmark {name!r}\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    return run_all(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
