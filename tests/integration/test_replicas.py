"""Three `ccd serve` replicas behind HAProxy on the real Redis and Kafka, as docker-compose.yml runs
them: each new version published to Redis is served by every replica within 1 s, the balancer's
answers are the same whichever replica gives them, and a replica killed with SIGKILL and started
again is back in rotation. HAProxy is Debian's package (installed with apt-get like redis-server
for `make test`), run with docker/haproxy.cfg whose `bind` and `server-template` lines are
replaced by a local port and the three processes. The measured figures are printed (run with
``-s``) and recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contracts.model_store import ModelSnapshot, RedisModelStore
from contracts.settings import Settings
from tests.faults.harness import test_services
from tests.integration.children import CcdChild

pytestmark = pytest.mark.slow

REPLICAS = 3
VERSIONS = 10  # published after the first, one at a time, each awaited on every replica
CONVERGENCE_S = 1.0
N_USERS, N_ITEMS, DIM, K = 50, 300, 8, 10
USERS = [f"user-{n}" for n in range(N_USERS)]
ITEMS = [f"item-{n}" for n in range(N_ITEMS)]
HAPROXY_CONFIG = test_services.REPO_ROOT / "docker" / "haproxy.cfg"


def haproxy_binary() -> str:
    """Debian's haproxy, installed with apt-get when missing (as redis-server is); the test is
    skipped, saying why, only where that is impossible."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found:
        return found
    try:
        return test_services.require_tool("haproxy", "haproxy")
    except test_services.ServiceError as error:
        pytest.skip(f"HAProxy cannot be installed here ({error}): `apt-get install haproxy`")


def local_config(listen_port: int, server_ports: list[int]) -> str:
    """docker/haproxy.cfg for local processes: no Docker DNS, one `server` line per port."""
    text = re.sub(r"\nresolvers docker\n(?:[ \t]+.*\n)+", "\n", HAPROXY_CONFIG.read_text())
    text = re.sub(r"^(\s*)bind :8000$", rf"\1bind 127.0.0.1:{listen_port}", text, flags=re.M)
    servers = "".join(
        f"    server server{n + 1} 127.0.0.1:{port} check\n" for n, port in enumerate(server_ports)
    )
    text, replaced = re.subn(r"^\s*server-template .*\n", servers, text, flags=re.M)
    assert replaced == 1, "docker/haproxy.cfg has no server-template line"
    return text


def make_version(seed: int) -> ModelSnapshot:
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    items = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    popularity = rng.permutation(N_ITEMS).astype(np.float32) + 1
    return ModelSnapshot(USERS, ITEMS, users, items, popularity)


class Replica(CcdChild):
    """One `ccd serve` subprocess on a fixed port (kept across a kill and a restart)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = test_services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            "serve", {**env, "CCD_PORT": str(self.port), "CCD_LOG_LEVEL": "WARNING"}, log_path
        )
        self.model_to_ready = float("nan")  # seconds from loading the model to ready

    def start(self) -> float:
        """Start it; returns the seconds until /health/ready answered 200."""
        started = time.monotonic()
        self.spawn()
        assert self.process is not None
        deadline = started + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited\n{self.log()}"
            if self.ready_version() is not None:
                ready_at = time.time()
                self.model_to_ready = ready_at - self.model_loaded_at()
                return time.monotonic() - started
            time.sleep(0.02)
        pytest.fail(f"{self.name} not ready within 60 s\n{self.log()}")

    def model_loaded_at(self) -> float:
        """When this process loaded its model (epoch seconds, from its /metrics)."""
        metrics = httpx.get(f"{self.url}/metrics", timeout=2.0).text
        found = re.search(
            r"^ccd_model_loaded_timestamp_seconds(?:\{[^}]*\})? (\S+)$", metrics, re.M
        )
        assert found is not None, "no ccd_model_loaded_timestamp_seconds in /metrics"
        return float(found.group(1))

    def ready_version(self) -> int | None:
        try:
            answer = httpx.get(f"{self.url}/health/ready", timeout=1.0)
        except httpx.HTTPError:
            return None
        return answer.json().get("model_version") if answer.status_code == 200 else None


class Balancer:
    """Debian's haproxy in the foreground with the local variant of docker/haproxy.cfg."""

    def __init__(self, binary: str, replicas: list[Replica], work_dir: Path) -> None:
        self.port = test_services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = work_dir / "haproxy.cfg"
        config.write_text(local_config(self.port, [r.port for r in replicas]))
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self._log = work_dir / "haproxy.log"
        with self._log.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=test_services.die_with_parent,
            )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=5.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)


def ranking(answer: httpx.Response) -> tuple[Any, ...]:
    """What must not depend on the replica: version, strategy, items and scores."""
    body = answer.json()
    items = tuple((e["item_id"], round(e["score"], 5)) for e in body["items"])
    return body["model_version"], body["strategy"], items


def await_version(
    replicas: list[Replica], clients: dict[str, httpx.Client], version: int, since: float
) -> list[float]:
    """Seconds from ``since`` until each replica reports ``version`` (each replica polled every
    10 ms from its own thread, over its kept-alive client: making an httpx client costs
    ~0.1-0.4 s on a busy machine, which must not count)."""
    seen: dict[str, float] = {}

    def watch(replica: Replica, client: httpx.Client) -> None:
        deadline = since + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                answer = client.get("/health/ready")
                if answer.status_code == 200 and answer.json()["model_version"] == version:
                    seen[replica.name] = time.monotonic() - since
                    return
            time.sleep(0.01)

    threads = [threading.Thread(target=watch, args=(r, clients[r.name])) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = [r.name for r in replicas if r.name not in seen]
    assert not missing, f"version {version} not served by {missing} within 10 s"
    return [seen[r.name] for r in replicas]


def served_by(balancer: Balancer, requests: int) -> tuple[set[str], set[tuple[Any, ...]], int]:
    """Through the balancer: which replicas answered, the distinct rankings of one user, and
    how many requests failed."""
    names, rankings, failed = set(), set(), 0
    for _ in range(requests):
        try:
            answer = balancer.get(f"/recommendations/{USERS[7]}?k={K}")
        except httpx.HTTPError:
            failed += 1
            continue
        if answer.status_code != 200:
            failed += 1
            continue
        names.add(answer.headers.get("x-served-by", "?"))
        rankings.add(ranking(answer))
    return names, rankings, failed


def test_replicas_behind_haproxy_converge_answer_alike_and_come_back_after_a_kill(
    service_settings: Settings, tmp_path: Path
) -> None:
    binary = haproxy_binary()
    settings = service_settings
    env = {
        "CCD_KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "CCD_KAFKA_TOPIC": settings.kafka_topic,
        "CCD_KAFKA_DEAD_LETTER_TOPIC": settings.kafka_dead_letter_topic,
        "CCD_REDIS_URL": str(settings.redis_url),
        "CCD_REDIS_PREFIX": settings.redis_prefix,
    }
    publisher = RedisModelStore(str(settings.redis_url), settings.redis_prefix, keep_versions=3)
    assert publisher.publish(make_version(1)) == 1
    replicas = [
        Replica(
            f"server{n + 1}",
            {**env, "CCD_DATA_DIR": str(tmp_path / f"r{n}")},
            tmp_path / f"r{n}.log",
        )
        for n in range(REPLICAS)
    ]
    balancer = None
    clients: dict[str, httpx.Client] = {}
    try:
        first_ready = [replica.start() for replica in replicas]
        balancer = Balancer(binary, replicas, tmp_path)
        wait = time.monotonic() + 10
        while served_by(balancer, REPLICAS)[0] != {r.name for r in replicas}:
            assert time.monotonic() < wait, "the balancer did not reach all three replicas"
            time.sleep(0.2)

        # Each new version: every replica serves it within 1 s of the publish call.
        clients = {r.name: httpx.Client(base_url=r.url, timeout=1.0) for r in replicas}
        convergence = []
        for version in range(2, VERSIONS + 2):
            snapshot = make_version(version)
            started = time.monotonic()
            assert publisher.publish(snapshot) == version
            convergence += await_version(replicas, clients, version, started)
            names, rankings, failed = served_by(balancer, 2 * REPLICAS)
            assert failed == 0 and names == {r.name for r in replicas}
            assert len(rankings) == 1 and next(iter(rankings))[0] == version, rankings
            direct = {
                ranking(httpx.get(f"{r.url}/recommendations/{USERS[7]}?k={K}")) for r in replicas
            }
            assert direct == rankings  # the balancer's answer is each replica's answer
        assert max(convergence) < CONVERGENCE_S, convergence

        # SIGKILL one replica: the balancer keeps answering from the two others.
        replicas[0].kill()
        names, rankings, failed = served_by(balancer, 30)
        assert failed == 0 and replicas[0].name not in names and len(rankings) == 1
        restarted_ready = replicas[0].start()
        version = VERSIONS + 2
        snapshot = make_version(version)
        started = time.monotonic()
        assert publisher.publish(snapshot) == version
        after_restart = await_version(replicas, clients, version, started)
        wait = time.monotonic() + 5
        while (answered := served_by(balancer, 2 * REPLICAS))[0] != {r.name for r in replicas}:
            assert time.monotonic() < wait, f"{replicas[0].name} not back in rotation: {answered}"
        assert answered[2] == 0 and len(answered[1]) == 1

        print(
            f"\nreplicas: {REPLICAS}, versions: {VERSIONS}; convergence after a publish: "
            f"p50 {statistics.median(convergence) * 1000:.0f} ms, "
            f"max {max(convergence) * 1000:.0f} ms over {len(convergence)} (replica, version); "
            f"ready after start: {', '.join(f'{s:.2f}' for s in first_ready)} s; "
            f"killed replica ready again {restarted_ready:.2f} s after its restart "
            f"({replicas[0].model_to_ready:.2f} s after it loaded the model); "
            f"next version on all three within {max(after_restart) * 1000:.0f} ms; "
            f"0 failed requests through the balancer during the kill"
        )
    finally:
        for client in clients.values():
            client.close()
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()
        publisher.close()
