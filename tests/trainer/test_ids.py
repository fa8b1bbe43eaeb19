"""IdMap: contiguous indices in order of first appearance, stable as it grows."""

from __future__ import annotations

from trainer.ids import IdMap


def test_indices_follow_first_appearance_and_repeat_for_known_ids() -> None:
    ids = IdMap()
    assert [ids.add(x) for x in ["b", "a", "b", "c", "a"]] == [0, 1, 0, 2, 1]
    assert len(ids) == 3 and ids.ids == ["b", "a", "c"]
    assert ids.get("c") == 2 and ids.get("zzz") is None and "zzz" not in ids
    assert ids.external(1) == "a"


def test_restoring_from_ids_keeps_every_index_and_grows_after_them() -> None:
    before = IdMap(["x", "y"])
    before.add("z")
    after = IdMap(before.ids)
    assert [after.get(x) for x in ["x", "y", "z"]] == [0, 1, 2]
    assert after.add("new") == 3


def test_ids_is_a_copy() -> None:
    ids = IdMap(["a"])
    ids.ids.append("b")
    assert len(ids) == 1
