"""contracts/settings.py: the rules between fields refuse a bad environment at start-up, naming
the ``CCD_*`` variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.settings import Settings


def test_defaults_keep_the_rules_between_fields() -> None:
    settings = Settings()
    assert settings.block_size <= settings.max_block_events
    assert settings.publish_retry_initial_s <= settings.publish_retry_max_s


def test_block_size_above_max_block_events_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCD_BLOCK_SIZE", "6000")
    monkeypatch.setenv("CCD_MAX_BLOCK_EVENTS", "5000")
    with pytest.raises(ValidationError, match="CCD_BLOCK_SIZE=6000 is above CCD_MAX_BLOCK_EVENTS"):
        Settings()
    Settings(block_size=5000, max_block_events=5000)  # equal is fine
    Settings(base_block_size=9000, block_size=5000, max_block_events=5000)  # base block: split


def test_first_publish_retry_above_the_longest_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(publish_retry_initial_s=60, publish_retry_max_s=30)
    (problem,) = error.value.errors()
    assert (
        "CCD_PUBLISH_RETRY_INITIAL_S=60.0 is above CCD_PUBLISH_RETRY_MAX_S=30.0" in problem["msg"]
    )


def test_both_rules_broken_are_named_together() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(
            block_size=10, max_block_events=5, publish_retry_initial_s=2, publish_retry_max_s=1
        )
    message = error.value.errors()[0]["msg"]
    assert "CCD_BLOCK_SIZE=10" in message and "CCD_PUBLISH_RETRY_INITIAL_S=2.0" in message
