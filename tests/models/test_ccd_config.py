"""models/ccd/config.py: every CCDConfig field carries a one-line meaning that help can show."""

from __future__ import annotations

import dataclasses

from models.ccd.config import CCDConfig, setting_rows

# Long enough to say something, short enough for one line of `ccd replay --list-settings`.
MIN_MEANING, MAX_MEANING = 15, 90


def test_every_field_has_a_one_line_meaning() -> None:
    fields = dataclasses.fields(CCDConfig)
    missing = [f.name for f in fields if not f.metadata.get("help")]
    assert not missing, f"CCDConfig fields without metadata['help'] (a one-line meaning): {missing}"
    bad = [
        f.name
        for f in fields
        if "\n" in f.metadata["help"] or not MIN_MEANING <= len(f.metadata["help"]) <= MAX_MEANING
    ]
    assert not bad, f"meanings not one line of {MIN_MEANING}-{MAX_MEANING} characters: {bad}"


def test_setting_rows_give_each_field_its_type_and_default() -> None:
    rows = {name: (kind, default) for name, kind, default, _ in setting_rows()}
    assert list(rows) == [f.name for f in dataclasses.fields(CCDConfig)]
    assert rows["kd_lr"] == ("float", "0.005")
    assert rows["kd_patience"] == ("int | None", "None")
    assert rows["block_overrides"][1] == "{}"  # a default_factory's value


def test_meanings_do_not_change_defaults() -> None:
    """The ``setting`` helper keeps plain defaults: a config built without arguments equals one
    built from its own dictionary, and the tuple fields stay tuples."""
    cfg = CCDConfig()
    assert CCDConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.teacher_kinds == ("lightgcn",) * 5 and cfg.kd_uninteresting_items == 10_000
