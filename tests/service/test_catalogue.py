"""The catalogue view and its filter masks: unit tests, and property tests comparing every filter
combination over random catalogues with a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.catalogue import CatalogueEntry, ItemMetadata, SqliteCatalogue
from contracts.model_store import ModelSnapshot
from service.catalogue import CatalogueView, ItemFilter, ItemMasks, UnknownFilterValue
from service.ranking import PLAIN, ServingModel

CATEGORIES = ["a", "b", "c"]
LABELS = [("color", "red"), ("color", "blue"), ("size", "l")]


def model_of(
    n_items: int, user_vectors: list[list[float]], item_vectors: list[list[float]]
) -> ServingModel:
    return ServingModel.from_snapshot(
        ModelSnapshot(
            user_ids=[f"u{n}" for n in range(len(user_vectors))],
            item_ids=[f"i{n}" for n in range(n_items)],
            user_embeddings=np.asarray(user_vectors, dtype=np.float32),
            item_embeddings=np.asarray(item_vectors, dtype=np.float32),
            item_popularity=np.asarray([(n * 7) % 5 for n in range(n_items)], dtype=np.float32),
        )
    )


def masks_of(model: ServingModel, entries: dict[str, CatalogueEntry]) -> ItemMasks:
    categories = frozenset(c for e in entries.values() for c in e.categories)
    labels = frozenset(pair for e in entries.values() for pair in e.labels.items())
    return ItemMasks.build(model, entries, 1, categories, labels)


# --- unit tests -------------------------------------------------------------------------------


def small_model() -> ServingModel:
    # u0 scores i0..i4: 5, 4, 3, 2, 1
    items = [[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]]
    return model_of(5, [[1.0, 0.0]], items)


def test_hidden_items_are_never_eligible_and_all_available_means_no_mask() -> None:
    model = small_model()
    assert masks_of(model, {}).options(ItemFilter(), 1.0) is PLAIN
    masks = masks_of(model, {"i0": CatalogueEntry(available=False), "zz": CatalogueEntry()})
    options = masks.options(ItemFilter(), 1.0)
    assert options.eligible is not None and options.eligible.tolist() == [False, *[True] * 4]
    assert model.recommend("u0", 2, options=options).item_ids == ["i1", "i2"]
    assert model.recommend("nobody", 5, options=options).strategy == "popular"
    assert "i0" not in model.recommend("nobody", 5, options=options).item_ids


def test_categories_are_any_of_and_labels_all_of() -> None:
    model = small_model()
    entries = {
        "i0": CatalogueEntry(categories=("a",), labels={"color": "red"}),
        "i1": CatalogueEntry(categories=("b",), labels={"color": "red", "size": "l"}),
        "i2": CatalogueEntry(categories=("a", "b"), labels={"size": "l"}),
        "i3": CatalogueEntry(categories=("c",)),
    }
    masks = masks_of(model, entries)
    eligible = masks.eligible(ItemFilter(categories=("a", "c")))
    assert eligible is not None and eligible.tolist() == [True, False, True, True, False]
    both = masks.eligible(ItemFilter(labels=(("color", "red"), ("size", "l"))))
    assert both is not None and both.tolist() == [False, True, False, False, False]
    not_b = masks.eligible(ItemFilter(exclude_categories=("b",), exclude=("i0",)))
    assert not_b is not None and not_b.tolist() == [False, False, False, True, True]
    only = masks.eligible(ItemFilter(include=("i4", "i1", "unknown")))
    assert only is not None and only.tolist() == [False, True, False, False, True]


def test_unknown_categories_and_labels_are_refused() -> None:
    masks = masks_of(small_model(), {"i0": CatalogueEntry(categories=("a",), labels={"k": "v"})})
    masks.check(ItemFilter(categories=("a",), labels=(("k", "v"),)))
    with pytest.raises(UnknownFilterValue, match="category 'nope'"):
        masks.check(ItemFilter(categories=("nope",)))
    with pytest.raises(UnknownFilterValue):
        masks.check(ItemFilter(exclude_categories=("nope",)))
    with pytest.raises(UnknownFilterValue, match="label 'k:w'"):
        masks.check(ItemFilter(labels=(("k", "w"),)))


def test_a_category_of_few_items_is_kept_as_indices_and_of_many_as_a_mask() -> None:
    items = [[1.0, 0.0]] * 64
    model = model_of(64, [[1.0, 0.0]], items)
    entries = {f"i{n}": CatalogueEntry(categories=("many",)) for n in range(0, 64, 2)}
    entries["i1"] = CatalogueEntry(categories=("few",))
    masks = masks_of(model, entries)
    assert masks.categories["many"].dtype == bool
    assert masks.categories["few"].tolist() == [1]
    eligible = masks.eligible(ItemFilter(categories=("few", "many")))
    assert eligible is not None and sorted(np.flatnonzero(eligible).tolist()) == sorted(
        [1, *range(0, 64, 2)]
    )


def test_the_new_item_boost_halves_every_half_life() -> None:
    model = small_model()
    entries = {"i0": CatalogueEntry(timestamp=1000.0), "i1": CatalogueEntry(timestamp=900.0)}
    boost = masks_of(model, entries).boost(2.0, now=1000.0, half_life_s=100.0)
    assert boost is not None
    assert boost.tolist() == [2.0, 1.0, 0.0, 0.0, 0.0]
    options = masks_of(model, entries).options(ItemFilter(new_item_boost=2.5), 100.0, now=1000.0)
    # i0 5 + 2.5; i1 4 + 1.25; i4 1 + 0
    assert model.recommend("u0", 2, options=options).scores == [7.5, 5.25]


def test_diversity_picks_a_dissimilar_second_item() -> None:
    items = [[1.0, 0.0], [0.99, 0.01], [0.0, 0.9]]
    model = model_of(3, [[1.0, 0.2]], items)
    plain = model.recommend("u0", 2)
    assert plain.item_ids == ["i0", "i1"]
    diverse = model.recommend(
        "u0", 2, options=masks_of(model, {}).options(ItemFilter(diversity=0.8), 1.0)
    )
    assert diverse.item_ids == ["i0", "i2"]


def test_the_view_keeps_the_newest_entry_and_rebuilds_masks_on_change(tmp_path) -> None:
    store = SqliteCatalogue(tmp_path / "c.sqlite")
    model = small_model()
    view = CatalogueView(store, 0.05, lambda: model)
    store.put({"i0": ItemMetadata(categories=["a"])})
    assert view.refresh()
    first = view.masks_for(model)
    assert view.masks_for(model) is first  # cached
    store.hide(["i0"])
    newest = store.get_many(["i0"])
    view.apply(newest)
    assert view.masks_for(model) is first  # until the masks are rebuilt, off the request path
    view.refresh_masks()
    hidden = view.masks_for(model)
    assert hidden is not first and hidden.hidden is not None and hidden.hidden[0]
    view.apply({"i0": CatalogueEntry(categories=("a",), version=1)})  # a stale read
    assert not view.entry("i0").available
    assert "a" in view.masks_for(model).known_categories
    other = small_model()
    assert view.masks_for(other).model is other  # a swapped model gets its own masks
    # A change reaches every kept model's masks, the one being swapped in included.
    store.put({"i1": ItemMetadata(available=False)})
    view.apply(store.get_many(["i1"]))
    view.refresh_masks()
    for kept in (view.masks_for(model), view.masks_for(other)):
        assert kept.hidden is not None and kept.hidden[:2].tolist() == [True, True]
    store.close()


# --- property tests against a brute-force reference -----------------------------------------


@st.composite
def catalogues(draw: st.DrawFn) -> tuple[ServingModel, dict[str, CatalogueEntry]]:
    n_items = draw(st.integers(1, 30))
    small = st.integers(-3, 3).map(float)  # small integers: many exact ties
    items = draw(
        st.lists(st.lists(small, min_size=2, max_size=2), min_size=n_items, max_size=n_items)
    )
    users = draw(st.lists(st.lists(small, min_size=2, max_size=2), min_size=1, max_size=3))
    entries = {}
    for n in range(n_items + 3):  # a few entries for items the model does not know
        if draw(st.booleans()):
            entries[f"i{n}"] = CatalogueEntry(
                categories=tuple(draw(st.lists(st.sampled_from(CATEGORIES), max_size=2))),
                labels=dict(draw(st.lists(st.sampled_from(LABELS), max_size=2))),
                available=draw(st.booleans()) or draw(st.booleans()),
                timestamp=draw(st.none() | st.floats(0, 100)),
            )
    return model_of(n_items, users, items), entries


@st.composite
def filters(draw: st.DrawFn, masks: ItemMasks, n_items: int) -> ItemFilter:
    ids = st.sampled_from([f"i{n}" for n in range(n_items + 3)])
    known_categories = sorted(masks.known_categories)
    known_labels = sorted(masks.known_labels)
    return ItemFilter(
        exclude=tuple(draw(st.lists(ids, max_size=5))),
        include=draw(st.none() | st.lists(ids, max_size=8).map(tuple)),
        categories=tuple(draw(st.lists(st.sampled_from(known_categories), max_size=2)))
        if known_categories
        else (),
        exclude_categories=tuple(draw(st.lists(st.sampled_from(known_categories), max_size=1)))
        if known_categories
        else (),
        labels=tuple(draw(st.lists(st.sampled_from(known_labels), max_size=2)))
        if known_labels
        else (),
        new_item_boost=draw(st.sampled_from([0.0, 0.0, 1.5])),
    )


def reference_eligible(
    model: ServingModel, entries: dict[str, CatalogueEntry], item_filter: ItemFilter
) -> list[int]:
    """Item indices the filter allows, one item at a time."""
    allowed = []
    for index, item in enumerate(model.item_ids):
        entry = entries.get(item, CatalogueEntry())
        if not entry.available or item in item_filter.exclude:
            continue
        if item_filter.include is not None and item not in item_filter.include:
            continue
        if item_filter.categories and not set(entry.categories) & set(item_filter.categories):
            continue
        if set(entry.categories) & set(item_filter.exclude_categories):
            continue
        if any(entry.labels.get(key) != value for key, value in item_filter.labels):
            continue
        allowed.append(index)
    return allowed


def reference_top(scores: np.ndarray, allowed: list[int], k: int) -> list[int]:
    return sorted(allowed, key=lambda index: (-scores[index], index))[:k]


NOW = 100.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_filter_combination_gives_the_top_k_of_the_eligible_items(
    data: st.DataObject,
) -> None:
    model, entries = data.draw(catalogues())
    masks = masks_of(model, entries)
    item_filter = data.draw(filters(masks, model.n_items))
    k = data.draw(st.integers(1, model.n_items + 2))
    user = data.draw(st.sampled_from([*model.user_index, "stranger"]))
    seen = data.draw(st.lists(st.sampled_from(model.item_ids), max_size=3))
    options = masks.options(item_filter, 10.0, now=NOW)
    got = model.recommend(user, k, seen, options)

    allowed = [
        i for i in reference_eligible(model, entries, item_filter) if model.item_ids[i] not in seen
    ]
    if user in model.user_index:
        scores = model.score_users([model.user_index[user]])[0]
    else:
        scores = model.popularity.copy()
    boost = masks.boost(item_filter.new_item_boost, NOW, 10.0)
    if boost is not None:
        scores = scores + boost
    expected = reference_top(scores, allowed, k)
    assert got.item_ids == [model.item_ids[i] for i in expected]
    assert len(got.item_ids) == min(k, len(allowed))
    assert got.scores == pytest.approx([float(scores[i]) for i in expected])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_similar_items_and_diverse_lists_hold_only_eligible_items(data: st.DataObject) -> None:
    model, entries = data.draw(catalogues())
    masks = masks_of(model, entries)
    item_filter = data.draw(filters(masks, model.n_items))
    k = data.draw(st.integers(1, model.n_items + 2))
    anchor = data.draw(st.sampled_from(model.item_ids))
    allowed = reference_eligible(model, entries, item_filter)

    similar = model.similar(anchor, k, masks.options(item_filter, 10.0, now=NOW))
    scores = model.item_matrix @ model.item_matrix[model.item_index[anchor]]
    scores *= model.item_inv_norms * model.item_inv_norms[model.item_index[anchor]]
    boost = masks.boost(item_filter.new_item_boost, NOW, 10.0)
    if boost is not None:
        scores = scores + boost
    pool = [i for i in allowed if model.item_ids[i] != anchor]
    assert similar.item_ids == [model.item_ids[i] for i in reference_top(scores, pool, k)]

    diverse_filter = ItemFilter(
        **{**item_filter.__dict__, "diversity": data.draw(st.floats(0.01, 1))}
    )
    diverse = model.recommend("u0", k, options=masks.options(diverse_filter, 10.0, now=NOW))
    assert len(diverse.item_ids) == len(set(diverse.item_ids)) == min(k, len(allowed))
    assert {model.item_index[i] for i in diverse.item_ids} <= set(allowed)
