"""Hostile input, generated: schemathesis drives every operation of the OpenAPI schema with
inputs that fit it and inputs that break it; no answer may be a 5xx, and every answer must be
one the schema documents (status code, content type, body), so clients generated from it hold.

The app runs in-process (ASGI) over the real embedded event log and model store, serving the
hand-made model of ``tests/service/conftest.py``; admin operations are called with the right
API key so that their inputs are exercised (random keys: ``test_service_hostile_input.py``).
Every case is counted by status; ``test_fuzz_totals`` puts the tally among the fault-injection
figures printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from contracts.model_store import FileModelStore
from contracts.settings import Settings
from service.app import create_app
from tests.service.conftest import make_snapshot

API_KEY = "fuzz-key"
# Per operation and generation phase; 10 operations keep the module well under a minute.
MAX_EXAMPLES = 60

TALLY: Counter[str] = Counter()
# No 5xx, and every answer is one the schema documents: its status, content type and body.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# The app is built at import (schemathesis parametrizes from its schema at collection); its
# data directory is only created, filled and removed by the `published_models` fixture. The
# lifespan (reload thread, seen-items tailer) runs per test, started by the first request.
SETTINGS = Settings(
    data_dir=Path(tempfile.gettempdir()) / f"ccd-fuzz-{os.getpid()}-{uuid.uuid4().hex[:8]}",
    kafka_bootstrap_servers=None,
    redis_url=None,
    reload_poll_s=0.2,
    max_events_per_request=50,
    api_key=SecretStr(API_KEY),
)
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP
schema.config.generation.update(
    modes=["positive", "negative"], max_examples=MAX_EXAMPLES, deterministic=True
)


@pytest.fixture(scope="module", autouse=True)
def published_models() -> Iterator[None]:
    store = FileModelStore(SETTINGS.model_store_dir, SETTINGS.keep_versions)
    store.publish(make_snapshot())
    store.publish(make_snapshot([[0.1, 1.0], [0.2, 1.0]]))
    yield
    shutil.rmtree(SETTINGS.data_dir, ignore_errors=True)


@schema.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_input_gets_a_server_error(case: schemathesis.Case) -> None:
    headers = {"X-API-Key": API_KEY} if case.operation.path.startswith("/admin") else None
    response = case.call(headers=headers)
    TALLY[str(response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    label = f"{case.operation.method.upper()} {case.operation.path}"
    assert response.status_code < 500, (label, response.status_code, response.text[:500])


def test_fuzz_totals(figures: dict[str, Any]) -> None:
    """Runs after the generated tests of this module: every operation got cases, none a 5xx."""
    server_errors = sum(n for status, n in TALLY.items() if status.startswith("5"))
    figures.update(cases=TALLY.total(), server_errors=server_errors, by_status=dict(TALLY))
    assert server_errors == 0
    assert TALLY.total() >= 10 * MAX_EXAMPLES // 2, TALLY
