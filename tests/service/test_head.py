"""HEAD on every GET route answers like GET, without a body (it was a 405), through a real
`ccd serve` (uvicorn frames a HEAD answer itself) with the fast lane in front."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from contracts.model_store import FileModelStore
from contracts.settings import Settings
from tests.service.conftest import make_snapshot, wait_until
from tests.service.test_lean_server import ROOT, START_TIMEOUT_S, _free_port

# Answers that do not change between two requests: GET's headers must be HEAD's.
STABLE_PATHS = [
    "/health/live",
    "/health/ready",
    "/model",
    "/recommendations/u0?k=3",  # the fast lane's request
    "/recommendations/nobody",
    "/recommendations/u0?k=0",  # an invalid one: FastAPI's 422
    "/items/i3/similar?k=2",
    "/items/unknown/similar",  # 404
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `ccd serve` serving ``make_snapshot()`` from an embedded store."""
    data_dir = tmp_path_factory.mktemp("head")
    FileModelStore(Settings(data_dir=data_dir).model_store_dir).publish(make_snapshot())
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    command = [sys.executable, "-m", "ccd", "serve", "--data-dir", str(data_dir)]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "WARNING"], cwd=ROOT, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base, server), timeout_s=START_TIMEOUT_S)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def _ready(base: str, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, "ccd serve exited"
    try:
        return httpx.get(f"{base}/health/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("path", STABLE_PATHS)
def test_head_answers_like_get_without_a_body(base_url: str, path: str) -> None:
    got, head = httpx.get(base_url + path), httpx.head(base_url + path)
    assert head.status_code == got.status_code != 405
    assert head.content == b""
    without_date = [(k, v) for k, v in got.headers.multi_items() if k != "date"]
    assert [(k, v) for k, v in head.headers.multi_items() if k != "date"] == without_date


def test_head_of_metrics(base_url: str) -> None:
    """/metrics changes with every request; status and type are GET's, and no body."""
    head = httpx.head(f"{base_url}/metrics")
    assert head.status_code == 200
    assert head.headers["content-type"] == httpx.get(f"{base_url}/metrics").headers["content-type"]
    assert head.content == b""


def test_head_of_a_post_only_route_is_still_405(base_url: str) -> None:
    assert httpx.head(f"{base_url}/events").status_code == 405
