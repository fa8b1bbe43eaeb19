"""What the trainer fault tests share: real processes to kill (the trainer, a redis-server and a
Kafka broker of the test's own), the events they send, and the audit that counts them.

The audit reads every kept version's metadata from the store and checks, block by block, that
the block holds exactly the events it must: the stream is cut by count (the block timer is set
far beyond the test), so which unique events land in block k is a function of the log order
alone; ``events`` and ``event_digest`` (the sum of the events' dedup hashes modulo 2**64) of
each published block must equal that expectation. A lost event, a duplicate or an event applied
in two blocks changes a count or a digest.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kafka import KafkaAdminClient

from contracts.events import InteractionEvent
from contracts.model_store import ModelStore
from contracts.settings import Settings
from trainer.blocks import DIGEST_MODULUS, dedup_hash

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 90.0  # deadline of each wait; generous for a busy 2-core machine
STOP_S = 20.0
CRASHED = 137  # the exit status of a crash point's os._exit (as of a `kill -9` in a shell)
BASE, BLOCK = 200, 100
# The trainers of these tests: small count-cut blocks, the fast bpr learner, short lease and
# retry times so that takeovers and recoveries happen within seconds.
TRAINER_SETTINGS = {
    "learner": "bpr",
    "base_block_size": BASE,
    "block_size": BLOCK,
    "block_interval_s": 3600,  # blocks are cut by count only: their content is predictable
    "min_block_size": 1,
    "eval_k": 10,
    "torch_threads": 1,
    "keep_versions": 1000,  # the audit reads every version
    "lease_ttl_s": 2,
    "publish_retry_initial_s": 0.2,
    "publish_retry_max_s": 1,
}

# What a trainer of these tests takes from the shared services: their addresses and names.
SERVICE_FIELDS = {
    "kafka_bootstrap_servers",
    "kafka_topic",
    "kafka_dead_letter_topic",
    "kafka_group_id",
    "redis_url",
    "redis_prefix",
}


def trainer_settings_on(service: Settings, data_dir: Path) -> dict[str, Any]:
    """``TRAINER_SETTINGS`` on the shared Kafka and Redis of ``service``, checkpoints in
    ``data_dir``."""
    return {
        **TRAINER_SETTINGS,
        **service.model_dump(include=SERVICE_FIELDS),
        "data_dir": data_dir,
    }


T = TypeVar("T")


def load_test_services() -> Any:
    """scripts/test_services.py as a module (it is not part of an installed package)."""
    spec = importlib.util.spec_from_file_location(
        "ccd_test_services", REPO / "scripts" / "test_services.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


test_services = load_test_services()


# --- events and the expected blocks ---------------------------------------------------------


def make_events(n: int, tag: str, users: int = 60, items: int = 40) -> list[InteractionEvent]:
    """``n`` events with unique ids ``{tag}-{i}``; seeded random users and items whose ranges
    grow along the stream (``users`` and ``items`` more at its end), so new entities appear."""
    rng = random.Random(tag)
    return [
        InteractionEvent(
            user_id=f"u{rng.randrange(10 + users * i // n)}",
            item_id=f"i{rng.randrange(10 + items * i // n)}",
            timestamp=1_700_000_000.0 + i,
            event_id=f"{tag}-{i}",
        )
        for i in range(n)
    ]


def digest(event_ids: Iterable[str]) -> str:
    """What a block's ``event_digest`` must be for these events."""
    return f"{sum(dedup_hash(e) for e in event_ids) % DIGEST_MODULUS:016x}"


def expected_blocks(unique_ids: list[str], base: int, block: int) -> list[list[str]]:
    """The unique event ids of each full block, in log order (a partial last block is left
    out: it is not closed while the stream is quiet)."""
    blocks = [unique_ids[:base]] if len(unique_ids) >= base else []
    for start in range(base, len(unique_ids) - block + 1, block):
        blocks.append(unique_ids[start : start + block])
    return blocks


def unique_in_order(events: Iterable[InteractionEvent]) -> list[str]:
    seen: set[str] = set()
    ordered = []
    for event in events:
        if event.dedup_key() not in seen:
            seen.add(event.dedup_key())
            ordered.append(event.dedup_key())
    return ordered


@dataclass
class Audit:
    """The counted outcome of a run (see the module docstring)."""

    versions: list[int]
    block_indices: list[int]
    events_sent: int
    events_in_blocks: int
    lost: int
    duplicates: int
    writers: list[str]
    metas: list[dict[str, Any]] = field(repr=False)

    def figures(self) -> dict[str, Any]:
        return {
            "events sent (unique)": self.events_sent,
            "events in blocks": self.events_in_blocks,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "versions": f"{self.versions[0]}..{self.versions[-1]} ({len(self.versions)})"
            if self.versions
            else "none",
        }


def audit(store: ModelStore, blocks: list[list[str]]) -> Audit:
    """Check the published versions against the expected ``blocks`` (see the module
    docstring); fails the test on any difference."""
    versions = store.versions()
    metas = [store.load_meta(v) for v in versions]
    indices = [int(m["block_index"]) for m in metas]
    in_blocks = sum(int(m["events"]) for m in metas)
    expected = sum(len(b) for b in blocks)
    result = Audit(
        versions=versions,
        block_indices=indices,
        events_sent=expected,
        events_in_blocks=in_blocks,
        lost=max(0, expected - in_blocks),
        duplicates=max(0, in_blocks - expected),
        writers=[str(m.get("writer")) for m in metas],
        metas=metas,
    )
    assert all(a < b for a, b in zip(versions, versions[1:], strict=False)), versions
    # Each block published exactly once, all of them, in order.
    assert indices == list(range(len(blocks))), f"block of each version: {indices}"
    for index, (meta, ids) in enumerate(zip(metas, blocks, strict=True)):
        assert (meta["events"], meta["event_digest"]) == (len(ids), digest(ids)), (
            f"block {index} (version {meta['version']}) does not hold exactly its events"
        )
    assert in_blocks == expected
    return result


# --- processes ------------------------------------------------------------------------------


def ccd_environment(settings: dict[str, Any], **extra: str) -> dict[str, str]:
    """This environment without ``CCD_*`` variables, plus ``settings`` as ``CCD_*``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    env.update({f"CCD_{name.upper()}": str(value) for name, value in settings.items()})
    env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1", **extra)
    return env


@dataclass
class TrainerProcess:
    """A `ccd train` subprocess; every start appends to the same log file."""

    name: str
    settings: dict[str, Any]
    log_path: Path
    popen: subprocess.Popen | None = None
    exit_codes: list[int] = field(default_factory=list)
    started_pids: list[int] = field(default_factory=list)

    def start(self, crash_at: str | None = None) -> TrainerProcess:
        assert self.popen is None or self.popen.poll() is not None, "still running"
        extra = {"CCD_FAULT_CRASH_AT": crash_at} if crash_at else {}
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"=== start (crash at {crash_at})\n".encode())
            log_file.flush()
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "ccd", "train"],
                cwd=REPO,
                env=ccd_environment(self.settings, **extra),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.started_pids.append(self.popen.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_exit(self, timeout_s: float = WAIT_S) -> int:
        assert self.popen is not None
        try:
            code = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout_s:.0f} s\n{self.tail()}")
        self.exit_codes.append(code)
        return code

    def kill(self) -> int:
        """``kill -9``."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        return self.wait_exit()

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after ``STOP_S``; None if it was not running."""
        if not self.running():
            return None
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        return self.wait_exit()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ({self.log_path}):\n" + "\n".join(self.log().splitlines()[-lines:])

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))


def wait_for(
    what: str,
    condition: Callable[[], T | None],
    watched: Iterable[TrainerProcess] = (),
    timeout_s: float = WAIT_S,
) -> T:
    """Poll ``condition`` until truthy; fail at the deadline with the processes' logs."""
    watched = list(watched)
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(p.tail() for p in watched)
            pytest.fail(f"no {what} within {timeout_s:.0f} s\n{logs}")
        time.sleep(0.1)


def newest_meta(store: ModelStore) -> dict[str, Any] | None:
    versions = store.versions()
    return store.load_meta(versions[-1]) if versions else None


def blocks_published(store: ModelStore) -> int:
    meta = newest_meta(store)
    return 0 if meta is None else int(meta["block_index"]) + 1


# --- services of the test's own -------------------------------------------------------------


class OwnRedis:
    """A redis-server on a fixed port with an append-only file synced on every write, so that
    a ``kill -9`` and a restart keep its data (as a production Redis must for the model store:
    the version counter and the lease epoch live there)."""

    def __init__(self, work_dir: Path, persist: bool = True) -> None:
        """``persist=False``: no append-only file, as a careless deployment runs it (a restart
        loses every key)."""
        self.dir = work_dir / "redis"
        self.dir.mkdir(parents=True)
        self.persist = persist
        self.port = test_services.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.service: Any = None

    def start(self) -> None:
        redis_server = test_services.require_tool("redis-server", "redis-server")
        cmd = [
            redis_server,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
        ]  # fmt: skip
        self.service = test_services.spawn("own redis-server", cmd, self.dir, self.dir / "log")
        test_services.wait_until(self.service, lambda: test_services.redis_ping(self.url), "PING")

    def kill(self) -> None:
        self.service.process.send_signal(signal.SIGKILL)
        self.service.process.wait()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


class OwnKafka:
    """A single-node KRaft broker on fixed ports, formatted once; ``kill`` and ``start`` again
    bring the same broker (topics, committed offsets) back on the same address."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir / "kafka"
        self.dir.mkdir(parents=True)
        broker_port, controller_port = test_services.free_port(), test_services.free_port()
        while controller_port == broker_port:
            controller_port = test_services.free_port()
        self.bootstrap = f"127.0.0.1:{broker_port}"
        properties = self.dir / "server.properties"
        # A restarted broker re-registers only after its dead incarnation's session expired:
        # a short session keeps the restart quick (default 9 s).
        properties.write_text(
            test_services.kafka_properties(self.dir, broker_port, controller_port)
            + "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=500\n"
        )
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(test_services.log4j_config(self.dir / "server.log"))
        java = test_services.require_tool("java", "openjdk-17-jre-headless")
        self._base = [
            java,
            *test_services.KAFKA_JVM_OPTS,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{test_services.kafka_libs()}/*",
        ]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        test_services.run_checked(
            [*self._base, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
             "-c", str(properties), "--standalone"],
            "kafka-storage format",
        )  # fmt: skip
        self._properties = properties
        self.service: Any = None

    def start(self) -> None:
        self.service = test_services.spawn(
            "own kafka",
            [*self._base, "kafka.Kafka", str(self._properties)],
            self.dir,
            self.dir / "stdout.log",
            self.dir / "server.log",
        )
        test_services.wait_until(self.service, self._ready, "a live broker")

    def _ready(self) -> bool:
        """A quick probe: the port first (a client started before the broker listens would
        back off for up to 30 s), then one unfenced broker in the metadata."""
        host, port = self.bootstrap.split(":")
        with socket.socket() as probe:
            if probe.connect_ex((host, int(port))) != 0:
                return False
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=3000, bootstrap_timeout_ms=3000
        )
        try:
            brokers = admin.describe_cluster()["brokers"]
            return any(not broker.get("is_fenced", False) for broker in brokers)
        finally:
            admin.close()

    def kill(self) -> None:
        os.killpg(self.service.process.pid, signal.SIGKILL)
        self.service.process.wait()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
