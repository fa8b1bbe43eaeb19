"""Item-to-item neighbours in the student's embedding space."""

# No `from __future__ import annotations`: the endpoint signatures use names local to
# build_router, which FastAPI must resolve at definition time.

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from contracts.events import MAX_ID_LENGTH
from contracts.settings import Settings
from service.schemas import ErrorMessage, ScoredItem, SimilarItems
from service.state import State


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["items"])
    default_k = min(20, settings.max_k)
    k_query = Query(ge=1, le=settings.max_k, description=f"Items to return, 1..{settings.max_k}")

    @router.get(
        "/items/{item_id:path}/similar",  # `:path`: an id may hold "/"
        responses={
            404: {"model": ErrorMessage, "description": "The model does not know this item"},
            503: {"model": ErrorMessage, "description": "No model version loaded yet"},
        },
    )
    def similar_items(
        state: State,
        item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, k_query] = default_k,
    ) -> SimilarItems:
        """The k items nearest to `item_id` by cosine similarity of the student's item
        embeddings, the item itself left out."""
        model = state.require_model()
        try:
            ranked = model.similar(item_id, k)
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

    return router
