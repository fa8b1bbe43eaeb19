"""/admin: API-key protection (401 without the key, disabled without a configured key) and
rollback to a kept version over the real embedded model store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from contracts.event_log import SqliteEventLog
from contracts.model_store import FileModelStore, encode_snapshot
from contracts.settings import Settings
from service.app import create_app
from tests.service.conftest import make_snapshot, wait_until

KEY = "s3cret-key"
# Version 2 ranks u0 i3 i1 (see make_snapshot), versions 1 and 3 rank it i2 i3.
U0_SECOND_AXIS = [[0.1, 1.0], [0.2, 1.0]]


@pytest.fixture
def app_with_key(
    settings: Settings, store: FileModelStore, event_log: SqliteEventLog
) -> Iterator[Callable[[str | None], TestClient]]:
    """Starts an app whose settings carry ``api_key`` (None = not configured)."""
    clients: list[TestClient] = []

    def start(api_key: str | None) -> TestClient:
        configured = settings.model_copy(
            update={"api_key": None if api_key is None else SecretStr(api_key)}
        )
        client = TestClient(create_app(configured, store=store, event_log=event_log))
        client.__enter__()
        clients.append(client)
        wait_until(lambda: client.get("/health/ready").status_code == 200)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def three_versions(store: FileModelStore) -> FileModelStore:
    store.publish(make_snapshot())
    store.publish(make_snapshot(U0_SECOND_AXIS))
    store.publish(make_snapshot())
    return store


def served(client: TestClient) -> tuple[int, list[str]]:
    body = client.get("/recommendations/u0", params={"k": 2}).json()
    return body["model_version"], [entry["item_id"] for entry in body["items"]]


@pytest.mark.parametrize("configured", [None, ""])
def test_admin_is_disabled_without_a_configured_key(
    app_with_key: Callable[[str | None], TestClient],
    three_versions: FileModelStore,
    configured: str | None,
) -> None:
    client = app_with_key(configured)
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": KEY}):
        response = client.get("/admin/versions", headers=headers)
        assert response.status_code == 403
        assert "CCD_API_KEY" in response.json()["detail"]
        response = client.post("/admin/rollback", json={"version": 1}, headers=headers)
        assert response.status_code == 403
    assert three_versions.current_version() == 3
    assert served(client)[0] == 3


def test_missing_or_wrong_key_is_401_and_changes_nothing(
    app_with_key: Callable[[str | None], TestClient], three_versions: FileModelStore
) -> None:
    client = app_with_key(KEY)
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "x"}):
        response = client.post("/admin/rollback", json={"version": 1}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "X-API-Key"
        assert client.get("/admin/versions", headers=headers).status_code == 401
    # Auth comes before validation: a bad body without the key is 401, not 422.
    assert client.post("/admin/rollback", json={"version": "x"}).status_code == 401
    assert three_versions.current_version() == 3
    assert served(client) == (3, ["i2", "i3"])


def test_versions_and_rollback_with_the_key(
    app_with_key: Callable[[str | None], TestClient], three_versions: FileModelStore
) -> None:
    client = app_with_key(KEY)
    headers = {"X-API-Key": KEY}
    assert client.get("/admin/versions", headers=headers).json() == {
        "versions": [1, 2, 3],
        "current": 3,
        "served": 3,
    }
    response = client.post("/admin/rollback", json={"version": 2}, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"version": 2, "previous": 3}
    # Served at once by this server, and the store's pointer moved for the others.
    assert served(client) == (2, ["i3", "i1"])
    assert three_versions.current_version() == 2
    assert client.get("/admin/versions", headers=headers).json()["served"] == 2
    # The reload thread sees the pointer it already serves: nothing flips back.
    wait_until(lambda: client.get("/model").json()["version"] == 2)
    # The next publication supersedes the rollback, as any new version does.
    three_versions.publish(make_snapshot())
    wait_until(lambda: served(client)[0] == 4)


def test_rollback_to_an_unknown_pruned_or_invalid_version(
    app_with_key: Callable[[str | None], TestClient], store: FileModelStore
) -> None:
    for _ in range(store.keep_versions + 1):
        store.publish(make_snapshot())
    client = app_with_key(KEY)
    headers = {"X-API-Key": KEY}
    kept = client.get("/admin/versions", headers=headers).json()["versions"]
    assert kept == list(range(2, store.keep_versions + 2))  # version 1 was pruned
    for version in (1, 99):
        response = client.post("/admin/rollback", json={"version": version}, headers=headers)
        assert response.status_code == 404
        assert str(version) in response.json()["detail"]
    invalid = [{"version": 0}, {"version": "two"}, {}, {"version": 2, "extra": 1}]
    invalid += [{"version": True}, {"version": "3"}, {"version": 3.0}]  # strict: no coercion
    for body in invalid:
        response = client.post("/admin/rollback", json=body, headers=headers)
        assert response.status_code == 422, body
    assert store.current_version() == store.keep_versions + 1


def test_rollback_to_a_corrupt_version_is_409_and_keeps_the_served_one(
    app_with_key: Callable[[str | None], TestClient], store: FileModelStore
) -> None:
    store.publish(make_snapshot())
    store.publish(make_snapshot(U0_SECOND_AXIS))
    blob, meta = encode_snapshot(make_snapshot(meta={"version": 1}))
    (store.root / "v00000001" / "model.npz").write_bytes(blob[: len(blob) // 2])  # truncated
    (store.root / "v00000001" / "meta.json").write_text(json.dumps(meta))
    client = app_with_key(KEY)
    response = client.post("/admin/rollback", json={"version": 1}, headers={"X-API-Key": KEY})
    assert response.status_code == 409
    assert "checksum" in response.json()["detail"]
    assert store.current_version() == 2
    assert served(client) == (2, ["i3", "i1"])


def test_non_ascii_key_and_the_environment_variable(
    app_with_key: Callable[[str | None], TestClient],
    three_versions: FileModelStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCD_API_KEY", "clé-ü")
    configured = Settings().api_key
    assert configured is not None and configured.get_secret_value() == "clé-ü"
    assert "clé" not in repr(Settings())  # never printed in logs or tracebacks
    client = app_with_key("clé-ü")
    ok = client.get("/admin/versions", headers={"X-API-Key": "clé-ü".encode()})
    assert ok.status_code == 200
    for wrong in ("clé-u", "cle-ü", "clé"):
        response = client.get("/admin/versions", headers={"X-API-Key": wrong.encode()})
        assert response.status_code == 401, wrong


def test_openapi_declares_the_key(
    app_with_key: Callable[[str | None], TestClient], three_versions: FileModelStore
) -> None:
    schema = app_with_key(KEY).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "Equal to the server's CCD_API_KEY",
    }
    for path in ("/admin/versions", "/admin/rollback"):
        operation = next(iter(schema["paths"][path].values()))
        assert operation["security"] == [{"APIKeyHeader": []}]


def test_rollback_needs_a_json_content_type(
    app_with_key: Callable[[str | None], TestClient], three_versions: FileModelStore
) -> None:
    client = app_with_key(KEY)
    body = json.dumps({"version": 1})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"X-API-Key": KEY}
        if content_type is not None:
            headers["content-type"] = content_type
        response = client.post("/admin/rollback", content=body, headers=headers)
        assert response.status_code == 415, content_type
        assert "application/json" in response.json()["detail"]
    # The key comes first: without it, 401 whatever the content type.
    response = client.post("/admin/rollback", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 401
    assert three_versions.current_version() == 3
    assert served(client)[0] == 3
    operation = client.get("/openapi.json").json()["paths"]["/admin/rollback"]["post"]
    assert "415" in operation["responses"]
