"""The fast lane of GET /recommendations/{user_id} answers exactly what FastAPI's route answers,
and leaves everything it cannot vouch for to the route."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from contracts.event_log import SqliteEventLog
from contracts.events import MAX_ID_LENGTH, InteractionEvent
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from service.app import create_app
from service.catalogue import NO_FILTER
from service.ranking import Ranked
from service.routers import recommendations
from service.routers.recommendations import OneUserFastLane, build_router
from tests.service.conftest import make_snapshot, wait_until

LONG_ID = "u" * MAX_ID_LENGTH
PATHS = [
    "/recommendations/u0",
    "/recommendations/u0?k=2",
    "/recommendations/u1?k=1000",  # max_k: more than the catalogue
    "/recommendations/u0?k=3&exclude_seen=false",
    "/recommendations/u0?exclude_seen=0&k=5",
    "/recommendations/u0?exclude_seen=1",
    "/recommendations/u0?k=%32",  # percent-encoded digit
    "/recommendations/nobody?k=4",  # unknown user: popular items
    "/recommendations/%C3%BCser%20x",  # non-ASCII, space
    f"/recommendations/{LONG_ID}",
    # Left to FastAPI: invalid or unusual requests.
    f"/recommendations/{LONG_ID}x",  # too long: 422
    "/recommendations/u0?k=0",
    "/recommendations/u0?k=1001",
    "/recommendations/u0?k=1000000000",
    "/recommendations/u0?k=-1",
    "/recommendations/u0?k=2.5",
    "/recommendations/u0?k=",
    "/recommendations/u0?k=%EF%BC%92",  # a full-width digit
    "/recommendations/u0?k=1&k=2",
    "/recommendations/u0?exclude_seen=maybe",
    "/recommendations/u0?exclude_seen=no",  # valid for FastAPI, not for the lane
    "/recommendations/u0?other=1",
    "/recommendations/u0?k",
    "/recommendations/u0?&k=2",
    "/recommendations/",
    "/recommendations/u0/",
    "/recommendations/u0/extra",
    "/recommendations/u0%2Fextra",
]


@pytest.fixture
def clients(
    settings: Settings, store: FileModelStore, event_log: SqliteEventLog
) -> Iterator[tuple[TestClient, TestClient]]:
    """(with the fast lane, without it) over the same store and log; u0 has seen i2."""
    event_log.append([InteractionEvent(user_id="u0", item_id="i2")])
    store.publish(make_snapshot())
    pair = []
    for fast_lane in (True, False):
        client = TestClient(create_app(settings, store, event_log, fast_lane=fast_lane))
        client.__enter__()
        wait_until(lambda c=client: c.get("/health/ready").status_code == 200)
        pair.append(client)
    yield pair[0], pair[1]
    for client in pair:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("path", PATHS)
def test_answers_match_the_route(clients: tuple[TestClient, TestClient], path: str) -> None:
    fast, plain = clients
    got, expected = fast.get(path), plain.get(path)
    assert got.status_code == expected.status_code
    assert got.headers["content-type"] == expected.headers["content-type"]
    got_body, expected_body = got.json(), expected.json()
    if got.status_code == 200:  # each answer has an id of its own
        assert len(got_body.pop("recommendation_id")) == 12
        assert len(expected_body.pop("recommendation_id")) == 12
    assert got_body == expected_body


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/recommendations/u0", b"", ("u0", 20, True)),
        ("/recommendations/u0", b"k=7&exclude_seen=false", ("u0", 7, False)),
        ("/recommendations/a b", b"exclude_seen=true", ("a b", 20, True)),
        ("/recommendations/u0", b"k=0", None),
        ("/recommendations/u0", b"k=1001", None),
        ("/recommendations/u0", b"k=1&k=1", None),
        ("/recommendations/u0", b"exclude_seen=False", None),
        ("/recommendations/u0", b"k=\xff", None),
        ("/recommendations/u0", b"k=1&", None),
        ("/recommendations/", b"", None),
        ("/recommendations/a/b", b"", ("a/b", 20, True)),  # ids may hold "/"
        ("/items/u0/similar", b"", None),
    ],
)
def test_which_requests_the_lane_takes(
    settings: Settings, path: str, query: bytes, expected: tuple | None
) -> None:
    lane = OneUserFastLane(app=None, router=build_router(settings), max_k=1000)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query}
    assert lane._plain_request(scope) == (None if expected is None else (*expected, NO_FILTER))
    assert lane._plain_request(scope | {"method": "POST"}) is None
    assert lane._plain_request(scope | {"root_path": "/api"}) is None


def test_lane_requests_are_counted_under_the_route(
    clients: tuple[TestClient, TestClient],
) -> None:
    fast, _ = clients
    for _ in range(3):
        assert fast.get("/recommendations/u0?k=2").status_code == 200
    metrics = fast.get("/metrics").text
    assert (
        'ccd_http_requests_total{method="GET",route="/recommendations/{user_id}",status="200"} 3.0'
        in metrics
    )
    assert 'ccd_recommendations_total{strategy="personalized"} 3.0' in metrics


def test_without_a_model_the_route_answers_503(
    settings: Settings, store: FileModelStore, event_log: SqliteEventLog
) -> None:
    with TestClient(create_app(settings, store, event_log)) as client:
        response = client.get("/recommendations/u0?k=2")
    assert response.status_code == 503
    assert response.json() == {"detail": "no model version loaded yet"}


REQUESTS = [
    ("u0", 3, True),
    ("u1", 1, True),
    ("u0", 5, False),
    ("nobody", 2, True),
    ("u1", 1000, False),
    ("u0", 1, True),
]


def test_batched_answers_equal_single_answers(
    clients: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _ = clients
    state = fast.app.state.service  # type: ignore[attr-defined]
    expected = []
    for user, k, exclude in REQUESTS:
        version, (ranked,) = recommendations._rank(state, [user], k, [exclude])
        expected.append((version, ranked))
    calls: list[int] = []
    real_rank = recommendations._rank

    def counting_rank(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(args[1]))
        return real_rank(*args, **kwargs)

    monkeypatch.setattr(recommendations, "_rank", counting_rank)
    batcher = recommendations.OneUserBatcher()

    async def all_at_once() -> list[tuple[int, Ranked]]:
        return await asyncio.gather(*(batcher.rank(state, *request) for request in REQUESTS))

    assert asyncio.run(all_at_once()) == expected
    assert calls == [len(REQUESTS)]  # one ranking call for the whole turn


def test_a_failed_batch_fails_every_request_and_a_left_one_is_skipped(
    clients: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _ = clients
    state = fast.app.state.service  # type: ignore[attr-defined]
    batcher = recommendations.OneUserBatcher()

    async def one_cancelled() -> list[object]:
        tasks = [asyncio.ensure_future(batcher.rank(state, u, k, ex)) for u, k, ex in REQUESTS]
        await asyncio.sleep(0)  # every task is now waiting for the flush
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    monkeypatch.setattr(
        recommendations, "_rank", lambda *args: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    results = asyncio.run(one_cancelled())
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, RuntimeError) and str(r) == "boom" for r in results[1:])
