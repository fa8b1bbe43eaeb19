"""Every ``>>>`` example in the project's packages runs, so the documentation cannot go wrong.

One case per module that contains ``>>>``; a failing example fails its module's case with the
doctest report (the example, what it expected, what it got). Flags as River's: NUMBER (a float
matches to the precision written), NORMALIZE_WHITESPACE and ELLIPSIS.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
from _pytest.doctest import _get_checker  # pytest's checker: the one that knows NUMBER

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "models", "experiments", "trainer", "service", "bench")
# NUMBER is pytest's flag (pytest registers it under this name; registering again returns it).
NUMBER = doctest.register_optionflag("NUMBER")
FLAGS = NUMBER | doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def modules_with_examples() -> list[str]:
    """Dotted names of the packages' modules whose source contains ``>>>``, sorted."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>>" in path.read_text():
                parts = path.relative_to(ROOT).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", modules_with_examples())
def test_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    report: list[str] = []
    runner = doctest.DocTestRunner(checker=_get_checker(), optionflags=FLAGS)
    failed = attempted = 0
    for test in doctest.DocTestFinder().find(module, name):
        result = runner.run(test, out=report.append)
        failed, attempted = failed + result.failed, attempted + result.attempted
    if failed:
        pytest.fail(f"{failed} of {attempted} examples failed:\n" + "".join(report))
