"""The server never imports torch: serving is numpy, and PyPI's CUDA torch build alone costs ~490 MB
of resident memory per server (issue 15, "a lean server").

Both checks run in fresh processes, as the test process itself has torch loaded by other tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from contracts.model_store import FileModelStore, ModelSnapshot
from contracts.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Measured 73 MiB before data and serving a small model (numpy); 557 MiB when serving imported
# torch. Generous, so that a heavy import (torch's ~490 MB) trips it, not allocator noise.
MAX_SERVER_RSS_MIB = 300
START_TIMEOUT_S = 60.0

# Everything `ccd serve` runs up to `uvicorn.run`, and every serving call a request makes.
_IMPORT_SERVER = """
import sys
import numpy as np
import uvicorn
from threadpoolctl import threadpool_info
import ccd.cli
from contracts.model_store import ModelSnapshot
from contracts.settings import Settings
from service.ranking import ServingModel

served = []
uvicorn.run = lambda app, **options: served.append(app)  # the app is built, not run
sys.argv = ["ccd", "serve", "--data-dir", sys.argv[1]]
ccd.cli.main()
assert served, "ccd serve did not reach uvicorn.run"
blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
assert blas == [1], f"BLAS threads of ccd serve: {blas}"  # (one per core by default)
model = ServingModel.from_snapshot(ModelSnapshot(
    user_ids=["u"], item_ids=["a", "b", "c"],
    user_embeddings=np.ones((1, 2), np.float32), item_embeddings=np.eye(3, 2, dtype=np.float32),
    item_popularity=np.zeros(3, np.float32)))
model.recommend_many(["u", "u"], 2, [["a"], []]), model.similar("a", 2)
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "torch")
assert not loaded, f"serving imported torch: {loaded[:5]}"
"""


def _clean_env() -> dict[str, str]:
    """This environment without CCD_* variables: embedded mode, whatever the suite runs with."""
    return {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}


def test_ccd_serve_pins_blas_and_never_imports_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_SERVER, str(tmp_path)],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except OSError:
        return False


def _wait_for(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(url):
        assert server.poll() is None, "ccd serve exited"
        assert time.monotonic() < deadline, f"{url} did not answer in {START_TIMEOUT_S} s"
        time.sleep(0.05)


def _rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _tiny_model() -> ModelSnapshot:
    rng = np.random.default_rng(0)
    return ModelSnapshot(
        user_ids=["u0", "u1"],
        item_ids=[f"i{i}" for i in range(50)],
        user_embeddings=rng.standard_normal((2, 4)).astype(np.float32),
        item_embeddings=rng.standard_normal((50, 4)).astype(np.float32),
        item_popularity=np.zeros(50, dtype=np.float32),
    )


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_a_running_server_stays_small_and_torch_free(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "ccd.cli", "serve", "--data-dir", str(tmp_path)]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "WARNING"],
        cwd=ROOT,
        env={**_clean_env(), "CCD_RELOAD_POLL_S": "0.1"},
    )
    try:
        _wait_for(f"{base}/health/live", server)
        before_data = _rss_mib(server.pid)
        FileModelStore(Settings(data_dir=tmp_path).model_store_dir).publish(_tiny_model())
        _wait_for(f"{base}/health/ready", server)
        assert _answers(f"{base}/recommendations/u0?k=5")
        assert _answers(f"{base}/items/i3/similar?k=5")
        serving = _rss_mib(server.pid)
        maps = Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"ccd serve RSS: {before_data:.0f} MiB before data, {serving:.0f} MiB serving")
    assert "libtorch" not in maps  # torch's shared libraries are mapped once it is imported
    assert before_data < MAX_SERVER_RSS_MIB and serving < MAX_SERVER_RSS_MIB
