"""Ingest benchmark: events/s from the event log into closed blocks, sustained.

    ccd bench ingest                                # real Kafka + Redis, about 5 minutes
    python -m bench.ingest --backend sqlite --seconds 3 --backlog-events 20000 --out /tmp/b

The real broker and redis-server come from ``scripts/test_services.py`` (or the running ones named
by ``CCD_KAFKA_BOOTSTRAP_SERVERS`` / ``CCD_REDIS_URL``). The trainer is the real
``trainer.process.Trainer`` (consume, validate, de-duplicate, map ids, cut blocks, evaluate
prequentially, checkpoint, publish, commit) with a learner that learns nothing, so what is
measured is the stream path, not training. It runs in this process pinned to one core; the
producer runs in a child process pinned to the other; the broker is not pinned.

Phases, side by side in one run:
- drain, once per ``--block-sizes`` entry: a backlog of ``--backlog-events`` synthetic events is
  written first, then a trainer (its own consumer group) reads it for ``--seconds``;
- live: the producer writes at ``--live-rate`` events/s while a trainer consumes, for
  ``--seconds``; the lag at the end says whether it kept up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.common import (
    Target,
    add_output_args,
    add_target,
    child_env,
    cpu_plan,
    load_test_services,
    markdown_table,
    new_result,
    pinned,
    this_process_on,
)
from bench.report import print_and_save

NAME = "ingest"
TITLE = "Ingest: events/s from the event log into closed blocks"
PRODUCE_BATCH = 10_000
SAMPLE_S = 1.0
BACKENDS = {
    "kafka": "a real Kafka broker and redis-server from scripts/test_services.py",
    "sqlite": "the embedded SQLite event log and file model store",
}


class NoopLearner:
    """A ``BlockLearner`` that learns nothing: zero embeddings of the right sizes (d=8)."""

    def __init__(self, dim: int = 8) -> None:
        self.dim, self.n_users, self.n_items = dim, 0, 0

    def learn_block(self, block: Any) -> Any:
        from models.api import BlockReport

        self.n_users, self.n_items = block.n_users, block.n_items
        return BlockReport()

    def student(self) -> Any:
        import torch

        from models.api import Embeddings

        return Embeddings(torch.zeros(self.n_users, self.dim), torch.zeros(self.n_items, self.dim))

    def state_dict(self) -> dict[str, Any]:
        return {"n_users": self.n_users, "n_items": self.n_items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_users, self.n_items = int(state["n_users"]), int(state["n_items"])


# --- producer (child process) -------------------------------------------------------------------


SYNTHETIC_EVENTS_PER_SECOND = 1_000_000.0


def synthetic_messages(
    n_users: int, n_items: int, seed: int, run: str
) -> Iterator[tuple[list[bytes], list[str]]]:
    """Endless batches of (wire messages, keys), as ``InteractionEvent.to_bytes`` writes them."""
    from trainer.synthetic import SyntheticStream

    stream = SyntheticStream(
        n_users=n_users,
        n_items=n_items,
        seed=seed,
        batch_size=PRODUCE_BATCH,
        start_time=time.time(),
        # Dense synthetic time: a backlog of millions of events must stay within the events'
        # one-day future limit (at the default 10/s, 2.5M events would span ~3 days).
        events_per_second=SYNTHETIC_EVENTS_PER_SECOND,
    )
    for batch in stream.batches():
        keys = [f"u{u}" for u in batch.users.tolist()]
        values = [
            orjson.dumps(
                {"user_id": key, "item_id": f"i{i}", "timestamp": t, "event_id": f"{run}-{n}"}
            )
            for n, (key, i, t) in enumerate(
                zip(keys, batch.items.tolist(), batch.timestamps.tolist(), strict=True),
                start=batch.start,
            )
        ]
        yield values, keys


def produce_child(argv: list[str]) -> int:
    """``python -m bench.ingest _produce SETTINGS_JSON EVENTS RATE SEED``: append EVENTS events
    (0 = until killed) at RATE events/s (0 = as fast as possible); prints a JSON summary."""
    from contracts.event_log import open_event_log
    from contracts.settings import Settings

    settings = Settings(**json.loads(argv[0]))
    total, rate, seed = int(argv[1]), float(argv[2]), int(argv[3])
    log = open_event_log(settings)
    sent, started = 0, time.monotonic()
    stopping = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    step = max(1, int(rate / 10)) if rate else PRODUCE_BATCH
    print(json.dumps({"produced": 0, "seconds": 0.0}), flush=True)  # ready: the parent waits
    try:
        for values, keys in synthetic_messages(50_000, 20_000, seed, uuid.uuid4().hex[:8]):
            for first in range(0, len(values), step):
                count = min(step, total - sent) if total else step
                if count <= 0 or stopping.is_set():
                    break
                sent += log.append_raw(values[first : first + count], keys[first : first + count])
                if rate:
                    time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            print(json.dumps({"produced": sent, "seconds": time.monotonic() - started}), flush=True)
            if stopping.is_set() or (total and sent >= total):
                break
    finally:
        log.close()
    return 0


@contextlib.contextmanager
def producer(settings: Any, events: int, rate: float, seed: int, cores: list[int]):
    """The producer child (pinned to ``cores``); yields it, stops it at the end."""
    config = json.dumps(settings.model_dump(mode="json"))
    command = [sys.executable, "-m", "bench.ingest", "_produce", config, str(events)]
    command += [str(rate), str(seed)]
    process = subprocess.Popen(
        pinned(command, cores),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert process.stdout is not None
        if not process.stdout.readline():  # the first line says it is ready
            raise RuntimeError(f"the producer did not start: {process.stderr.read()[-2000:]}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        if process.poll() is None:
            process.kill()


def last_summary(output: str) -> dict[str, float]:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"produced": 0, "seconds": 0.0}


# --- trainer under measurement ----------------------------------------------------------------


def make_trainer(settings: Any) -> Any:
    """A ``Trainer`` that also adds up the time spent closing blocks."""
    from trainer.process import Trainer

    class TimedTrainer(Trainer):
        closing_s = 0.0

        def _close_block(self, stop: threading.Event) -> int:
            started = time.perf_counter()
            try:
                return super()._close_block(stop)
            finally:
                self.closing_s += time.perf_counter() - started

    return TimedTrainer(settings, learner=NoopLearner(), learner_name="noop")


def consume_for(trainer: Any, seconds: float, until_events: int | None) -> dict[str, Any]:
    """Run ``trainer`` for ``seconds`` (or until it has consumed ``until_events`` events),
    sampling its counters every second; the rates come from the samples."""
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), name="trainer", daemon=True)
    samples = []
    started = time.monotonic()
    thread.start()
    while True:
        elapsed = time.monotonic() - started
        consumed = trainer.stats.events_consumed
        closed = consumed - len(trainer.block)
        samples.append((elapsed, consumed, closed, trainer.stats.blocks))
        idle = len(samples) > 1 and samples[-1][1:] == samples[-2][1:]
        drained = until_events is not None and consumed >= until_events and idle
        if elapsed >= seconds or drained:
            break
        if not thread.is_alive():
            raise RuntimeError("the trainer stopped on its own")
        if trainer.stats.malformed:  # the rate of the reject path is not what is measured here
            stop.set()
            raise RuntimeError(f"{trainer.stats.malformed} benchmark events were rejected")
        time.sleep(SAMPLE_S)
    stop.set()
    thread.join(120)
    return summarise_samples(samples, trainer.closing_s)


def summarise_samples(samples: list[tuple[float, int, int, int]], closing_s: float) -> dict:
    """Rates from (seconds, consumed, in closed blocks, blocks) samples: overall, and the
    slowest 10-second window (what "sustained" means here)."""
    array = np.asarray(samples, dtype=np.float64)
    changed = np.flatnonzero(np.any(np.diff(array[:, 1:], axis=0) != 0, axis=1))
    if len(changed):  # leave out a tail where the backlog was already drained
        array = array[: changed[-1] + 2]
    t, consumed, closed, blocks = array.T
    span = max(t[-1] - t[0], 1e-9)
    windows = []
    for start in range(len(t)):
        end = np.searchsorted(t, t[start] + 10.0)
        if end < len(t):
            windows.append((closed[end] - closed[start]) / (t[end] - t[start]))
    return {
        "seconds": round(span, 2),
        "events_consumed": int(consumed[-1]),
        "events_in_closed_blocks": int(closed[-1]),
        "blocks_closed": int(blocks[-1]),
        "events_per_s_consumed": round(consumed[-1] / span, 1),
        "events_per_s_into_closed_blocks": round(closed[-1] / span, 1),
        "slowest_10s_window_events_per_s": round(min(windows), 1) if windows else None,
        "block_closing_s": round(closing_s, 2),
        "events_per_s_excluding_block_closing": round(
            consumed[-1] / max(span - closing_s, 1e-9), 1
        ),
        "timeline": [[round(x, 2), int(c), int(b)] for x, _, c, b in array.tolist()],
    }


# --- phases -------------------------------------------------------------------------------------


@contextlib.contextmanager
def backends(kind: str) -> Iterator[tuple[str | None, str | None]]:
    """(Kafka bootstrap, Redis URL): real services for "kafka", none for "sqlite"."""
    if kind == "sqlite":
        yield None, None
        return
    with load_test_services().services() as addresses:
        yield addresses


def phase_settings(base: dict[str, Any], work: Path, name: str, **fields: Any) -> Any:
    from contracts.settings import Settings

    return Settings(
        **base,
        data_dir=work / name,
        kafka_group_id=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        redis_prefix=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        **fields,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: v for k, v in vars(args).items() if k != "out"}
    result = new_result(NAME, TITLE, params)
    server_cores, client_cores = cpu_plan()
    with (
        tempfile.TemporaryDirectory(prefix="ccd-bench-ingest-") as folder,
        backends(args.backend) as (bootstrap, redis_url),
    ):
        work = Path(folder)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with this_process_on(server_cores):  # after the broker started: it is not pinned
                _phases(result, args, work, bootstrap, redis_url, client_cores)
        finally:
            torch.set_num_threads(threads)
    _targets(result, args)
    result["notes"] += [
        f"Backend: {args.backend} ({BACKENDS[args.backend]}), on this machine.",
        "Learner: a no-op (zero embeddings), so the stream path is measured: consume, parse "
        "and validate each event, de-duplicate, map ids, cut blocks, split, prequential "
        "evaluation, checkpoint, publish, commit. Real learning adds the update benchmark's cost "
        "per block.",
        "Trainer pinned to one core (torch 1 thread), producer (synthetic events, the wire "
        "format of InteractionEvent.to_bytes) to the other; the broker is not pinned.",
        "'into closed blocks' counts events of blocks already published; 'slowest 10 s window' "
        "is the sustained rate.",
    ]
    return result


def _phases(
    result: dict[str, Any],
    args: argparse.Namespace,
    work: Path,
    bootstrap: str | None,
    redis_url: str | None,
    client_cores: list[int],
) -> None:
    """The backlog, the drain phases and the live phase (results go into ``result``)."""
    topic = f"bench-backlog-{uuid.uuid4().hex[:8]}"
    base = {
        "kafka_bootstrap_servers": bootstrap,
        "redis_url": redis_url,
        "kafka_topic": topic,
        "kafka_dead_letter_topic": f"{topic}.dead-letter",
        "block_interval_s": 3600.0,
        "log_level": "WARNING",
    }
    fill = phase_settings(base, work, "backlog")
    started = time.monotonic()
    with producer(fill, args.backlog_events, 0, args.seed, client_cores) as child:
        out, err = child.communicate(timeout=3600)
    if child.returncode != 0:
        raise RuntimeError(f"the producer failed: {err[-2000:]}")
    produced = last_summary(out)
    result["results"]["backlog"] = {
        "events": int(produced["produced"]),
        "seconds": round(time.monotonic() - started, 2),
        "producer_events_per_s": round(produced["produced"] / max(produced["seconds"], 1e-9), 1),
    }
    print(f"backlog: {result['results']['backlog']}", flush=True)
    drains = []
    for size in args.block_sizes:
        settings = phase_settings(
            base, work, f"drain-{size}", block_size=size, base_block_size=args.base_block_size
        )
        if args.backend == "sqlite":  # the embedded log lives in the data dir
            settings.data_dir.mkdir(parents=True)
            shutil.copy(fill.event_log_path, settings.event_log_path)
        trainer = make_trainer(settings)
        try:
            drain = consume_for(trainer, args.seconds, until_events=args.backlog_events)
        finally:
            trainer.close()
        drain["block_size"] = size
        drains.append(drain)
        _progress(f"drain, blocks of {size}", drain)
    result["results"]["drain"] = drains
    if args.live_rate > 0:
        result["results"]["live"] = live_phase(base, work, args, client_cores)


def live_phase(
    base: dict[str, Any], work: Path, args: argparse.Namespace, cores: list[int]
) -> dict[str, Any]:
    topic = f"bench-live-{uuid.uuid4().hex[:8]}"
    live_base = {**base, "kafka_topic": topic, "kafka_dead_letter_topic": f"{topic}.dead-letter"}
    settings = phase_settings(
        live_base,
        work,
        "live",
        block_size=args.live_block_size,
        base_block_size=args.base_block_size,
    )
    trainer = make_trainer(settings)
    try:
        with producer(settings, 0, args.live_rate, args.seed + 1, cores) as child:
            live = consume_for(trainer, args.seconds, until_events=None)
            child.terminate()
            out, _ = child.communicate(timeout=60)
    finally:
        trainer.close()
    produced = last_summary(out)
    live.update(
        block_size=args.live_block_size,
        offered_events_per_s=args.live_rate,
        produced=int(produced["produced"]),
        producer_events_per_s=round(produced["produced"] / max(produced["seconds"], 1e-9), 1),
        lag_at_end=int(produced["produced"]) - live["events_consumed"],
    )
    _progress(f"live at {args.live_rate:g}/s", live)
    return live


def _progress(label: str, entry: dict[str, Any]) -> None:
    print(
        f"  {label}: {entry['events_per_s_into_closed_blocks']:.0f} events/s into closed blocks "
        f"({entry['events_per_s_consumed']:.0f} consumed/s, slowest 10 s window "
        f"{entry['slowest_10s_window_events_per_s']}), {entry['blocks_closed']} blocks in "
        f"{entry['seconds']:.0f} s, {entry['block_closing_s']:.1f} s closing them",
        flush=True,
    )


def _targets(result: dict[str, Any], args: argparse.Namespace) -> None:
    for drain in result["results"].get("drain", []):
        sustained = (
            drain["slowest_10s_window_events_per_s"] or drain["events_per_s_into_closed_blocks"]
        )
        short = drain["seconds"] < 60
        note = f"blocks of {drain['block_size']} events, {drain['seconds']:.0f} s"
        if short:
            note += " (under the 60 s the target asks for)"
        add_target(
            result,
            Target(
                f"ingest into closed blocks ({args.backend}, blocks of {drain['block_size']})",
                ">= 20,000 events/s",
                sustained,
                "events/s",
                None if short else sustained >= 20_000,
                note,
            ),
        )


# --- report -------------------------------------------------------------------------------------

HEADERS = [
    "phase",
    "block size",
    "seconds",
    "blocks",
    "events/s into closed blocks",
    "slowest 10 s window",
    "consumed/s",
    "closing blocks s",
    "consumed/s without closing",
    "lag at end",
]


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    entries = [("drain", d) for d in result["results"].get("drain", [])]
    if result["results"].get("live"):
        live = result["results"]["live"]
        entries.append((f"live ({live['offered_events_per_s']:g}/s offered)", live))
    for phase, e in entries:
        rows.append(
            [
                phase,
                e["block_size"],
                e["seconds"],
                e["blocks_closed"],
                e["events_per_s_into_closed_blocks"],
                e["slowest_10s_window_events_per_s"],
                e["events_per_s_consumed"],
                e["block_closing_s"],
                e["events_per_s_excluding_block_closing"],
                e.get("lag_at_end"),
            ]
        )
    return rows


def render(result: dict[str, Any]) -> str:
    backlog = result["results"].get("backlog", {})
    head = (
        f"Backlog: {backlog.get('events', 0):,} events written in {backlog.get('seconds', 0)} s "
        f"({backlog.get('producer_events_per_s', 0):,.0f} events/s by the producer).\n"
    )
    return head + "\n" + markdown_table(HEADERS, table_rows(result)) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench ingest", description=__doc__)
    parser.add_argument("--backend", choices=["kafka", "sqlite"], default="kafka")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--backlog-events", type=int, default=2_500_000)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[5_000, 100_000])
    parser.add_argument("--base-block-size", type=int, default=20_000)
    parser.add_argument("--live-rate", type=float, default=20_000, help="0: skip the live phase")
    parser.add_argument("--live-block-size", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_produce"]:
        return produce_child(argv[1:])
    args = build_parser().parse_args(argv)
    result = run(args)
    return print_and_save(result, HEADERS, table_rows(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
