"""Readiness, hot reload of new versions, refusal of corrupt ones, /model and /metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from contracts.model_store import FileModelStore, encode_snapshot
from tests.service.conftest import RELOAD_POLL_S, make_snapshot, wait_until


def top_items(client: TestClient, user: str, k: int = 2) -> tuple[int, list[str]]:
    body = client.get(f"/recommendations/{user}", params={"k": k}).json()
    return body["model_version"], [entry["item_id"] for entry in body["items"]]


def metric(client: TestClient, line_start: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def test_live_always_ready_only_after_a_model(
    client_factory: Callable[[], TestClient], store: FileModelStore
) -> None:
    client = client_factory()
    assert client.get("/health/live").json() == {"status": "ok"}
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["model_version"] is None
    assert response.json()["reasons"][0] == "no model version loaded yet"  # (the log may be read)
    store.publish(make_snapshot())
    wait_until(lambda: client.get("/health/ready").status_code == 200)
    assert client.get("/health/ready").json() == {
        "status": "ready",
        "model_version": 1,
        "seen_caught_up": True,
        "catalogue_loaded": True,
        "reasons": [],
        "seen_records_lost": 0,
    }


def test_new_version_is_swapped_in(ready_client: TestClient, store: FileModelStore) -> None:
    assert top_items(ready_client, "u0") == (1, ["i2", "i3"])
    # Version 2 turns u0 towards the second axis: i1 (1.0), then i3 (1.0 + 0.1 * 1 = 1.1)...
    # u0 = (0.1, 1): i0 0.1, i1 1.0, i2 0.2, i3 1.1, i4 0.5 -> i3 i1.
    store.publish(make_snapshot([[0.1, 1.0], [0.2, 1.0]], meta={"block": 7}))
    wait_until(lambda: top_items(ready_client, "u0")[0] == 2)
    assert top_items(ready_client, "u0") == (2, ["i3", "i1"])
    info = ready_client.get("/model").json()
    assert info["version"] == 2
    assert (info["n_users"], info["n_items"], info["dim"]) == (2, 5, 2)
    assert info["meta"]["block"] == 7
    assert info["meta"]["sha256"]  # the store's metadata is passed through
    assert metric(ready_client, "ccd_model_reloads_total") == 2.0
    assert metric(ready_client, "ccd_model_version") == 2.0


def test_rollback_is_followed(ready_client: TestClient, store: FileModelStore) -> None:
    store.publish(make_snapshot([[0.1, 1.0], [0.2, 1.0]]))
    wait_until(lambda: top_items(ready_client, "u0")[0] == 2)
    store.set_current(1)
    wait_until(lambda: top_items(ready_client, "u0") == (1, ["i2", "i3"]))


def test_corrupt_version_is_refused_and_the_last_good_one_kept(
    ready_client: TestClient, store: FileModelStore
) -> None:
    # Version 2 written by hand with a blob that does not match its checksum, then made current.
    blob, meta = encode_snapshot(make_snapshot([[0.1, 1.0], [0.2, 1.0]], meta={"version": 2}))
    directory = store.root / "v00000002"
    directory.mkdir()
    (directory / "model.npz").write_bytes(blob[:-10] + b"0123456789")
    (directory / "meta.json").write_text(json.dumps(meta))
    store.set_current(2)
    failures = 'ccd_model_reload_failures_total{reason="corrupt"}'
    wait_until(lambda: metric(ready_client, failures) == 1.0)
    time.sleep(5 * RELOAD_POLL_S)  # several polls: the refused version is not retried
    assert metric(ready_client, failures) == 1.0
    assert top_items(ready_client, "u0") == (1, ["i2", "i3"])
    assert ready_client.get("/health/ready").status_code == 200
    assert ready_client.get("/model").json()["version"] == 1
    # A good version 3 is still taken.
    store.publish(make_snapshot([[0.1, 1.0], [0.2, 1.0]]))
    wait_until(lambda: top_items(ready_client, "u0")[0] == 3)
    assert metric(ready_client, failures) == 1.0


def test_metrics_count_requests_and_events(ready_client: TestClient) -> None:
    ready_client.get("/recommendations/u0")
    ready_client.get("/recommendations/nobody")
    ready_client.get("/recommendations/u0", params={"k": 0})
    ready_client.post("/events", json=[{"user_id": "a", "item_id": "x"}] * 3)
    assert metric(ready_client, "ccd_events_accepted_total") == 3.0
    assert metric(ready_client, 'ccd_recommendations_total{strategy="personalized"}') == 1.0
    assert metric(ready_client, 'ccd_recommendations_total{strategy="popular"}') == 1.0
    requests = 'ccd_http_requests_total{method="GET",route="/recommendations/{user_id}"'
    assert metric(ready_client, requests + ',status="200"}') == 2.0
    assert metric(ready_client, requests + ',status="422"}') == 1.0
    text = ready_client.get("/metrics").text
    assert "ccd_http_request_duration_seconds_bucket" in text
    assert metric(ready_client, "ccd_model_version") == 1.0
    wait_until(lambda: metric(ready_client, "ccd_seen_pairs") == 1.0)  # (a, x), deduplicated


def test_openapi_documents_every_endpoint(ready_client: TestClient) -> None:
    paths = ready_client.get("/openapi.json").json()["paths"]
    for path in (
        "/recommendations/{user_id}",
        "/recommendations",
        "/items/{item_id}/similar",
        "/events",
        "/health/live",
        "/health/ready",
        "/model",
    ):
        assert path in paths, path
    k = next(
        p for p in paths["/recommendations/{user_id}"]["get"]["parameters"] if p["name"] == "k"
    )
    assert k["schema"]["maximum"] == 1000
    assert (
        "oneOf" in paths["/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )


def test_every_answer_is_consistent_with_its_version_during_swaps(
    ready_client: TestClient, store: FileModelStore
) -> None:
    """Odd versions rank u0 i2 i3, even ones i3 i1: an answer mixing a version number with the
    other version's ranking would mean a torn swap."""
    expected = {1: ["i2", "i3"], 0: ["i3", "i1"]}
    answers: list[tuple[int, list[str]]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append(top_items(ready_client, "u0"))

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for thread in askers:
        thread.start()
    try:
        for version in range(2, 7):
            users = [[1.0, 0.1], [0.2, 1.0]] if version % 2 else [[0.1, 1.0], [0.2, 1.0]]
            store.publish(make_snapshot(users))
            wait_until(lambda v=version: top_items(ready_client, "u0")[0] == v)
    finally:
        stop.set()
        for thread in askers:
            thread.join()
    assert {version for version, _ in answers} >= {1, 6}
    for version, items in answers:
        assert items == expected[version % 2], (version, items)
