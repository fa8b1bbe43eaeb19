"""Benchmarks of the service: serving, ingest, update cost, freshness, swap impact, learners,
filters, impressions, scale, fold-in.

Each one runs with one command (``ccd bench NAME`` or ``python -m bench.NAME``), prints a table,
writes ``docs/benchmarks/NAME.json`` and regenerates ``docs/BENCHMARKS.md`` from every JSON there
(``python -m bench.report``). They are not part of the test suite; ``tests/test_bench_smoke.py``
runs each with tiny sizes.
"""

NAMES = (
    "serving",
    "ingest",
    "update",
    "freshness",
    "swap",
    "learners",
    "filters",
    "impressions",
    "scale",
    "foldin",
)
