"""Top-k recommendations for one user or a batch."""

# No `from __future__ import annotations`: the endpoint signatures use names local to
# build_router, which FastAPI must resolve at definition time.

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import Field, create_model

from contracts.events import MAX_ID_LENGTH
from contracts.settings import Settings
from service.ranking import Ranked
from service.schemas import (
    BatchRecommendationRequest,
    BatchRecommendations,
    ErrorMessage,
    Recommendations,
    ScoredItem,
)
from service.state import ServiceState, State

_NO_MODEL = {503: {"model": ErrorMessage, "description": "No model version loaded yet"}}


def _response(user_id: str, ranked: Ranked, version: int) -> Recommendations:
    items = [
        ScoredItem(item_id=item, score=score)
        for item, score in zip(ranked.item_ids, ranked.scores, strict=True)
    ]
    return Recommendations(
        user_id=user_id, items=items, model_version=version, strategy=ranked.strategy
    )


def _rank(
    state: ServiceState, user_ids: list[str], k: int, exclude_seen: bool
) -> tuple[int, list[Ranked]]:
    """Top-k of each user from one model version (seen items left out on request), counted
    per strategy in the metrics; returns (version, ranked lists)."""
    model = state.require_model()
    excludes = [state.seen.items_of(user) if exclude_seen else () for user in user_ids]
    ranked = model.recommend_many(user_ids, k, excludes)
    for result in ranked:
        state.metrics.recommendations.labels(result.strategy).inc()
    return model.version, ranked


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["recommendations"])
    default_k = min(20, settings.max_k)
    k_query = Query(ge=1, le=settings.max_k, description=f"Items to return, 1..{settings.max_k}")
    # The batch body, with k bounded by this deployment's max_k.
    batch_request = create_model(
        "BatchRecommendationRequest",
        __base__=BatchRecommendationRequest,
        k=(int, Field(default_k, ge=1, le=settings.max_k, description="Items per user")),
    )

    @router.get("/recommendations/{user_id}", response_model=Recommendations, responses=_NO_MODEL)
    async def recommend(
        state: State,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, k_query] = default_k,
        exclude_seen: Annotated[
            bool, Query(description="Leave out items the user already interacted with")
        ] = True,
    ) -> Response:
        """Exact top-k over the whole catalogue for a user the model knows
        (`strategy: personalized`); the most popular items for anyone else (`popular`)."""
        # The hot path: ranking one user takes well under a millisecond, less than a thread-pool
        # handoff, so it runs inline; the JSON is built directly from the ranked lists.
        version, (ranked,) = _rank(state, [user_id], k, exclude_seen)
        body = {
            "user_id": user_id,
            "items": [
                {"item_id": item, "score": float(score)}
                for item, score in zip(ranked.item_ids, ranked.scores, strict=True)
            ],
            "model_version": version,
            "strategy": ranked.strategy,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    @router.post("/recommendations", responses=_NO_MODEL)
    def recommend_batch(state: State, request: batch_request) -> BatchRecommendations:  # type: ignore[valid-type]
        """Recommendations for several users, all from the same model version."""
        user_ids = request.user_ids
        version, ranked = _rank(state, user_ids, request.k, request.exclude_seen)
        responses = [
            _response(user, result, version) for user, result in zip(user_ids, ranked, strict=True)
        ]
        return BatchRecommendations(model_version=version, results=responses)

    return router
