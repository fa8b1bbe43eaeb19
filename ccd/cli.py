"""The ``ccd`` command: serve, train, indexer, up, produce, replay, version.

Settings come from ``contracts.settings.Settings`` (environment variables ``CCD_*``); a flag given
on the command line overrides the matching field. Heavy imports (torch, FastAPI) happen inside the
subcommands so that ``ccd --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from contracts.version import package_version

log = logging.getLogger("ccd")

# `ccd up` defaults, chosen so a first run shows new model versions within a minute on a laptop:
# small blocks, a fast synthetic stream, a short block timer. Each yields to a CCD_* variable or
# a flag that sets the same field.
UP_SETTINGS = {"base_block_size": 2_000, "block_size": 1_000, "block_interval_s": 10.0}
UP_RATE = 100.0
UP_USERS = 1_000
UP_ITEMS = 500
# How long `ccd up` waits for a child to exit after SIGTERM before killing it.
CHILD_STOP_TIMEOUT_S = 15.0
# How often a `ccd up` child checks that its parent is still there.
PARENT_POLL_S = 0.5
# The signals that stop `ccd up` and all of its children (Ctrl-C, `kill`/`docker stop`/systemd,
# a closed terminal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# --- settings ---------------------------------------------------------------------------------


def load_settings(overrides: dict[str, Any], defaults: dict[str, Any] | None = None) -> Any:
    """``Settings`` from the environment, then ``defaults`` for fields the environment left
    unset, then ``overrides`` (flags given on the command line; None = not given)."""
    from contracts.settings import Settings

    from_env = Settings()
    values = {
        name: value
        for name, value in (defaults or {}).items()
        if name not in from_env.model_fields_set
    }
    values.update({name: value for name, value in overrides.items() if value is not None})
    settings = Settings(**values)
    return settings.model_copy(update={"data_dir": settings.data_dir.resolve()})


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    # kafka-python logs every connection step at INFO: hundreds of lines that bury our own.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))


# --- argument parsing -------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="embedded event log, model store and checkpoints (CCD_DATA_DIR, default ./ccd-data)",
    )
    parser.add_argument("--log-level", help="Python logging level (CCD_LOG_LEVEL, default INFO)")


def _add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (CCD_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (CCD_PORT, default 8000)")


def _add_trainer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--learner",
        choices=["ccd", "bpr", "als"],
        help="block learner (CCD_LEARNER, default ccd): the CCD update, the BPR fine-tuning "
        "baseline, or iALS retrained from scratch on every event so far",
    )
    parser.add_argument(
        "--base-block-size", type=int, help="events in the first block (CCD_BASE_BLOCK_SIZE)"
    )
    parser.add_argument(
        "--block-size", type=int, help="a block closes after this many events (CCD_BLOCK_SIZE)"
    )
    parser.add_argument(
        "--block-interval",
        type=float,
        dest="block_interval_s",
        help="... or after this many seconds (CCD_BLOCK_INTERVAL_S)",
    )


def _add_rate(parser: argparse.ArgumentParser, default: float | None) -> None:
    shown = "as fast as possible" if default is None else f"{default:g}"
    parser.add_argument(
        "--rate",
        type=float,
        default=default,
        metavar="EVENTS_PER_S",
        help=f"events per second to send (default: {shown})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccd",
        description="Streaming recommender running Continual Collaborative Distillation. "
        "Settings come from CCD_* environment variables; flags override them.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the HTTP recommendation server",
        description="Serve recommendations from the newest model in the model store "
        "(Redis if CCD_REDIS_URL is set, else files under the data dir).",
    )
    _add_server(serve)
    _add_common(serve)
    serve.set_defaults(handler=cmd_serve)

    train = commands.add_parser(
        "train",
        help="run the streaming trainer",
        description="Consume the event stream (Kafka if CCD_KAFKA_BOOTSTRAP_SERVERS is set, "
        "else the embedded log), train block by block, publish each student version.",
    )
    _add_trainer(train)
    _add_common(train)
    train.set_defaults(handler=cmd_train)

    indexer = commands.add_parser(
        "indexer",
        help="write each user's seen items from Kafka to Redis (CCD_SEEN_STORE=redis)",
        description="Consume the event stream in consumer group CCD_INDEXER_GROUP_ID and add "
        "every (user, item) pair to the user's set in Redis, which servers with "
        "CCD_SEEN_STORE=redis read per request. Needs Kafka and Redis.",
    )
    _add_common(indexer)
    indexer.set_defaults(handler=cmd_indexer)

    up = commands.add_parser(
        "up",
        help="trainer, event producer and server together on this machine",
        description="Run the trainer and a producer in child processes and the server here. "
        "By default streams a synthetic interaction generator into the embedded log, with "
        f"small blocks ({UP_SETTINGS['base_block_size']} events, then "
        f"{UP_SETTINGS['block_size']}) so that model versions appear within a minute. "
        "Ctrl-C (or SIGTERM, SIGHUP) stops everything.",
    )
    _add_server(up)
    up.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="stream this CSV/TSV/JSONL file in time order instead of synthetic events",
    )
    _add_rate(up, UP_RATE)
    up.add_argument(
        "--limit", type=int, help="stop producing after this many events (default: never)"
    )
    up.add_argument(
        "--users",
        type=int,
        default=UP_USERS,
        help="synthetic users at the start (default: %(default)s)",
    )
    up.add_argument(
        "--items",
        type=int,
        default=UP_ITEMS,
        help="synthetic items at the start (default: %(default)s)",
    )
    up.add_argument(
        "--seed", type=int, help="seed of the synthetic stream and the trainer (CCD_SEED)"
    )
    _add_trainer(up)
    _add_common(up)
    up.set_defaults(handler=cmd_up)

    produce = commands.add_parser(
        "produce",
        help="push interaction events from a file to the event stream",
        description="Read a CSV/TSV (user, item, timestamp columns) or JSONL file and append "
        "its events, in time order, to the configured event stream.",
    )
    produce.add_argument("file", type=Path, metavar="FILE", help="CSV, TSV or JSONL events")
    _add_rate(produce, None)
    produce.add_argument("--limit", type=int, help="send at most this many events")
    _add_common(produce)
    produce.set_defaults(handler=cmd_produce)

    commands.add_parser(
        "replay",
        help="run the paper's block protocol offline (options: ccd replay --help)",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="benchmarks: serving, ingest, update, freshness, swap, learners, filters, "
        "impressions, scale, foldin, all "
        "(ccd bench NAME --help)",
        add_help=False,
    )
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["replay"]:
        return cmd_replay(argv[1:])  # its own parser owns every option after the word
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])  # likewise
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from pydantic import ValidationError

    try:
        return int(handler(args) or 0)
    except ValidationError as error:  # a configuration mistake: name it, no traceback
        if error.title != "Settings":
            raise
        for problem in error.errors():
            if not problem["loc"]:  # a rule between fields: its message names the variables
                print(f"ccd: invalid settings: {problem['msg']}", file=sys.stderr)
                continue
            name = "CCD_" + str(problem["loc"][0]).upper()
            value = str(problem.get("input"))[:80]
            print(f"ccd: invalid {name}={value!r}: {problem['msg']}", file=sys.stderr)
        return 2


def _overrides(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in ("data_dir", "log_level", *names)}


_SERVER_FIELDS = ("host", "port")
_TRAINER_FIELDS = ("learner", "base_block_size", "block_size", "block_interval_s")


# --- subcommands ------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    print(f"ccd {package_version()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(_overrides(args, *_SERVER_FIELDS))
    configure_logging(settings.log_level)
    _serve(settings)
    return 0


def _serve(settings: Any) -> None:
    import uvicorn

    from service.app import create_app
    from service.ranking import limit_blas_threads

    limit_blas_threads(1)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


def cmd_train(args: argparse.Namespace) -> int:
    settings = load_settings(_overrides(args, *_TRAINER_FIELDS))
    configure_logging(settings.log_level)
    # Before the slow torch import: a SIGTERM during start-up must stop cleanly, not kill.
    stop = threading.Event()
    _stop_on_sigterm(stop)  # `docker stop` ends the trainer between steps, not mid-write
    from contracts.event_log import LogPositionError
    from trainer.device import DeviceUnavailable
    from trainer.process import run_trainer

    try:
        run_trainer(settings, stop=stop)
    except (LogPositionError, DeviceUnavailable) as error:  # an operator must decide: one line
        print(f"ccd train: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_indexer(args: argparse.Namespace) -> int:
    settings = load_settings(_overrides(args))
    configure_logging(settings.log_level)
    stop = threading.Event()
    _stop_on_sigterm(stop)  # `docker stop`: the batch in hand is written and committed first
    from service.indexer import run_indexer

    try:
        run_indexer(settings, stop)
    except ValueError as error:
        print(f"ccd indexer: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    settings = load_settings(_overrides(args))
    configure_logging(settings.log_level)
    problem = _events_file_problem(args.file)
    if problem:
        print(f"ccd produce: {problem}", file=sys.stderr)
        return 2
    from trainer.producer import produce, read_events

    count = produce(settings, read_events(args.file), rate=args.rate, total=args.limit)
    print(f"sent {count} events")
    return 0


def _events_file_problem(path: Path) -> str | None:
    """One line saying why ``path`` cannot be streamed (missing, unreadable, no user and item
    columns), or None: a user's typo gets that line, not a traceback."""
    from trainer.producer import check_events_file

    try:
        check_events_file(path)
    except OSError as error:
        return f"{path}: {error.strerror or error}"
    except UnicodeDecodeError:
        return f"{path}: not UTF-8 text"
    except ValueError as error:  # its message names the file
        return str(error)
    return None


def cmd_replay(argv: list[str]) -> int:
    from experiments.protocol import main as replay_main

    return int(replay_main(argv) or 0)


def cmd_bench(argv: list[str]) -> int:
    """The benchmarks of ``bench/``, which live in the source checkout (not in the package)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "bench").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from bench.all import dispatch
    except ModuleNotFoundError as error:
        if error.name not in ("bench", "bench.all"):
            raise
        print("ccd bench: needs a source checkout (bench/ is missing)", file=sys.stderr)
        return 2
    return dispatch(argv)


# --- ccd up -----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings(
        _overrides(args, *_SERVER_FIELDS, *_TRAINER_FIELDS, "seed"), defaults=UP_SETTINGS
    )
    configure_logging(settings.log_level)
    problem = _events_file_problem(args.data) if args.data else None
    if problem:  # before anything starts: no server and trainer running on without data
        print(f"ccd up: {problem}", file=sys.stderr)
        return 2
    problem = _claim_data_dir(settings.data_dir, args, settings.seed)
    if problem:  # a directory made from another source: mixing them would spoil the model
        print(f"ccd up: {problem}", file=sys.stderr)
        return 2
    source = {
        "data": str(args.data.resolve()) if args.data else None,
        "rate": args.rate,
        "limit": args.limit,
        "users": args.users,
        "items": args.items,
        "seed": settings.seed,
    }
    context = multiprocessing.get_context("spawn")
    config = settings.model_dump(mode="json")
    parent = os.getpid()
    children = [
        context.Process(target=_trainer_child, args=(config, parent), name="trainer"),
        context.Process(target=_producer_child, args=(config, source, parent), name="producer"),
    ]
    if settings.seen_store == "redis":  # the server reads seen items the indexer writes
        children.append(
            context.Process(target=_indexer_child, args=(config, parent), name="indexer")
        )
    _interrupt_on_stop_signals()  # before the children exist: no signal may skip their stop
    stopping = threading.Event()
    try:
        for child in children:
            child.start()
        threading.Thread(target=_report_exits, args=(children, stopping), daemon=True).start()
        _print_banner(settings, args.data)
        _serve(settings)
    except KeyboardInterrupt:
        pass  # a stop signal outside uvicorn's own handling; the children are stopped below
    finally:
        _stop_children(children, stopping)
    return 0


def _claim_data_dir(data_dir: Path, args: argparse.Namespace, seed: int) -> str | None:
    """Records this run's source in ``data_dir``; the line refusing it if another's is there."""
    from ccd import sources

    if args.data:
        source = sources.file_source(args.data)
    else:
        source = sources.synthetic_source(args.users, args.items, seed)
    return sources.claim(data_dir, source)


def _interrupt_on_stop_signals() -> None:
    """SIGTERM and SIGHUP stop `ccd up` as Ctrl-C does. While uvicorn serves, it handles SIGINT
    and SIGTERM itself (a graceful shutdown) and then raises the signal again with the handlers
    in place before it: SIGTERM's default would end the process there, before the children are
    stopped, leaving them orphaned. SIGHUP, which uvicorn does not handle, is turned into a
    SIGTERM so that it takes the same path."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, lambda signum, frame: signal.raise_signal(signal.SIGTERM))


def _print_banner(settings: Any, data: Path | None) -> None:
    from contracts.model_store import open_model_store

    base = f"http://{settings.host}:{settings.port}"
    stream = f"file {data}" if data else "synthetic events (users u0, u1, ...; items i0, ...)"
    try:
        store = open_model_store(settings)
        try:
            version = store.current_version()
        finally:
            store.close()
    except Exception:  # an unreachable store is the server's to report, not the banner's
        version = None
    if version is not None:
        print(
            f"ccd up: resuming at model version {version} from {settings.data_dir} "
            "(a new --data-dir starts from scratch; a file already sent counts as duplicates)"
        )
    print(
        f"\nccd up: streaming {stream} into {settings.data_dir}\n"
        f"  first model after {settings.base_block_size} events, "
        f"then a new version every {settings.block_size} events\n"
        f"  curl {base}/health/ready\n"
        f"  curl {base}/model\n"
        f"  curl '{base}/recommendations/{'USER_ID' if data else 'u1'}?k=10'\n"
        f"  API docs: {base}/docs   Ctrl-C stops everything\n",
        flush=True,
    )


def _stop_on_sigterm(stop: threading.Event | None) -> None:
    """The first SIGTERM sets ``stop`` (when given) for a graceful end; without one, or on a
    second SIGTERM, it raises SystemExit so that files and connections still close."""

    def on_sigterm(signum: int, frame: Any) -> None:
        if stop is None or stop.is_set():
            raise SystemExit(0)
        log.info("SIGTERM: stopping after the current step (again to stop at once)")
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)


def _child_setup(config: dict[str, Any], parent: int, stop: threading.Event | None = None) -> Any:
    """In a `ccd up` child: Ctrl-C and a closed terminal belong to the parent, which stops us
    with SIGTERM; if the parent disappears without doing so (``kill -9``), we stop ourselves."""
    from contracts.settings import Settings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stop_on_sigterm(stop)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    settings = Settings(**config)
    configure_logging(settings.log_level)
    log.info("%s started (pid %d)", multiprocessing.current_process().name, os.getpid())
    return settings


def _exit_with_parent(parent: int) -> None:
    """Once ``parent`` is no longer our parent (it died and we were re-parented), stop as on a
    SIGTERM from it, and end at once if that takes longer than the parent would have waited."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    log.warning("the `ccd up` process %d is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(CHILD_STOP_TIMEOUT_S)
    os._exit(1)


def _trainer_child(config: dict[str, Any], parent: int) -> None:
    stop = threading.Event()
    settings = _child_setup(config, parent, stop)
    from trainer.process import run_trainer

    run_trainer(settings, stop=stop)


def _indexer_child(config: dict[str, Any], parent: int) -> None:
    stop = threading.Event()
    settings = _child_setup(config, parent, stop)
    from service.indexer import run_indexer

    run_indexer(settings, stop)


def _producer_child(config: dict[str, Any], source: dict[str, Any], parent: int) -> None:
    os.environ["TQDM_DISABLE"] = "1"  # no progress bar amid the server's log lines
    settings = _child_setup(config, parent)
    from trainer.producer import produce, read_events
    from trainer.synthetic import SyntheticStream

    if source["data"]:
        events: Iterable[Any] = read_events(Path(source["data"]))
    else:
        stream = SyntheticStream(
            n_users=source["users"],
            n_items=source["items"],
            seed=source["seed"],
            start_time=time.time(),
            events_per_second=source["rate"] or SyntheticStream().events_per_second,
        )
        events = _fresh_event_ids(stream)
    count = produce(settings, events, rate=source["rate"], total=source["limit"])
    logging.getLogger("ccd.producer").info("producer finished after %d events", count)


def _fresh_event_ids(events: Iterable[Any]) -> Iterator[Any]:
    """The synthetic stream numbers its events from 0 on every run; a run-specific id keeps a
    restarted `ccd up` from having its new events dropped as re-deliveries of the last run's."""
    run = uuid.uuid4().hex[:8]
    for event in events:
        yield event.model_copy(update={"event_id": f"{event.event_id}-{run}"})


def _log_exit(child: Any) -> None:
    level = logging.INFO if child.exitcode == 0 else logging.ERROR
    log.log(level, "%s exited with code %s", child.name, child.exitcode)


def _report_exits(children: list[Any], stopping: threading.Event) -> None:
    """Logs a child that ends on its own (the producer at the end of a file, or a crash)."""
    pending = list(children)
    while pending and not stopping.is_set():
        for child in list(pending):
            child.join(timeout=0.5)
            if not child.is_alive() and not stopping.is_set():
                pending.remove(child)
                _log_exit(child)


def _stop_children(children: list[Any], stopping: threading.Event) -> None:
    """SIGTERM to each running child, SIGKILL to one still running after
    ``CHILD_STOP_TIMEOUT_S`` or once another stop signal arrives meanwhile (an impatient
    second Ctrl-C must hurry the stop, not abandon it)."""
    stopping.set()
    hurry = threading.Event()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: hurry.set())
    running = [child for child in children if child.pid is not None and child.is_alive()]
    for child in running:
        child.terminate()
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    for child in running:
        while child.is_alive() and not hurry.is_set() and time.monotonic() < deadline:
            child.join(0.1)
        if child.is_alive():
            log.warning("%s did not stop in time; killing it", child.name)
            child.kill()
            child.join()
        _log_exit(child)


if __name__ == "__main__":
    sys.exit(main())
