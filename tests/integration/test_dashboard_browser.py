"""The operator dashboard in a real browser: Debian's Chromium driven by Playwright.

`ccd train` learns four versions from a synthetic backlog (`ccd produce`), `ccd serve` serves
them (embedded mode: one data directory); a few users get recommendations and answer some of
them with events that carry the recommendation_id. Then the page must show: the per-block
prequential chart with a point per evaluated block, the online hit-rate chart with data, the
ingest chart; the user lens must list a real user's recommendations exactly as
`GET /recommendations` ranks them; a rollback click (with the API key) must change the version
the server answers with.

Chromium: ``CCD_TEST_CHROMIUM`` (set by `make test`, which installs Debian's ``chromium`` with
apt-get when missing) or ``chromium`` on the PATH; skipped, saying so, without one. Playwright's
own browser download is not used. ``CCD_TEST_DASHBOARD_SCREENSHOT=PATH`` also saves the page's
screenshot there (docs/img/dashboard.png was made so).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from contracts.model_store import open_model_store
from contracts.settings import Settings
from tests.integration.test_end_to_end import (
    Launcher,
    Sizes,
    ccd_environment,
    free_port,
    synthetic_events,
    wait_for,
)
from trainer.producer import write_jsonl

SIZES = Sizes(base_block=800, block=400, users=120, items=90)
VERSIONS = 4  # blocks 0..3: versions 2..4 carry prequential metrics of the block before them
API_KEY = "dashboard-test-key"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 30_000


def chromium_path() -> str:
    path = os.environ.get("CCD_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.skip(
            "no Chromium: `make test` installs Debian's chromium with apt-get; here it is "
            "neither installed nor named by CCD_TEST_CHROMIUM"
        )
    return path


@pytest.fixture
def launcher(tmp_path: Path):
    started = Launcher(tmp_path)
    yield started
    started.stop_all()


def _train_and_serve(launcher: Launcher, data_dir: Path, tmp_path: Path) -> str:
    """Four versions in the store, trainer stopped, server answering with version 4."""
    port = free_port()
    settings = {
        "data_dir": data_dir,
        "learner": "als",
        "base_block_size": SIZES.base_block,
        "block_size": SIZES.block,
        "block_interval_s": 3600.0,
        "torch_threads": 1,
        "port": port,
        "api_key": API_KEY,
        "reload_poll_s": 0.5,
    }
    env = ccd_environment(settings)
    events_file = tmp_path / "events.jsonl"
    write_jsonl(events_file, synthetic_events(SIZES, seed=3)[: SIZES.base_block + 3 * SIZES.block])
    server = launcher.start("serve", ["serve"], env)
    trainer = launcher.start("train", ["train"], env)
    assert launcher.start("produce", ["produce", str(events_file)], env).popen.wait(90) == 0
    store = open_model_store(Settings(**settings))
    try:
        wait_for("four versions", lambda: (store.current_version() or 0) >= VERSIONS, launcher)
    finally:
        store.close()
    assert trainer.stop() == 0, trainer.tail()
    launcher.processes.remove(trainer)  # stopped on purpose: wait_for must not fail on it
    base_url = f"http://127.0.0.1:{port}"

    def serving_last() -> bool:
        try:
            return httpx.get(f"{base_url}/model", timeout=5).json().get("version") == VERSIONS
        except (httpx.HTTPError, ValueError):
            return False

    wait_for("the server on version 4", serving_last, launcher)
    assert not server.exited()
    return base_url


def _answer_some_recommendations(client: httpx.Client, users: list[str]) -> None:
    """Each user gets a list; every other one answers with its first item and the id."""
    for n, user in enumerate(users):
        answer = client.get(f"/recommendations/{user}", params={"k": 5}).json()
        if n % 2 == 0:
            event = {
                "user_id": user,
                "item_id": answer["items"][0]["item_id"],
                "recommendation_id": answer["recommendation_id"],
            }
            assert client.post("/events", json=event).status_code == 202
    deadline = time.monotonic() + 30
    while client.get("/stats/online").json()["total"]["hit_impressions"] < len(users) // 2:
        assert time.monotonic() < deadline, client.get("/stats/online").json()
        time.sleep(0.2)


class EventTrickle(threading.Thread):
    """Posts a few events every 0.2 s while the page is open (the ingest chart's data)."""

    def __init__(self, base_url: str, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.base_url, self.users = base_url, users
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            n = 0
            while not self.stopped.wait(0.2):
                batch = [
                    {"user_id": self.users[(n + j) % len(self.users)], "item_id": f"i{n % 90}"}
                    for j in range(5)
                ]
                client.post("/events", json=batch)
                n += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def _chart_points(page, canvas_id: str) -> list[int]:
    return page.evaluate(
        "(id) => Chart.getChart(id).data.datasets.map((d) => d.data.length)", canvas_id
    )


def _painted_pixels(page, canvas_id: str) -> int:
    """Pixels of the canvas that are not transparent: a drawn chart has thousands."""
    return page.evaluate(
        """(id) => {
            const canvas = document.getElementById(id);
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }""",
        canvas_id,
    )


@pytest.mark.slow
def test_dashboard_in_chromium(launcher: Launcher, data_dir: Path, tmp_path: Path) -> None:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    base_url = _train_and_serve(launcher, data_dir, tmp_path)
    users = [f"u{n}" for n in range(12)]
    with httpx.Client(base_url=base_url, timeout=10) as client:
        _answer_some_recommendations(client, users)
        trickle = EventTrickle(base_url, [f"u{n}" for n in range(60, 72)])  # other users
        trickle.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(f"{base_url}/dashboard?refresh_ms=500")
                _check_charts(page)
                _check_user_lens(page, client, users[0])
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                if target := os.environ.get("CCD_TEST_DASHBOARD_SCREENSHOT"):
                    shutil.copy(tmp_path / "dashboard.png", target)
                _check_rollback(page, client, users[1])
                assert not errors, errors
            finally:
                browser.close()
                trickle.stop()


def _check_charts(page) -> None:
    page.wait_for_function(
        "() => Chart.getChart('quality-chart').data.datasets[0].data.length >= 3", timeout=WAIT_MS
    )
    assert _chart_points(page, "quality-chart") == [VERSIONS - 1] * 2  # blocks 1..3
    recall = page.evaluate("() => Chart.getChart('quality-chart').data.datasets[0].data")
    assert all(0 <= value <= 1 for value in recall) and max(recall) > 0
    page.wait_for_function(
        "() => Chart.getChart('online-chart').data.datasets[0].data.some((v) => v > 0)",
        timeout=WAIT_MS,
    )
    page.wait_for_function(  # the trickle's events, accepted here and read back from the log
        "() => Chart.getChart('ingest-chart')"
        ".data.datasets.every((d) => d.data.some((v) => v > 0))",
        timeout=WAIT_MS,
    )
    for canvas in ("quality-chart", "online-chart", "ingest-chart"):
        assert _painted_pixels(page, canvas) > 2000, canvas
    assert page.text_content("#served-version") == str(VERSIONS)
    assert page.locator("#versions-table tbody tr").count() == VERSIONS
    assert "/recommendations/{user_id}" in page.text_content("#latency-table")


def _check_user_lens(page, client: httpx.Client, user: str) -> None:
    page.fill("#lens-user", user)
    page.click("#lens-form button")
    page.wait_for_selector("#lens-recs li", timeout=WAIT_MS)
    shown = page.eval_on_selector_all(
        "#lens-recs li", "(items) => items.map((li) => li.dataset.item)"
    )
    served = client.get(f"/recommendations/{user}", params={"k": 10}).json()
    assert served["strategy"] == "personalized"
    assert shown == [item["item_id"] for item in served["items"]]
    assert page.locator("#lens-seen li").count() > 0  # the user's events from the stream
    assert page.locator("#lens-impressions .hit").count() >= 1  # the answered impression


def _check_rollback(page, client: httpx.Client, user: str) -> None:
    page.fill("#api-key", API_KEY)
    page.click("#versions-table tbody tr[data-version='2'] button")
    page.wait_for_function(
        "() => document.getElementById('served-version').textContent === '2'", timeout=WAIT_MS
    )
    assert "served v2" in page.text_content("#rollback-status")
    assert client.get("/model").json()["version"] == 2
    assert client.get(f"/recommendations/{user}").json()["model_version"] == 2
