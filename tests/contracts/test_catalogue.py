"""The catalogue stores: the same contract on embedded SQLite and on the real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.catalogue import (
    MAX_CATEGORIES,
    MAX_TAG_LENGTH,
    CatalogueStore,
    ItemMetadata,
    RedisCatalogue,
    SqliteCatalogue,
)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogueStore]:
    if request.param == "sqlite":
        catalogue: CatalogueStore = SqliteCatalogue(tmp_path / "catalogue.sqlite")
    else:
        redis_url = request.getfixturevalue("redis_url")
        catalogue = RedisCatalogue(redis_url, request.getfixturevalue("unique_name"))
    yield catalogue
    catalogue.close()


def meta(**fields: object) -> ItemMetadata:
    return ItemMetadata.model_validate(fields)


def test_a_write_is_read_back_with_its_version(store: CatalogueStore) -> None:
    assert store.version() == 0
    assert store.changes(0) == {}
    version = store.put({"a": meta(categories=["x", "y", "x"], labels={"color": "red"})})
    assert version == store.version() == 1
    entry = store.get_many(["a", "nobody"])["a"]
    assert entry.categories == ("x", "y")  # de-duplicated, in order
    assert dict(entry.labels) == {"color": "red"}
    assert entry.available and entry.version == 1
    assert entry.timestamp is not None  # the time of its first write
    assert store.get_many(["nobody"]) == {}


def test_changes_name_only_items_written_since(store: CatalogueStore) -> None:
    store.put({"a": meta(), "b": meta()})
    store.put({"b": meta(categories=["new"]), "c": meta()})
    changes = store.changes(1)
    assert set(changes) == {"b", "c"}
    assert changes["b"].categories == ("new",) and changes["b"].version == 2
    assert set(store.changes(0)) == {"a", "b", "c"}
    assert store.changes(2) == {}


def test_the_timestamp_is_kept_unless_given(store: CatalogueStore) -> None:
    store.put({"a": meta(timestamp=1000.0)})
    store.put({"a": meta(categories=["x"])})
    assert store.get_many(["a"])["a"].timestamp == 1000.0
    store.put({"a": meta(timestamp=2000)})
    assert store.get_many(["a"])["a"].timestamp == 2000.0


def test_hide_keeps_the_metadata_and_a_put_can_show_it_again(store: CatalogueStore) -> None:
    store.put({"a": meta(categories=["x"], labels={"k": "v"}, timestamp=5.0)})
    version = store.hide(["a", "only-in-events"])
    entries = store.get_many(["a", "only-in-events"])
    assert version == 2
    assert not entries["a"].available and entries["a"].categories == ("x",)
    assert entries["a"].timestamp == 5.0
    assert not entries["only-in-events"].available
    assert entries["only-in-events"].categories == ()
    store.put({"a": meta(available=True)})
    assert store.get_many(["a"])["a"].available


def test_ids_with_any_characters_round_trip(store: CatalogueStore) -> None:
    odd = ["a/b", "c:d", "é 🙂", "x" * 256]
    store.put({item: meta(labels={"id": item}) for item in odd})
    assert {item: dict(e.labels)["id"] for item, e in store.get_many(odd).items()} == {
        item: item for item in odd
    }


def test_metadata_survives_reopening_the_embedded_store(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.sqlite"
    first = SqliteCatalogue(path)
    first.put({"a": meta(categories=["x"])})
    first.close()
    again = SqliteCatalogue(path)
    try:
        assert again.version() == 1
        assert again.get_many(["a"])["a"].categories == ("x",)
    finally:
        again.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"labels": {"a:b": "c"}},  # a key may not hold ":"
        {"labels": {"": "c"}},
        {"labels": {"k": ""}},
        {"labels": {"k": 3}},
        {"labels": ["k", "v"]},
        {"categories": "shoes"},
        {"categories": [""]},
        {"categories": ["x" * (MAX_TAG_LENGTH + 1)]},
        {"categories": [f"c{n}" for n in range(MAX_CATEGORIES + 1)]},
        {"available": "yes"},
        {"available": 1},
        {"timestamp": True},
        {"timestamp": "soon"},
        {"colour": "red"},  # an unknown field
    ],
)
def test_malformed_metadata_is_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        ItemMetadata.model_validate(fields)
