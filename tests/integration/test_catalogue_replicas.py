"""The item catalogue on the real Redis, across server processes: a write made through one server
is in force on a second `ccd serve` process within 1 s, and a restarted server still has it.

Server A runs in this process (TestClient over the real app); server B is a real `ccd serve`
subprocess on the same Kafka topic and Redis prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from contracts.model_store import RedisModelStore
from contracts.settings import Settings
from scripts.test_services import free_port
from service.app import create_app
from tests.service.conftest import make_snapshot, wait_until

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
PROPAGATION_S = 1.0


class ServerProcess:
    """`ccd serve` on a free port with ``settings`` as its environment."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        names = ["kafka_bootstrap_servers", "kafka_topic", "redis_url", "redis_prefix"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CCD_")}
        self.env.update({f"CCD_{name.upper()}": str(getattr(settings, name)) for name in names})
        self.env.update(
            CCD_PORT=str(self.port),
            CCD_DATA_DIR=str(settings.data_dir / "server-b"),
            CCD_CATALOGUE_POLL_S=str(settings.catalogue_poll_s),
            OMP_NUM_THREADS="1",
        )
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "ccd", "serve"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, START_TIMEOUT_S)

    def _ready(self) -> bool:
        assert self.popen is not None and self.popen.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, **params: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=5)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(15)


@pytest.fixture
def settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"reload_poll_s": 1.0})


@pytest.fixture
def server_b(settings: Settings, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(settings, tmp_path / "server-b.log")
    yield server
    server.stop()


def seconds_until(condition, timeout_s: float = 10.0) -> float:
    """Seconds until ``condition()`` holds (polled every 10 ms); fails after ``timeout_s``."""
    start = time.monotonic()
    wait_until(condition, timeout_s)
    return time.monotonic() - start


def test_a_second_server_sees_writes_within_a_second_and_a_restart_keeps_them(
    settings: Settings, server_b: ServerProcess
) -> None:
    store = RedisModelStore(settings.redis_url, settings.redis_prefix)
    store.publish(make_snapshot())
    try:
        with TestClient(create_app(settings)) as server_a:
            # An event creates the topic (both servers tail it) and makes "fresh" known.
            assert (
                server_a.post("/events", json={"user_id": "u9", "item_id": "fresh"}).status_code
                == 202
            )
            wait_until(lambda: server_a.get("/health/ready").status_code == 200, START_TIMEOUT_S)
            server_b.start()
            assert server_b.get("/items/fresh").json()["categories"] == []

            body = {"categories": ["shoes"], "labels": {"color": "red"}}
            assert server_a.put("/items/i3", json=body).status_code == 200
            took = seconds_until(
                lambda: server_b.get("/items/i3").json()["categories"] == ["shoes"]
            )
            assert took < PROPAGATION_S
            top = server_b.get("/recommendations/u1", k=5, categories="shoes")
            assert [item["item_id"] for item in top.json()["items"]] == ["i3"]

            # u1's order is i3 i1 i4 i2 i0: hiding i3 on A removes it from B's answers.
            assert server_a.delete("/items/i3").status_code == 200
            first = lambda: server_b.get("/recommendations/u1", k=1).json()["items"][0]["item_id"]  # noqa: E731
            took = seconds_until(lambda: first() == "i1")
            assert took < PROPAGATION_S

            server_b.stop()
            server_b.start()
            restarted = server_b.get("/items/i3").json()
            assert restarted["categories"] == ["shoes"] and restarted["available"] is False
            assert first() == "i1"
    finally:
        store.close()
