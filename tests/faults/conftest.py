"""Collects the figures the fault tests count and prints them at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

_FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A dict the test fills with what it counted (crashes, events, versions ...)."""
    counted: dict[str, Any] = {}
    _FIGURES.append((request.node.name, counted))
    return counted


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reported = [(name, counted) for name, counted in _FIGURES if counted]
    if not reported:
        return
    terminalreporter.section("fault-injection figures")
    for name, counted in reported:
        terminalreporter.write_line(f"{name}:")
        terminalreporter.write_line(
            "    " + ", ".join(f"{key}: {value}" for key, value in counted.items())
        )
