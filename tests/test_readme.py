"""The README is what a new user reads: every setting and subcommand must be documented there."""

import re
import shlex
from pathlib import Path

from ccd.cli import build_parser
from contracts.settings import Settings
from scripts.make_sample import SAMPLE, write_sample
from trainer.producer import check_events_file, read_events

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The sample ships in every clone: it must stay small.
MAX_SAMPLE_BYTES = 300_000


def test_every_setting_is_in_the_readme() -> None:
    missing = [f"CCD_{name.upper()}" for name in Settings.model_fields]
    missing = [variable for variable in missing if f"`{variable}`" not in README]
    assert not missing, f"settings not documented in README.md: {missing}"


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    missing = [name for name in subparsers.choices if f"ccd {name}" not in README]
    assert not missing, f"subcommands not mentioned in README.md: {missing}"


def _data_example() -> list[str]:
    """The arguments of the README's `make up UP_ARGS="--data ..."` example."""
    (up_args,) = re.findall(r'make up UP_ARGS="(--data [^"]+)"', README)
    return shlex.split(up_args)


def test_the_data_example_runs_from_a_clone() -> None:
    """Its file is in the repository (`../shared` is not in a user's clone), `ccd up` takes its
    arguments, and the project's own reader parses every row in time order."""
    args = build_parser().parse_args(["up", *_data_example()])
    path = (ROOT / args.data).resolve()
    assert ROOT in path.parents and path.is_file(), f"{args.data} is not in the repository"
    assert path.stat().st_size < MAX_SAMPLE_BYTES
    check_events_file(path)
    events = read_events(path)
    rows = len(path.read_text().splitlines()) - 1
    assert len(events) == rows >= 1_000  # no row skipped as malformed
    assert len({event.dedup_key() for event in events}) == rows  # none dropped as a duplicate


def test_the_sample_is_what_make_sample_writes(tmp_path: Path) -> None:
    """The sample is the synthetic generator's, reproducibly (not a file of unknown origin)."""
    written = tmp_path / "sample.csv"
    write_sample(written)
    assert written.read_bytes() == SAMPLE.read_bytes()
