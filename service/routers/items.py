"""The items resource: neighbours in the student's embedding space, and the item catalogue.

``PUT /items/{item_id}`` (one item) and ``PUT /items`` (a JSON array, all or none) write
categories, labels, availability and the added-time to the catalogue store
(``contracts.catalogue``), shared by every server; ``GET /items/{item_id}`` reads this server's
copy (an item seen only in events or known to the model has empty metadata);
``DELETE /items/{item_id}`` hides the item (it is never recommended again) and keeps its
metadata. Writes take the guards of ``POST /events``: ``Content-Type: application/json`` (415)
and, when ``CCD_EVENTS_API_KEY`` is set, header ``X-API-Key`` (401). A write is in force on the
server that answered it when it returns, and on every other server within
``CCD_CATALOGUE_POLL_S``.
"""

# No `from __future__ import annotations`: the endpoint signatures use names local to
# build_router, which FastAPI must resolve at definition time.

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from contracts.events import MAX_ID_LENGTH
from contracts.settings import Settings
from service.catalogue import NO_FILTER, ItemFilter
from service.filters import build_filter_query, rank_options
from service.routers.catalogue import add_catalogue_routes
from service.schemas import ErrorMessage, ScoredItem, SimilarItems
from service.state import StateDep


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["items"])
    default_k = min(20, settings.max_k)
    k_query = Query(
        ge=1, le=settings.max_k, description=f"Items to return, 1..{settings.max_k}", examples=[10]
    )
    filter_query = build_filter_query(settings)

    @router.get(
        "/items/{item_id:path}/similar",  # `:path`: an id may hold "/"
        responses={
            404: {"model": ErrorMessage, "description": "The model does not know this item"},
            503: {"model": ErrorMessage, "description": "No model version loaded yet"},
        },
    )
    def similar_items(
        state: StateDep,
        item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, examples=["i3"])],
        k: Annotated[int, k_query] = default_k,
        item_filter: Annotated[ItemFilter, Depends(filter_query)] = NO_FILTER,
    ) -> SimilarItems:
        """The k items nearest to `item_id` by cosine similarity of the student's item
        embeddings, the item itself left out, among the items the filters allow."""
        model = state.require_model()
        options = rank_options(state, model, item_filter)
        try:
            ranked = model.similar(item_id, k, options)
        except KeyError:
            raise HTTPException(404, f"unknown item {item_id!r}") from None
        items = [
            ScoredItem(item_id=item, score=score)
            for item, score in zip(ranked.item_ids, ranked.scores, strict=True)
        ]
        rid = state.impressions.record(None, ranked.item_ids, model.version)
        return SimilarItems(
            item_id=item_id, items=items, model_version=model.version, recommendation_id=rid
        )

    add_catalogue_routes(router, settings)  # after /similar: its path must match first
    return router
