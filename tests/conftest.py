"""Shared fixtures: addresses of the real Kafka and Redis, unique names, a data directory.

`make test` (scripts/test_services.py) starts a real Kafka broker and redis-server and passes their
addresses as ``CCD_TEST_KAFKA_BOOTSTRAP`` and ``CCD_TEST_REDIS_URL``. Tests that need them take the
``kafka_bootstrap`` / ``redis_url`` fixtures (or ``service_settings``) and are skipped without them.
Every other ``CCD_*`` variable is dropped at start-up so that ``Settings()`` in unit tests sees only
its defaults, whatever the developer's shell exports; tests build their Settings explicitly.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from contracts.settings import Settings

KAFKA_ENV = "CCD_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "CCD_TEST_REDIS_URL"
SERVICE_FIXTURES = {"kafka_bootstrap", "redis_url", "service_settings"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    for key in [key for key in os.environ if key.startswith("CCD_")]:
        if not key.startswith("CCD_TEST_"):
            del os.environ[key]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `-m "not integration"` then runs the unit tests alone.
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _service_address(variable: str, what: str) -> str:
    address = os.environ.get(variable)
    if not address:
        pytest.skip(f"no real {what} ({variable} unset): run `make test` to start real Kafka/Redis")
    return address


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the real Kafka broker, e.g. ``127.0.0.1:40123``."""
    return _service_address(KAFKA_ENV, "Kafka broker")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real redis-server, e.g. ``redis://127.0.0.1:40124/0``."""
    return _service_address(REDIS_ENV, "redis-server")


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses, valid as a Kafka topic, group id or Redis key prefix."""
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-")
    return f"test-{test_name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty directory for a test's embedded event log, model store and checkpoints."""
    path = tmp_path / "ccd-data"
    path.mkdir()
    return path


@pytest.fixture
def service_settings(
    kafka_bootstrap: str, redis_url: str, unique_name: str, data_dir: Path
) -> Settings:
    """Settings on the real Kafka and Redis, with a topic, group and key prefix of its own."""
    return Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic=unique_name,
        kafka_dead_letter_topic=f"{unique_name}.dead-letter",
        kafka_group_id=unique_name,
        redis_url=redis_url,
        redis_prefix=unique_name,
        data_dir=data_dir,
    )
