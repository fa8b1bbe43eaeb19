"""The whole service on real Kafka and Redis, as real processes: `ccd serve`, `ccd train` and
`ccd produce` run as subprocesses, nothing is mocked or run in-process.

The scenario (``run_scenario``, shared with the embedded-mode test):
1. a backlog of ``BASE + 2 * BLOCK`` synthetic events goes in through `ccd produce FILE`;
2. the trainer closes blocks 0, 1, 2 and publishes versions 1, 2, 3 (read from the store);
3. one more block goes in through ``POST /events`` and becomes version 4;
4. the server answers with version 4: a known user's exact top-k over unseen items (checked
   against the published embeddings), then without an item the user was just posted with
   (``POST /events``) and one appended straight to the event log (the server's stream tailer);
   a never-seen user gets the most popular items (checked against counts of the events).
5. both processes stop cleanly on SIGTERM.

With ``CCD_TEST_E2E_REPORT=1`` (and ``-s``) each test prints what it measured: events per second
through the consumer into closed blocks, seconds per block, and the delay from a version's
publication to the server answering with it. ``CCD_TEST_E2E_SCALE=N`` multiplies the block
sizes and catalogue for a larger measurement run, e.g. (with real Kafka and Redis)::

    CCD_TEST_E2E_REPORT=1 CCD_TEST_E2E_SCALE=10 .venv/bin/python scripts/test_services.py -- \
        tests/integration/test_end_to_end.py tests/integration/test_end_to_end_embedded.py -s
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from contracts.event_log import EventLog, open_event_log
from contracts.events import InteractionEvent
from contracts.model_store import ModelSnapshot, ModelStore, open_model_store
from contracts.settings import Settings
from trainer.producer import write_jsonl
from trainer.synthetic import SyntheticStream

REPO = Path(__file__).resolve().parents[2]
REPORT_ENV = "CCD_TEST_E2E_REPORT"  # CCD_TEST_*: conftest drops every other CCD_* variable
SCALE = int(os.environ.get("CCD_TEST_E2E_SCALE", "1"))
WAIT_S = 90.0 * SCALE  # deadline of each wait; generous for a busy 2-core machine
STOP_S = 20.0  # SIGTERM, then this long before SIGKILL
WATCH_INTERVAL_S = 0.025  # how often the version watcher asks GET /model
K = 10

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """Block sizes and the synthetic catalogue of one scenario."""

    base_block: int
    block: int
    users: int
    items: int

    @property
    def backlog(self) -> int:
        """Events sent before the trainer runs: blocks 0, 1 and 2."""
        return self.base_block + 2 * self.block

    @property
    def total(self) -> int:
        """Backlog plus block 3, which goes through ``POST /events``."""
        return self.backlog + self.block


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ccd_environment(settings: dict[str, Any]) -> dict[str, str]:
    """This process's environment without any ``CCD_*`` variable, plus ``settings`` as them."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    env.update({f"CCD_{name.upper()}": str(value) for name, value in settings.items()})
    env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    return env


@dataclass
class CcdProcess:
    """One `ccd` subprocess with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the log, without the access-log lines of the version watcher."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        kept = [line for line in text.splitlines() if '"GET /model ' not in line]
        return f"--- {self.name} ({self.log_path}):\n" + "\n".join(kept[-lines:])

    def stop(self) -> int:
        """SIGTERM (a graceful stop), SIGKILL if that takes longer than ``STOP_S``."""
        if not self.exited():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Launcher:
    """Starts `ccd` subprocesses; ``stop_all`` (the fixture's finalizer) ends every one."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[CcdProcess] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> CcdProcess:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log_file:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                [sys.executable, "-m", "ccd", *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        process = CcdProcess(name, popen, log_path)
        self.processes.append(process)
        return process

    def tails(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    yield started
    started.stop_all()


def wait_for(
    what: str,
    condition: Callable[[], T | None],
    launcher: Launcher,
    timeout_s: float = WAIT_S,
    explain: Callable[[], str | None] = lambda: None,
) -> T:
    """Polls ``condition`` until it returns a truthy value; fails early if a long-running
    process died, and at the deadline, with ``explain()`` and the processes' logs."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        dead = [p for p in launcher.processes if p.exited() and p.name != "produce"]
        if dead:
            pytest.fail(
                f"{dead[0].name} exited ({dead[0].popen.returncode}) while waiting for {what}"
                f"\n{launcher.tails()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s: {explain()}\n{launcher.tails()}")
        time.sleep(0.1)


# --- the server, seen from outside -------------------------------------------------------------


@dataclass
class VersionWatcher:
    """Asks ``GET /model`` every ``WATCH_INTERVAL_S`` from a thread and records, per version,
    when the server first answered with it and the ``loaded_at`` it reported."""

    base_url: str
    first_answer: dict[int, float] = field(default_factory=dict)
    loaded_at: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> VersionWatcher:
        self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.get("/model")
                except httpx.TransportError:
                    response = None  # not listening yet
                answered = time.time()
                if response is not None and response.status_code == 200:
                    body = response.json()
                    self.first_answer.setdefault(body["version"], answered)
                    self.loaded_at.setdefault(body["version"], body["loaded_at"])
                self._stop.wait(WATCH_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def get_json(client: httpx.Client, path: str, **params: Any) -> dict[str, Any] | None:
    """The JSON of a 200 answer, or None (not listening yet, or not ready)."""
    try:
        response = client.get(path, params=params)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def recommend(client: httpx.Client, user_id: str, k: int = K) -> dict[str, Any]:
    response = client.get(f"/recommendations/{user_id}", params={"k": k})
    assert response.status_code == 200, response.text
    return response.json()


# --- expected answers, worked out from the events and the published embeddings ---------------


def synthetic_events(sizes: Sizes, seed: int) -> list[InteractionEvent]:
    stream = SyntheticStream(
        n_users=sizes.users, n_items=sizes.items, seed=seed, n_events=sizes.total
    )
    return list(stream)


def items_by_user(events: list[InteractionEvent]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for event in events:
        seen.setdefault(event.user_id, set()).add(event.item_id)
    return seen


def top_k_problem(
    answer: dict[str, Any], expected_scores: dict[str, float], excluded: set[str], k: int
) -> str | None:
    """Why ``answer`` is not a correct top-``k`` of ``expected_scores`` without ``excluded``
    (None if it is). Ties at the cut-off may go either way; scores agree to float32 precision."""
    items = [entry["item_id"] for entry in answer["items"]]
    scores = [entry["score"] for entry in answer["items"]]
    candidates = {item: s for item, s in expected_scores.items() if item not in excluded}
    if len(items) != min(k, len(candidates)):
        return f"{len(items)} items, expected {min(k, len(candidates))}"
    if shown := set(items) & excluded:
        return f"excluded items recommended: {sorted(shown)}"
    for item, score in zip(items, scores, strict=True):
        if not np.isclose(score, candidates[item], rtol=1e-4, atol=1e-5):
            return f"{item} scored {score}, expected {candidates[item]}"
    if scores != sorted(scores, reverse=True):
        return f"scores not in decreasing order: {scores}"
    left_out = [s for item, s in candidates.items() if item not in set(items)]
    if left_out and max(left_out) > min(scores) + 1e-5:
        return f"an item scoring {max(left_out)} was left out for one scoring {min(scores)}"
    return None


def embedding_scores(snapshot: ModelSnapshot, user_id: str) -> dict[str, float]:
    """The user's dot-product score of every item in ``snapshot``."""
    row = snapshot.user_ids.index(user_id)
    scores = snapshot.item_embeddings.astype(np.float64) @ snapshot.user_embeddings[row]
    return dict(zip(snapshot.item_ids, scores.tolist(), strict=True))


def wait_for_answer(
    what: str,
    client: httpx.Client,
    user_id: str,
    problem: Callable[[dict[str, Any]], str | None],
    launcher: Launcher,
) -> dict[str, Any]:
    """The first recommendation for ``user_id`` with no ``problem`` (the stream tailer may still
    be reading the newest events); fails with the last problem at the deadline."""
    last: list[str | None] = [None]

    def correct() -> dict[str, Any] | None:
        answer = recommend(client, user_id)
        last[0] = problem(answer)
        return answer if last[0] is None else None

    return wait_for(what, correct, launcher, timeout_s=30.0, explain=lambda: last[0])


# --- the scenario -------------------------------------------------------------------------------


def run_scenario(
    launcher: Launcher, settings: dict[str, Any], sizes: Sizes, tmp_path: Path
) -> dict[str, Any]:
    """Runs the module docstring's scenario on the backends ``settings`` name (a dict of
    ``Settings`` fields, passed to the processes as ``CCD_*`` variables); returns what it
    measured."""
    port = free_port()
    settings = {
        **settings,
        "base_block_size": sizes.base_block,
        "block_size": sizes.block,
        "block_interval_s": 3600.0,  # blocks close by count only: their contents are known
        "torch_threads": 1,
        "port": port,
    }
    env = ccd_environment(settings)
    config = Settings(**settings)
    events = synthetic_events(sizes, seed=7)
    events_file = tmp_path / "events.jsonl"
    write_jsonl(events_file, events[: sizes.backlog])
    base_url = f"http://127.0.0.1:{port}"

    server = launcher.start("serve", ["serve"], env)
    produce = launcher.start("produce", ["produce", str(events_file)], env)
    trainer = launcher.start("train", ["train"], env)
    watcher = VersionWatcher(base_url).start()
    store = open_model_store(config)
    event_log = open_event_log(config)
    try:
        assert produce.popen.wait(WAIT_S) == 0, produce.tail()
        produced_at = time.time()
        wait_for("version 3 in the store", lambda: (store.current_version() or 0) >= 3, launcher)
        assert store.versions() == [1, 2, 3]
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            numbers = _serve_and_check(client, launcher, store, event_log, events, sizes)
            numbers["produced_at"] = produced_at
        watcher.stop()
        # uvicorn re-raises the SIGTERM it handled once shut down: -SIGTERM after a clean stop.
        assert server.stop() in (0, -signal.SIGTERM), server.tail()
        assert "Application shutdown complete" in server.log_path.read_text(), server.tail()
        assert trainer.stop() == 0, trainer.tail()
    finally:
        watcher.stop()
        event_log.close()
        store.close()
    return summarize(numbers, watcher, sizes)


def _serve_and_check(
    client: httpx.Client,
    launcher: Launcher,
    store: ModelStore,
    event_log: EventLog,
    events: list[InteractionEvent],
    sizes: Sizes,
) -> dict[str, Any]:
    """Steps 3 and 4 of the scenario, once versions 1..3 are in the store."""
    # Block 3 through the server's POST /events, in a few batches.
    batches = [events[start : start + 250] for start in range(sizes.backlog, sizes.total, 250)]
    posted_from = time.perf_counter()
    for batch in batches:
        body = [event.model_dump(exclude_none=True) for event in batch]
        response = client.post("/events", json=body)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": len(batch)}
    post_seconds = time.perf_counter() - posted_from
    wait_for("version 4 in the store", lambda: store.current_version() == 4, launcher)
    assert store.versions() == [1, 2, 3, 4]
    metas = [store.load(version).meta for version in (1, 2, 3, 4)]
    assert [meta["block_index"] for meta in metas] == [0, 1, 2, 3]
    assert [meta["events"] for meta in metas] == [sizes.base_block, *[sizes.block] * 3]
    assert metas[0]["prequential"] == {} and metas[3]["prequential"]["users"] > 0

    wait_for(
        "the server to be ready on version 4",
        lambda: (body := get_json(client, "/health/ready")) and body["model_version"] == 4,
        launcher,
    )
    snapshot = store.load(4)
    _check_popular(client, snapshot, events)
    _check_known_user(client, launcher, snapshot, event_log, events)
    return {"metas": metas, "post_seconds": post_seconds, "posted": sizes.block}


def _check_popular(
    client: httpx.Client, snapshot: ModelSnapshot, events: list[InteractionEvent]
) -> None:
    """A never-seen user gets the items most often interacted with in blocks 0..3."""
    counts = Counter(event.item_id for event in events)  # every event is in a closed block
    popularity = dict(zip(snapshot.item_ids, snapshot.item_popularity.tolist(), strict=True))
    assert popularity == {item: float(count) for item, count in counts.items()}
    answer = recommend(client, "never-seen-user")
    assert (answer["strategy"], answer["model_version"]) == ("popular", 4)
    problem = top_k_problem(answer, {i: float(c) for i, c in counts.items()}, set(), K)
    assert problem is None, problem


def _check_known_user(
    client: httpx.Client,
    launcher: Launcher,
    snapshot: ModelSnapshot,
    event_log: EventLog,
    events: list[InteractionEvent],
) -> None:
    """The exact top-k of an active user over the items they have not interacted with, then
    without the item of a fresh event: one posted to the server (excluded at once) and one
    appended to the event log behind the server's back (excluded once the tailer reads it)."""
    seen = items_by_user(events)
    # The most active user with K + 2 unseen items left, so that both exclusions show.
    candidates = [u for u in seen if len(seen[u]) + K + 2 <= len(snapshot.item_ids)]
    user = max(candidates, key=lambda u: (len(seen[u]), u))
    assert user in snapshot.user_ids
    scores = embedding_scores(snapshot, user)
    excluded = set(seen[user])
    before = wait_for_answer(
        "the known user's top-k without their items",
        client,
        user,
        lambda answer: top_k_problem(answer, scores, excluded, K),
        launcher,
    )
    assert (before["strategy"], before["model_version"]) == ("personalized", 4)

    posted_item = before["items"][0]["item_id"]
    response = client.post("/events", json={"user_id": user, "item_id": posted_item})
    assert (response.status_code, response.json()) == (202, {"accepted": 1})
    after_post = recommend(client, user)
    assert [entry["item_id"] for entry in after_post["items"][: K - 1]] == [
        entry["item_id"] for entry in before["items"][1:]
    ]
    excluded.add(posted_item)
    assert top_k_problem(after_post, scores, excluded, K) is None

    logged_item = after_post["items"][0]["item_id"]
    event_log.append([InteractionEvent(user_id=user, item_id=logged_item)])
    excluded.add(logged_item)
    after_log = wait_for_answer(
        "the item appended to the event log to be excluded",
        client,
        user,
        lambda answer: top_k_problem(answer, scores, excluded, K),
        launcher,
    )
    assert after_log["model_version"] == 4
    assert after_log["items"][0]["item_id"] == after_post["items"][1]["item_id"]


# --- measurements -------------------------------------------------------------------------------


def summarize(numbers: dict[str, Any], watcher: VersionWatcher, sizes: Sizes) -> dict[str, Any]:
    """Per block: training seconds (stage_seconds) and, for blocks read from a backlog that was
    complete before the previous block closed, the consumer's events per second: the block's
    events over the time between the previous version's ``trained_at`` and this block's close
    (its ``trained_at`` less its evaluate and learn seconds), which also holds the previous
    block's publish, checkpoint and commit. Per version: ``trained_at`` (just before the store
    write) to the server's swap (``loaded_at``) and to the watcher's first answer with it."""
    metas = numbers["metas"]
    blocks = []
    for index, meta in enumerate(metas):
        stages = meta["stage_seconds"]
        row = {
            "block": meta["block_index"],
            "events": meta["events"],
            "evaluate_s": stages.get("evaluate", 0.0),
            "learn_s": stages["learn"],
            "consumer_events_per_s": None,
        }
        previous = metas[index - 1]
        # Blocks 1 and 2 come from the backlog if it was complete before block 0 or 1 closed.
        if 0 < index < 3 and previous["trained_at"] > numbers["produced_at"]:
            closed_at = meta["trained_at"] - stages["learn"] - stages.get("evaluate", 0.0)
            row["consumer_events_per_s"] = meta["events"] / (closed_at - previous["trained_at"])
        blocks.append(row)
    versions = []
    for meta in metas:
        version = meta["version"]
        row = {"version": version}
        if version in watcher.loaded_at:
            row["to_swap_s"] = watcher.loaded_at[version] - meta["trained_at"]
            row["to_answer_s"] = watcher.first_answer[version] - meta["trained_at"]
        versions.append(row)
    return {
        "sizes": sizes,
        "learner": metas[-1]["learner"],
        "blocks": blocks,
        "versions": versions,
        "post_events_per_s": numbers["posted"] / numbers["post_seconds"],
    }


def report(title: str, numbers: dict[str, Any]) -> None:
    """Prints ``numbers`` when ``CCD_TEST_E2E_REPORT=1`` (run pytest with ``-s`` to see it)."""
    if os.environ.get(REPORT_ENV) != "1":
        return
    sizes = numbers["sizes"]
    lines = [
        f"\n== {title}: learner {numbers['learner']}, base block {sizes.base_block}, "
        f"blocks of {sizes.block}, {sizes.users} users / {sizes.items} items at the start",
        f"POST /events into the log: {numbers['post_events_per_s']:.0f} events/s",
    ]
    for row in numbers["blocks"]:
        rate = row["consumer_events_per_s"]
        shown = f"{rate:.0f} events/s" if rate else "n/a (not from a backlog)"
        lines.append(
            f"block {row['block']}: {row['events']} events, evaluate {row['evaluate_s']:.3f} s, "
            f"learn {row['learn_s']:.3f} s; consumer {shown}"
        )
    for row in numbers["versions"]:
        if "to_swap_s" in row:
            lines.append(
                f"version {row['version']}: trained -> server swapped {row['to_swap_s']:.3f} s, "
                f"-> first answer {row['to_answer_s']:.3f} s"
            )
        else:
            lines.append(f"version {row['version']}: superseded before the server loaded it")
    print("\n".join(lines), flush=True)


# --- the test ----------------------------------------------------------------------------------

KAFKA_SIZES = Sizes(
    base_block=1000 * SCALE, block=500 * SCALE, users=150 * SCALE, items=100 * SCALE
)


@pytest.mark.parametrize("learner", ["ccd", "bpr", "als"])
def test_kafka_redis_events_to_blocks_to_versions_to_answers(
    learner: str, service_settings: Settings, launcher: Launcher, tmp_path: Path
) -> None:
    settings = {
        "kafka_bootstrap_servers": service_settings.kafka_bootstrap_servers,
        "kafka_topic": service_settings.kafka_topic,
        "kafka_dead_letter_topic": service_settings.kafka_dead_letter_topic,
        "kafka_group_id": service_settings.kafka_group_id,
        "redis_url": service_settings.redis_url,
        "redis_prefix": service_settings.redis_prefix,
        "data_dir": service_settings.data_dir,  # the trainer's checkpoints
        "learner": learner,
    }
    numbers = run_scenario(launcher, settings, KAFKA_SIZES, tmp_path)
    assert numbers["learner"] == learner  # no silent fallback from ccd to bpr
    # Everything went through Kafka and Redis: nothing embedded was created.
    assert not (
        service_settings.event_log_path.exists() or service_settings.model_store_dir.exists()
    )
    report(f"Kafka + Redis ({learner})", numbers)
