"""The dashboard's page, its vendored assets and its JSON endpoints (the browser drives them in
tests/integration/test_dashboard_browser.py)."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from contracts.model_store import FileModelStore
from service.routers.dashboard import STATIC_DIR
from tests.service.conftest import make_snapshot, wait_until

# sha256 of service/static/vendor/chart.umd.min.js: `npm pack chart.js@4.6.1`, unmodified.
CHART_JS_SHA256 = "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2"


def test_page_and_every_asset_it_names_are_served_locally(ready_client: TestClient) -> None:
    page = ready_client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for asset in ("dashboard.js", "dashboard.css", "vendor/chart.umd.min.js"):
        assert f"/dashboard/static/{asset}" in page.text
        assert ready_client.get(f"/dashboard/static/{asset}").status_code == 200
    chart = ready_client.get("/dashboard/static/vendor/chart.umd.min.js").content
    assert hashlib.sha256(chart).hexdigest() == CHART_JS_SHA256
    assert (STATIC_DIR / "vendor" / "chart.js.LICENSE.md").read_text().startswith("The MIT")


def test_overview_has_versions_history_online_and_ops(
    ready_client: TestClient, store: FileModelStore
) -> None:
    store.publish(make_snapshot(meta={"block_index": 1, "prequential": {"recall@20": 0.25}}))
    wait_until(lambda: ready_client.get("/model").json()["version"] == 2)
    ready_client.get("/recommendations/u0")
    body = ready_client.get("/dashboard/api/overview").json()
    assert (body["served_version"], body["current_version"]) == (2, 2)
    assert [v["version"] for v in body["kept"]] == [1, 2]
    assert body["history"][1]["prequential"] == {"recall@20": 0.25}
    assert body["eval_k"] == 20
    routes = {(r["method"], r["route"]): r for r in body["ops"]["latency"]}
    assert routes[("GET", "/recommendations/{user_id}")]["count"] == 1
    assert routes[("GET", "/recommendations/{user_id}")]["p50_ms"] > 0
    assert set(body["online"]) >= {"versions", "arms", "total", "window_s"}


def test_user_lens_ranks_like_the_route_and_records_nothing(ready_client: TestClient) -> None:
    ready_client.post("/events", json={"user_id": "u0", "item_id": "i2"})
    wait_until(lambda: "i2" in ready_client.get("/dashboard/api/users/u0").json()["seen"])
    lens = ready_client.get("/dashboard/api/users/u0", params={"k": 3}).json()
    served = ready_client.get("/recommendations/u0", params={"k": 3}).json()
    assert [r["item_id"] for r in lens["recommendations"]] == ["i3", "i0", "i1"]
    assert [r["item_id"] for r in served["items"]] == ["i3", "i0", "i1"]
    assert (lens["strategy"], lens["seen"], lens["seen_count"]) == ("personalized", ["i2"], 1)
    wait_until(lambda: len(ready_client.get("/dashboard/api/users/u0").json()["impressions"]) == 1)
    (shown,) = ready_client.get("/dashboard/api/users/u0").json()["impressions"]
    assert shown["recommendation_id"] == served["recommendation_id"]  # the lens's own: none
