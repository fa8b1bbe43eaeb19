"""The README is what a new user reads: every setting and subcommand must be documented there."""

from pathlib import Path

from ccd.cli import build_parser
from contracts.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [f"CCD_{name.upper()}" for name in Settings.model_fields]
    missing = [variable for variable in missing if f"`{variable}`" not in README]
    assert not missing, f"settings not documented in README.md: {missing}"


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    missing = [name for name in subparsers.choices if f"ccd {name}" not in README]
    assert not missing, f"subcommands not mentioned in README.md: {missing}"
