"""Fixtures: an app over the real embedded event log and model store in ``tmp_path``, and a
small hand-made model whose rankings are worked out by hand in the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contracts.event_log import SqliteEventLog
from contracts.model_store import FileModelStore, ModelSnapshot
from contracts.settings import Settings
from service.app import create_app

MAX_EVENTS = 5
RELOAD_POLL_S = 0.1


def make_snapshot(
    user_embeddings: list[list[float]] | None = None, meta: dict | None = None
) -> ModelSnapshot:
    """Users u0, u1; items i0..i4 (d = 2).

    Scores u0 = (1, 0.1): i0 1.0, i1 0.1, i2 2.0, i3 1.1, i4 0.05 -> i2 i3 i0 i1 i4.
    Scores u1 = (0.2, 1): i0 0.2, i1 1.0, i2 0.4, i3 1.2, i4 0.5 -> i3 i1 i4 i2 i0.
    Popularity i0 5, i1 1, i2 3, i3 4, i4 2 -> i0 i3 i2 i4 i1.
    """
    users = user_embeddings or [[1.0, 0.1], [0.2, 1.0]]
    return ModelSnapshot(
        user_ids=["u0", "u1"],
        item_ids=["i0", "i1", "i2", "i3", "i4"],
        user_embeddings=np.array(users, dtype=np.float32),
        item_embeddings=np.array(
            [[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [0.0, 0.5]], dtype=np.float32
        ),
        item_popularity=np.array([5, 1, 3, 4, 2], dtype=np.float32),
        meta=dict(meta or {}),
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Explicit None: the suite may run with CCD_KAFKA_* / CCD_REDIS_* set for integration tests.
    return Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=None,
        redis_url=None,
        reload_poll_s=RELOAD_POLL_S,
        max_events_per_request=MAX_EVENTS,
    )


@pytest.fixture
def store(settings: Settings) -> FileModelStore:
    return FileModelStore(settings.model_store_dir, settings.keep_versions)


@pytest.fixture
def event_log(settings: Settings) -> Iterator[SqliteEventLog]:
    log = SqliteEventLog(settings.event_log_path)
    yield log
    log.close()


@pytest.fixture
def client_factory(
    settings: Settings, store: FileModelStore, event_log: SqliteEventLog
) -> Iterator[Callable[[], TestClient]]:
    """Starts the app (lifespan included) on demand, so a test can prepare the log/store first."""
    clients: list[TestClient] = []

    def start() -> TestClient:
        client = TestClient(create_app(settings, store=store, event_log=event_log))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def ready_client(client_factory: Callable[[], TestClient], store: FileModelStore) -> TestClient:
    """An app serving version 1 of ``make_snapshot()`` with its seen index caught up."""
    store.publish(make_snapshot())
    client = client_factory()
    wait_until(lambda: client.get("/health/ready").status_code == 200)
    return client
