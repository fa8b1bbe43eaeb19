"""POST /events: accepted events land in the real embedded log; bad input is refused whole."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from contracts.event_log import SqliteEventConsumer, SqliteEventLog
from contracts.events import InteractionEvent
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from service.app import create_app
from tests.service.conftest import MAX_EVENTS

JSON = {"content-type": "application/json"}


def logged_events(settings: Settings) -> list[InteractionEvent]:
    consumer = SqliteEventConsumer(settings.event_log_path, group_id="test-reader")
    try:
        return [InteractionEvent.from_bytes(r.value) for r in consumer.poll(1000, 0.0)]
    finally:
        consumer.close()


def test_single_event_and_list_are_appended(
    client_factory: Callable[[], TestClient], settings: Settings
) -> None:
    client = client_factory()  # events are accepted even before any model exists
    response = client.post(
        "/events",
        json={
            "user_id": "a",
            "item_id": "x",
            "timestamp": "2024-01-02T03:04:05Z",
            "event_id": "e1",
        },
    )
    assert response.status_code == 202
    assert response.json() == {"accepted": 1}
    response = client.post(
        "/events",
        json=[{"user_id": "b", "item_id": "y", "timestamp": 10}, {"user_id": "c", "item_id": "z"}],
    )
    assert response.status_code == 202
    assert response.json() == {"accepted": 2}
    events = logged_events(settings)
    assert [(e.user_id, e.item_id) for e in events] == [("a", "x"), ("b", "y"), ("c", "z")]
    assert events[0].timestamp == 1704164645.0  # 2024-01-02T03:04:05Z
    assert events[0].event_id == "e1"
    assert events[1].timestamp == 10.0
    assert events[2].timestamp > 1.7e9  # server time filled in


def test_malformed_event_is_422_naming_the_field_and_nothing_is_appended(
    client_factory: Callable[[], TestClient], settings: Settings
) -> None:
    client = client_factory()
    response = client.post(
        "/events", json=[{"user_id": "a", "item_id": "x"}, {"user_id": "b", "item_id": ""}]
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [error["loc"] for error in detail] == [["body", 1, "item_id"]]
    response = client.post("/events", json={"item_id": "x", "timestamp": -5, "colour": "red"})
    assert response.status_code == 422
    locs = sorted(tuple(error["loc"]) for error in response.json()["detail"])
    assert locs == [("body", "timestamp"), ("body", "user_id")]  # an unknown field is no error
    for body in (b"{not json", b"[]", b"42"):
        response = client.post("/events", content=body, headers=JSON)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"][0] == "body"
    assert logged_events(settings) == []


def test_too_many_events_is_413(
    client_factory: Callable[[], TestClient], settings: Settings
) -> None:
    client = client_factory()
    batch = [{"user_id": "a", "item_id": f"x{i}"} for i in range(MAX_EVENTS + 1)]
    assert client.post("/events", json=batch).status_code == 413
    assert client.post("/events", json=batch[:MAX_EVENTS]).status_code == 202
    # A body far beyond what max_events_per_request events can fill is refused unread.
    padded = orjson.dumps({"user_id": "a", "item_id": "b"}) + b" " * (MAX_EVENTS * 4096)
    assert client.post("/events", content=padded).status_code == 413
    assert len(logged_events(settings)) == MAX_EVENTS


def test_unavailable_log_is_503_with_retry_after(
    client_factory: Callable[[], TestClient], event_log: SqliteEventLog
) -> None:
    client = client_factory()
    event_log.close()  # the real embedded log, unable to write: raises EventLogUnavailable
    response = client.post("/events", json={"user_id": "a", "item_id": "x"})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert 'ccd_events_rejected_total{reason="unavailable"} 1.0' in client.get("/metrics").text


def test_a_422_echoes_no_more_than_a_short_prefix_of_the_input(
    client_factory: Callable[[], TestClient], settings: Settings
) -> None:
    # A 39 MB field came back whole as a 39 MB answer; here 15 KB (this app's body limit is
    # MAX_EVENTS * 4 KB), in a value, as a field name inside one, in a list and in the other
    # routes. (An unknown field of an event, however long its name, is ignored: no 422.)
    client = client_factory()
    huge = "x" * 15_000
    bodies = [
        ("/events", {"user_id": huge, "item_id": "i"}),
        ("/events", {"user_id": "u", "item_id": {huge: 1}}),
        ("/events", [{"user_id": "u", "item_id": [huge]}]),
        ("/recommendations", {"user_ids": [huge], "k": 1}),
    ]
    for path, body in bodies:
        response = client.post(path, json=body)
        assert response.status_code == 422
        assert len(response.content) < 2_000, (path, len(response.content))
        assert "xxxxxxxxxx... (15" in response.text  # the start, and how long it was
    assert logged_events(settings) == []


def test_types_are_as_strict_as_the_schema_says(
    client_factory: Callable[[], TestClient], settings: Settings
) -> None:
    client = client_factory()
    for field, value in [("weight", False), ("weight", True), ("timestamp", True)]:
        response = client.post("/events", json={"user_id": "u", "item_id": "i", field: value})
        assert response.status_code == 422, (field, value)
        assert response.json()["detail"][0]["loc"] == ["body", field]
    assert client.post("/events", json={"user_id": "u", "item_id": "i", "weight": 2}).is_success
    for body in ({"user_ids": ["u0"], "exclude_seen": 0}, {"user_ids": ["u0"], "k": "2"}):
        assert client.post("/recommendations", json=body).status_code == 422, body
    # An empty list is refused, and the schema says so; the 422 is documented.
    operation = client.get("/openapi.json").json()["paths"]["/events"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["oneOf"][1]["minItems"] == 1
    assert client.post("/events", json=[]).status_code == 422
    assert "422" in operation["responses"]
    assert len(logged_events(settings)) == 1


def test_writes_need_a_json_content_type_so_no_cross_site_form_can_post(
    client_factory: Callable[[], TestClient], settings: Settings
) -> None:
    client = client_factory()
    event = orjson.dumps({"user_id": "u", "item_id": "i"})
    # What a browser sends cross-site without a preflight: a form (urlencoded, multipart, or
    # text/plain holding JSON), or a fetch of a Blob with no type at all.
    refused = [
        {"content-type": "text/plain"},
        {"content-type": "text/plain; charset=utf-8"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "application/jsonp"},
        {},
    ]
    for headers in refused:
        response = client.post("/events", content=event, headers=headers)
        assert response.status_code == 415, headers
        assert "Content-Type: application/json" in response.json()["detail"]
    assert client.post("/events", data={"user_id": "u", "item_id": "i"}).status_code == 415
    assert logged_events(settings) == []
    for declared in ("application/json", "Application/JSON; charset=utf-8"):
        response = client.post("/events", content=event, headers={"content-type": declared})
        assert response.status_code == 202, declared
    operation = client.get("/openapi.json").json()["paths"]["/events"]["post"]
    assert "415" in operation["responses"]
    assert "security" not in operation  # no events key configured: none asked for


def test_the_optional_events_key_guards_writes(
    settings: Settings, store: FileModelStore, event_log: SqliteEventLog
) -> None:
    configured = settings.model_copy(update={"events_api_key": SecretStr("w-key")})
    with TestClient(create_app(configured, store=store, event_log=event_log)) as client:
        event = {"user_id": "u", "item_id": "i"}
        for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "w-ke"}, {"X-API-Key": "w-keyx"}):
            response = client.post("/events", json=event, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "X-API-Key"
        # The key is checked first: without it, a form post learns nothing about the body.
        assert client.post("/events", data=event).status_code == 401
        assert logged_events(settings) == []
        response = client.post("/events", json=event, headers={"X-API-Key": "w-key"})
        assert response.status_code == 202
        assert client.get("/recommendations/u").status_code == 503  # reads need no key
        operation = client.get("/openapi.json").json()["paths"]["/events"]["post"]
        assert operation["security"] == [{"EventsAPIKey": []}]
        assert "401" in operation["responses"]
    assert len(logged_events(settings)) == 1


def test_the_events_key_comes_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CCD_EVENTS_API_KEY", raising=False)
    assert Settings().events_api_key is None  # off by default
    monkeypatch.setenv("CCD_EVENTS_API_KEY", "from-env")
    key = Settings().events_api_key
    assert key is not None and key.get_secret_value() == "from-env"
    assert "from-env" not in repr(Settings())


def test_unknown_fields_are_ignored_counted_and_logged_without_a_flood(
    client_factory: Callable[[], TestClient],
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A producer that adds a field must lose nothing: the event is accepted, the field dropped.
    client = client_factory()
    extra = {"colour": "red", "x" * 5000: 1}
    with caplog.at_level(logging.WARNING, logger="service.routers.events"):
        for i in range(30):
            event = {"user_id": f"u{i}", "item_id": "i", "event_id": f"e{i}", **extra}
            response = client.post("/events", json=[event, {"user_id": "v", "item_id": "j"}])
            assert response.status_code == 202
    events = logged_events(settings)
    assert len(events) == 60 and events[0].event_id == "e0"
    raw = SqliteEventConsumer(settings.event_log_path, group_id="raw").poll(1, 0.0)[0].value
    assert orjson.loads(raw) == {"user_id": "u0", "item_id": "i", "event_id": "e0",
                                 "timestamp": events[0].timestamp}  # fmt: skip
    metrics = client.get("/metrics").text
    assert "ccd_events_unknown_fields_total 30.0" in metrics
    assert "ccd_events_accepted_total 60.0" in metrics
    lines = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert 1 <= len(lines) < 30  # the first ones, then at most a summary per interval
    assert "'colour'" in lines[0] and len(lines[0]) < 300  # a 5,000-character name is cut
    schema = client.get("/openapi.json").json()["paths"]["/events"]["post"]
    oneof = schema["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert oneof[0].get("additionalProperties", True) is True  # the schema allows them too
