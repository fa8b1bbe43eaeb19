"""Request-time filters of the recommendation routes: the query parameters of the GET routes,
the body fields of ``POST /recommendations``, their bounds, and the ranking options they make.

Every route takes the same filters: ``exclude`` / ``include`` (item ids, at most
``CCD_MAX_FILTER_IDS`` each), ``categories`` (any of them), ``exclude_categories``, ``label``
conditions ``key:value`` (all of them), and the controls ``diversity`` (MMR, 0..1) and
``new_item_boost``. Unavailable items are always left out. A category or label that no item of
the catalogue has is a 422 naming it (most likely a typo), as is a malformed label or a list
beyond its bound; nothing about the request is kept.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency's signature.

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from contracts.catalogue import MAX_TAG_LENGTH, Tag
from contracts.events import MAX_ID_LENGTH
from contracts.settings import Settings
from service.catalogue import ItemFilter, UnknownFilterValue
from service.ranking import RankOptions, ServingModel
from service.state import ServiceState

# Categories, excluded categories and label conditions one request may name (each).
MAX_FILTER_VALUES = 100

_DIVERSITY = (
    "0..1: 0 = the exact top-k; higher trades relevance for variety (maximal marginal "
    "relevance over the student's item embeddings)"
)
_BOOST = (
    "Added to the score of recently added items: new_item_boost * 0.5 ** (age / "
    "CCD_NEW_ITEM_HALF_LIFE_S), age from the catalogue timestamp; 0 = off"
)


def _invalid(loc: tuple[str | int, ...], message: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


def parse_label(condition: str) -> tuple[str, str]:
    """``"key:value"`` as ``(key, value)``, split at the first ``:``; ValueError if malformed.

    Examples:
        >>> parse_label("color:red")
        ('color', 'red')
        >>> parse_label("size:10:12")
        ('size', '10:12')
    """
    key, colon, value = condition.partition(":")
    if not colon or not key or not value:
        raise ValueError("a label condition is key:value, both non-empty")
    if len(key) > MAX_TAG_LENGTH or len(value) > MAX_TAG_LENGTH:
        raise ValueError(f"label key and value hold at most {MAX_TAG_LENGTH} characters each")
    return key, value


def make_filter(
    where: str,
    settings: Settings,
    exclude: Sequence[str] | None,
    include: Sequence[str] | None,
    categories: Sequence[str] | None,
    exclude_categories: Sequence[str] | None,
    label: Sequence[str] | None,
    diversity: float,
    new_item_boost: float,
) -> ItemFilter:
    """The ``ItemFilter`` of a request's parameters (``where``: "query" or "body"); 422 when an
    id list is longer than ``max_filter_ids`` or a label is malformed."""
    limit = settings.max_filter_ids
    for name, ids in (("exclude", exclude), ("include", include)):
        if ids is not None and len(ids) > limit:
            raise _invalid(
                (where, name),
                f"{len(ids)} item ids; at most {limit} per request (CCD_MAX_FILTER_IDS)",
                f"{len(ids)} ids",
            )
    labels = []
    for position, condition in enumerate(label or ()):
        try:
            labels.append(parse_label(condition))
        except ValueError as error:
            raise _invalid((where, "label", position), str(error), condition[:200]) from None
    return ItemFilter(
        exclude=tuple(exclude or ()),
        include=None if include is None else tuple(include),
        categories=tuple(categories or ()),
        exclude_categories=tuple(exclude_categories or ()),
        labels=tuple(labels),
        diversity=diversity,
        new_item_boost=new_item_boost,
    )


def rank_options(
    state: ServiceState, model: ServingModel, item_filter: ItemFilter, where: str = "query"
) -> RankOptions:
    """The ranking options of ``item_filter`` over ``model``; 422 for a category or label the
    catalogue does not know."""
    masks = state.catalogue.masks_for(model)
    try:
        masks.check(item_filter)
    except UnknownFilterValue as error:
        field = {"category": "categories", "label": "label"}[error.field]
        if error.field == "category" and error.value not in item_filter.categories:
            field = "exclude_categories"
        raise _invalid((where, field), str(error), error.value) from None
    return masks.options(item_filter, state.settings.new_item_half_life_s)


IdList = Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH)]


def build_filter_query(settings: Settings) -> Callable[..., ItemFilter]:
    """The dependency that reads the filter query parameters of a GET route."""
    ids = settings.max_filter_ids

    def filter_query(
        exclude: Annotated[
            list[str] | None,
            Query(
                description=f"Item ids never to return (repeat the parameter; at most {ids})",
                examples=[["i3", "i7"]],
            ),
        ] = None,
        include: Annotated[
            list[str] | None,
            Query(
                description=f"Return only these item ids (repeat the parameter; at most {ids})",
                examples=[["i1", "i2", "i5"]],
            ),
        ] = None,
        categories: Annotated[
            list[Tag] | None,
            Query(
                max_length=MAX_FILTER_VALUES,
                description="Only items in any of these categories",
                examples=[["shoes"]],
            ),
        ] = None,
        exclude_categories: Annotated[
            list[Tag] | None,
            Query(
                max_length=MAX_FILTER_VALUES,
                description="No item in any of these categories",
                examples=[["adult"]],
            ),
        ] = None,
        label: Annotated[
            list[str] | None,
            Query(
                max_length=MAX_FILTER_VALUES,
                description="key:value label conditions, all required (repeat the parameter)",
                examples=[["color:red"]],
            ),
        ] = None,
        diversity: Annotated[
            float, Query(ge=0, le=1, description=_DIVERSITY, examples=[0.3])
        ] = 0.0,
        new_item_boost: Annotated[
            float, Query(ge=0, allow_inf_nan=False, description=_BOOST, examples=[0.5])
        ] = 0.0,
    ) -> ItemFilter:
        for name, values in (("exclude", exclude), ("include", include)):
            for position, item in enumerate(values or ()):
                if not 0 < len(item) <= MAX_ID_LENGTH:
                    raise _invalid(
                        ("query", name, position),
                        f"an item id has 1..{MAX_ID_LENGTH} characters",
                        item[:200],
                    )
        return make_filter(
            "query",
            settings,
            exclude,
            include,
            categories,
            exclude_categories,
            label,
            diversity,
            new_item_boost,
        )

    return filter_query


class FilterFields(BaseModel):
    """The filter fields of a recommendation request body (``POST /recommendations``)."""

    exclude: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]] = Field(
        default_factory=list,
        description="Item ids never to return (at most CCD_MAX_FILTER_IDS)",
        examples=[["i3", "i7"]],
    )
    include: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]] | None = Field(
        None,
        description="Return only these item ids (at most CCD_MAX_FILTER_IDS); null = all",
        examples=[["i1", "i2", "i5"]],
    )
    categories: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="Only items in any of these categories",
        examples=[["shoes"]],
    )
    exclude_categories: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="No item in any of these categories",
        examples=[["adult"]],
    )
    label: list[str] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="key:value label conditions, all required",
        examples=[["color:red"]],
    )
    diversity: float = Field(0.0, ge=0, le=1, description=_DIVERSITY, examples=[0.3])
    new_item_boost: float = Field(
        0.0, ge=0, allow_inf_nan=False, description=_BOOST, examples=[0.5]
    )

    def item_filter(self, settings: Settings) -> ItemFilter:
        return make_filter(
            "body",
            settings,
            self.exclude,
            self.include,
            self.categories,
            self.exclude_categories,
            self.label,
            self.diversity,
            self.new_item_boost,
        )


# --- the fast lane's reading of the same parameters ------------------------------------------

LIST_PARAMETERS = frozenset({"exclude", "include", "categories", "exclude_categories", "label"})
NUMBER_PARAMETERS = frozenset({"diversity", "new_item_boost"})
_PLAIN_NUMBER = re.compile(r"\d{1,9}(\.\d{1,9})?")


def lane_filter(parameters: dict[str, list[str]], max_ids: int) -> ItemFilter | None:
    """The ``ItemFilter`` of filter query parameters that the route would accept, or None when
    the route must judge them (then it answers, 422 included). Stricter than the route: numbers
    only as plain decimals; whether a category or label exists is checked by the caller.

    Examples:
        >>> lane_filter({"categories": ["a", "b"], "label": ["color:red"]}, 10).labels
        (('color', 'red'),)
        >>> lane_filter({"diversity": ["0.25"]}, 10).diversity
        0.25
        >>> refused = [{"exclude": ["x", "y"]}, {"label": ["c"]}, {"diversity": ["2"]}]
        >>> [lane_filter(parameters, 1) for parameters in refused]
        [None, None, None]
    """
    numbers: dict[str, float] = {}
    for name in NUMBER_PARAMETERS & parameters.keys():
        values = parameters[name]
        if len(values) != 1 or not _PLAIN_NUMBER.fullmatch(values[0]):
            return None
        numbers[name] = float(values[0])
    if numbers.get("diversity", 0.0) > 1:
        return None
    ids = {name: parameters.get(name) for name in ("exclude", "include")}
    for values in ids.values():
        if values is not None and (
            len(values) > max_ids or not all(0 < len(v) <= MAX_ID_LENGTH for v in values)
        ):
            return None
    tags = {name: parameters.get(name, []) for name in ("categories", "exclude_categories")}
    for values in (*tags.values(), parameters.get("label", [])):
        if len(values) > MAX_FILTER_VALUES or not all(0 < len(v) <= MAX_TAG_LENGTH for v in values):
            return None
    try:
        labels = tuple(parse_label(condition) for condition in parameters.get("label", []))
    except ValueError:
        return None
    return ItemFilter(
        exclude=tuple(ids["exclude"] or ()),
        include=None if ids["include"] is None else tuple(ids["include"]),
        categories=tuple(tags["categories"]),
        exclude_categories=tuple(tags["exclude_categories"]),
        labels=labels,
        diversity=numbers.get("diversity", 0.0),
        new_item_boost=numbers.get("new_item_boost", 0.0),
    )
