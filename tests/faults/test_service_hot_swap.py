"""Hot swap under load: a real server (``ccd serve``, uvicorn, in a subprocess) answers a load
generator while new versions are published to the real Redis and an admin rolls one back.

Every version ranks every user differently, so each answer can be checked against the exact
ranking (items and scores) of the version it names: an answer mixing two versions, or naming
one version while ranking with another, fails the test; so does any failed request.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contracts.model_store import ModelSnapshot, RedisModelStore
from tests.faults.harness import test_services

pytestmark = pytest.mark.integration

N_USERS, N_ITEMS, DIM, K = 40, 200, 8, 10
USERS = [f"user-{n}" for n in range(N_USERS)]
UNKNOWN_USERS = [f"stranger-{n}" for n in range(5)]
ITEMS = [f"item-{n}" for n in range(N_ITEMS)]
PUBLISHED_VERSIONS = 6
ROLLBACK_TO = 3
LOAD_THREADS = 4
# How long each version stays current under load before the next one comes.
DWELL_S = 0.4
API_KEY = "swap-key"
# Scores within this of each other could be ordered differently by torch and numpy.
MIN_SCORE_GAP = 1e-3


@dataclass(frozen=True)
class Answer:
    started: float
    status: int
    version: int | None
    users: tuple[str, ...]
    rankings: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...]
    batch_versions: tuple[int, ...] = ()
    error: str | None = None


class ServerProcess:
    """``ccd serve`` (uvicorn) in a subprocess on a free port, configured by ``CCD_*`` ``env``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = test_services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CCD_")}
        self._env = {**inherited, **env, "CCD_PORT": str(self.port), "CCD_LOG_LEVEL": "WARNING"}
        self._log_path = log_path
        self._service: Any = None

    def start(self) -> None:
        with self._log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ccd.cli", "serve"],
                cwd=test_services.REPO_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=test_services.die_with_parent,
            )
        self._service = test_services.Service("ccd serve", process, (self._log_path,))
        test_services.wait_until(self._service, self._ready, "a ready server")

    def _ready(self) -> bool:
        return httpx.get(f"{self.url}/health/ready", timeout=2.0).status_code == 200

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()


def make_version(seed: int) -> ModelSnapshot:
    """Random embeddings whose top-(K+1) scores are well apart for every user, and a distinct
    popularity order (for unknown users)."""
    rng = np.random.default_rng(seed)
    while True:
        users = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
        items = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
        top = -np.sort(-(users @ items.T), axis=1)[:, : K + 1]
        if (-np.diff(top, axis=1) > MIN_SCORE_GAP).all():
            break
    popularity = rng.permutation(N_ITEMS).astype(np.float32) + 1
    return ModelSnapshot(USERS, ITEMS, users, items, popularity)


def expected_rankings(snapshot: ModelSnapshot) -> dict[str, tuple[list[str], np.ndarray]]:
    """user -> (top-K item ids, their scores), computed apart from the server's code."""
    scores = snapshot.user_embeddings @ snapshot.item_embeddings.T  # (U, I)
    rankings = {}
    for row, user in enumerate(USERS):
        order = np.argsort(-scores[row])[:K]
        rankings[user] = ([ITEMS[i] for i in order], scores[row, order])
    popular = np.argsort(-snapshot.item_popularity, kind="stable")[:K]
    for user in UNKNOWN_USERS:
        rankings[user] = ([ITEMS[i] for i in popular], snapshot.item_popularity[popular])
    return rankings


def parse(item: dict) -> tuple[tuple[str, ...], tuple[float, ...]]:
    return tuple(e["item_id"] for e in item["items"]), tuple(e["score"] for e in item["items"])


def load_generator(url: str, seed: int, stop: threading.Event, answers: list[Answer]) -> None:
    """Asks for one user (4 in 5 requests) or a batch of three until ``stop``."""
    rng = random.Random(seed)
    params = {"k": K, "exclude_seen": "false"}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        while not stop.is_set():
            users = tuple(rng.sample(USERS + UNKNOWN_USERS, 3 if rng.random() < 0.2 else 1))
            started = time.monotonic()
            try:
                if len(users) == 1:
                    response = client.get(f"/recommendations/{users[0]}", params=params)
                else:
                    body = {"user_ids": list(users), "k": K, "exclude_seen": False}
                    response = client.post("/recommendations", json=body)
            except httpx.HTTPError as error:
                answers.append(Answer(started, -1, None, users, (), error=repr(error)))
                continue
            if response.status_code != 200:
                answers.append(Answer(started, response.status_code, None, users, ()))
                continue
            body = response.json()
            if len(users) == 1:
                answers.append(Answer(started, 200, body["model_version"], users, (parse(body),)))
            else:
                results = body["results"]
                answers.append(
                    Answer(
                        started,
                        200,
                        body["model_version"],
                        tuple(result["user_id"] for result in results),
                        tuple(parse(result) for result in results),
                        tuple(result["model_version"] for result in results),
                    )
                )


def wait_served(client: httpx.Client, version: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/model").json()["version"] != version:
        assert time.monotonic() < deadline, f"version {version} not served in {timeout_s} s"
        time.sleep(0.02)


def test_hot_swaps_under_load_fail_no_request_and_never_mix_versions(
    redis_url: str, unique_name: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    snapshots = {v: make_version(seed=v) for v in range(1, PUBLISHED_VERSIONS + 1)}
    expected = {v: expected_rankings(s) for v, s in snapshots.items()}
    for user in USERS + UNKNOWN_USERS:  # every swap changes every answer: a mix would show
        lists = {tuple(expected[v][user][0]) for v in expected}
        assert len(lists) == PUBLISHED_VERSIONS, user
    publisher = RedisModelStore(redis_url, unique_name, keep_versions=PUBLISHED_VERSIONS)
    assert publisher.publish(snapshots[1]) == 1
    server = ServerProcess(
        {
            "CCD_REDIS_URL": redis_url,
            "CCD_REDIS_PREFIX": unique_name,
            "CCD_DATA_DIR": str(tmp_path / "data"),
            "CCD_RELOAD_POLL_S": "1.0",
            "CCD_API_KEY": API_KEY,
        },
        tmp_path / "server.log",
    )
    server.start()
    answers: list[Answer] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=load_generator, args=(server.url, seed, stop, answers))
        for seed in range(LOAD_THREADS)
    ]
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as control:
            for thread in threads:
                thread.start()
            time.sleep(DWELL_S)
            swaps_started = time.monotonic()
            for version in range(2, PUBLISHED_VERSIONS + 1):
                assert publisher.publish(snapshots[version]) == version
                wait_served(control, version)
                time.sleep(DWELL_S)
            response = control.post(
                "/admin/rollback", json={"version": ROLLBACK_TO}, headers={"X-API-Key": API_KEY}
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"version": ROLLBACK_TO, "previous": PUBLISHED_VERSIONS}
            wait_served(control, ROLLBACK_TO)
            swaps_ended = time.monotonic()
            time.sleep(DWELL_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        server.stop()
        publisher.close()

    failures = [a for a in answers if a.status != 200]
    assert not failures, failures[:5]
    for answer in answers:
        assert answer.version in expected, answer
        assert all(v == answer.version for v in answer.batch_versions), answer
        for user, (items, scores) in zip(answer.users, answer.rankings, strict=True):
            want_items, want_scores = expected[answer.version][user]
            assert list(items) == want_items, (answer.version, user)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    by_version = Counter(answer.version for answer in answers)
    assert set(by_version) == set(expected), by_version
    after_rollback = [a.version for a in answers if a.started > swaps_ended]
    assert after_rollback and set(after_rollback) == {ROLLBACK_TO}
    figures.update(
        requests=len(answers),
        requests_during_swaps=sum(swaps_started <= a.started <= swaps_ended for a in answers),
        swaps=PUBLISHED_VERSIONS,  # 5 publications and 1 rollback
        failed=len(failures),
        mixed_or_wrong=0,  # any would have failed the checks above
        by_version=dict(sorted(by_version.items())),
    )
