"""Top-k recommendations for one user or a batch."""

# No `from __future__ import annotations`: the endpoint signatures use names local to
# build_router, which FastAPI must resolve at definition time.

import asyncio
from collections.abc import Container, Sequence
from typing import Annotated
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field, create_model
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts.events import MAX_ID_LENGTH
from contracts.settings import Settings
from service.catalogue import NO_FILTER, ItemFilter
from service.filters import (
    LIST_PARAMETERS,
    NUMBER_PARAMETERS,
    FilterFields,
    build_filter_query,
    lane_filter,
    rank_options,
)
from service.ranking import Ranked
from service.schemas import (
    BatchRecommendationRequest,
    BatchRecommendations,
    ErrorMessage,
    Recommendations,
    ScoredItem,
)
from service.seen_store import SeenUnavailable
from service.state import ServiceState, StateDep

_NO_MODEL = {
    503: {
        "model": ErrorMessage,
        "description": "No model version loaded yet, or the seen-items store is unavailable",
    }
}
# `:path`: an id may hold "/" (the event contract allows it), as such or percent-encoded.
ONE_USER_ROUTE = "/recommendations/{user_id:path}"


def _default_k(max_k: int) -> int:
    return min(20, max_k)


def _response(
    user_id: str, ranked: Ranked, version: int, recommendation_id: str, arm: str
) -> Recommendations:
    items = [
        ScoredItem(item_id=item, score=score)
        for item, score in zip(ranked.item_ids, ranked.scores, strict=True)
    ]
    return Recommendations(
        user_id=user_id,
        items=items,
        model_version=version,
        strategy=ranked.strategy,
        recommendation_id=recommendation_id,
        arm=arm,
    )


def _rank(
    state: ServiceState,
    user_ids: Sequence[str],
    k: int,
    exclude_seen: Sequence[bool],
    item_filter: ItemFilter = NO_FILTER,
    where: str = "query",
) -> tuple[int, list[Ranked]]:
    """Top-k of each user from one model version (that user's seen items left out where asked,
    and every item ``item_filter`` or the catalogue rules out), counted per strategy in the
    metrics; returns (version, ranked lists)."""
    model = state.require_model()
    options = rank_options(state, model, item_filter, where)
    seen = _seen_items(state, user_ids, exclude_seen, model.user_index)
    excludes = [items if exclude else () for items, exclude in zip(seen, exclude_seen, strict=True)]
    ranked = model.recommend_many(user_ids, k, excludes, options, histories=seen)
    for result in ranked:
        state.metrics.recommendations.labels(result.strategy).inc()
    return model.version, ranked


def _seen_items(
    state: ServiceState,
    user_ids: Sequence[str],
    exclude_seen: Sequence[bool],
    known: Container[str],
) -> list[frozenset[str]]:
    """Each user's seen items, read in one round trip (``state.seen.items_of_many``) for the
    users that need them: those whose seen items are excluded, and those the model does not
    know (fold-in starts from them); empty for the others. 503 (Retry-After) if the store
    cannot answer: never a list that might hold items the user has seen."""
    needed = [
        user
        for user, exclude in zip(user_ids, exclude_seen, strict=True)
        if exclude or user not in known
    ]
    try:
        found = dict(zip(needed, state.seen.items_of_many(needed), strict=True)) if needed else {}
    except SeenUnavailable as error:
        raise HTTPException(
            503, str(error), headers={"Retry-After": str(error.retry_after_s)}
        ) from None
    return [found.get(user, frozenset()) for user in user_ids]


def _one_user_response(
    user_id: str, version: int, ranked: Ranked, recommendation_id: str, arm: str
) -> Response:
    """The answer of ``GET /recommendations/{user_id}``, JSON built directly from the ranked
    lists (response-model validation costs more than the ranking)."""
    body = {
        "user_id": user_id,
        "items": [
            {"item_id": item, "score": float(score)}
            for item, score in zip(ranked.item_ids, ranked.scores, strict=True)
        ],
        "model_version": version,
        "strategy": ranked.strategy,
        "recommendation_id": recommendation_id,
        "arm": arm,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["recommendations"])
    default_k = _default_k(settings.max_k)
    k_query = Query(
        ge=1, le=settings.max_k, description=f"Items to return, 1..{settings.max_k}", examples=[10]
    )
    # The batch body, with k bounded by this deployment's max_k.
    filter_query = build_filter_query(settings)
    batch_request = create_model(
        "BatchRecommendationRequest",
        __base__=(BatchRecommendationRequest, FilterFields),
        k=(
            int,
            Field(default_k, ge=1, le=settings.max_k, description="Items per user", examples=[10]),
        ),
    )

    @router.get(ONE_USER_ROUTE, response_model=Recommendations, responses=_NO_MODEL)
    async def recommend(
        state: StateDep,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, examples=["u7"])],
        k: Annotated[int, k_query] = default_k,
        exclude_seen: Annotated[
            bool,
            Query(description="Leave out items the user already interacted with", examples=[True]),
        ] = True,
        item_filter: Annotated[ItemFilter, Depends(filter_query)] = NO_FILTER,
    ) -> Response:
        """Exact top-k over the whole catalogue for a user the model knows
        (`strategy: personalized`); the most popular items for anyone else (`popular`).
        Filters restrict it to the eligible items (still exactly k when k are eligible)."""
        # Ranking one user takes well under a millisecond, less than a thread-pool handoff, so
        # it runs inline on the event loop.
        state = state.view_of(user_id)  # the user's A/B arm (service.ab)
        version, (ranked,) = _rank(state, [user_id], k, [exclude_seen], item_filter)
        rid = state.impressions.record(user_id, ranked.item_ids, version, state.arm)
        return _one_user_response(user_id, version, ranked, rid, state.arm)

    @router.post("/recommendations", responses=_NO_MODEL)
    def recommend_batch(state: StateDep, request: batch_request) -> BatchRecommendations:  # type: ignore[valid-type]
        """Recommendations for several users, all from the same model version (with an A/B
        split: each user's arm's; `model_version` is then the first user's)."""
        user_ids = request.user_ids
        item_filter = request.item_filter(settings)
        by_arm: dict[str, list[int]] = {}
        for position, user in enumerate(user_ids):
            by_arm.setdefault(state.view_of(user).arm, []).append(position)
        responses: list[Recommendations | None] = [None] * len(user_ids)
        for positions in by_arm.values():
            view = state.view_of(user_ids[positions[0]])
            users = [user_ids[p] for p in positions]
            seen = [request.exclude_seen] * len(users)
            version, ranked = _rank(view, users, request.k, seen, item_filter, "body")
            for position, user, result in zip(positions, users, ranked, strict=True):
                rid = state.impressions.record(user, result.item_ids, version, view.arm)
                responses[position] = _response(user, result, version, rid, view.arm)
        results = [response for response in responses if response is not None]
        return BatchRecommendations(model_version=results[0].model_version, results=results)

    return router


_PREFIX = "/recommendations/"
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class OneUserFastLane:
    """ASGI shortcut in front of FastAPI for the hottest request, `GET /recommendations/{user_id}`.

    FastAPI's routing, dependency solving and parameter validation cost about as much CPU as
    ranking 41k items. A request this class can vouch for (a user id of 1..MAX_ID_LENGTH
    characters, at most the parameters ``k`` as plain digits in 1..max_k and ``exclude_seen`` as
    true/false/1/0, each once, and a model loaded) is ranked here, together with the others that
    arrived in the same event-loop turn (``OneUserBatcher``), and answered with the route's own
    ``_one_user_response``; anything else, including every invalid request, goes through FastAPI
    untouched, so error answers and the OpenAPI schema come from the route alone. A request with
    filter parameters that ``service.filters.lane_filter`` vouches for is ranked here too, alone
    and inline; one whose filter ``_rank`` refuses (an unknown category) goes to the route.
    """

    def __init__(
        self, app: ASGIApp, router: APIRouter, max_k: int, max_filter_ids: int = 10_000
    ) -> None:
        """``router``: this module's ``build_router(settings)``, as included in the app."""
        self.app = app
        self.max_k = max_k
        self.max_filter_ids = max_filter_ids
        self.default_k = _default_k(max_k)
        self.batchers: dict[str, OneUserBatcher] = {}  # by A/B arm
        # Set as the request's route, as FastAPI would: the metrics middleware labels by it.
        self.route: BaseRoute = next(
            route for route in router.routes if getattr(route, "path", None) == ONE_USER_ROUTE
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = self._plain_request(scope)
        if request is None:
            await self.app(scope, receive, send)
            return
        user_id, k, exclude_seen, item_filter = request
        state: ServiceState = scope["app"].state.service.view_of(user_id)  # the user's arm
        if state.holder.model is None:  # the route answers 503
            await self.app(scope, receive, send)
            return
        if item_filter is NO_FILTER:
            scope["route"] = self.route
            batcher = self.batchers.setdefault(state.arm, OneUserBatcher())  # one per arm
            try:
                version, ranked = await batcher.rank(state, user_id, k, exclude_seen)
            except HTTPException:  # the seen items unavailable: the route answers the 503
                await self.app(scope, receive, send)
                return
        else:  # ranked alone, inline, as the route would; a filter it refuses goes there (422)
            try:
                version, (ranked,) = _rank(state, [user_id], k, [exclude_seen], item_filter)
            except (RequestValidationError, HTTPException):
                await self.app(scope, receive, send)
                return
            scope["route"] = self.route
        rid = state.impressions.record(user_id, ranked.item_ids, version, state.arm)
        await _one_user_response(user_id, version, ranked, rid, state.arm)(scope, receive, send)

    def _plain_request(self, scope: Scope) -> tuple[str, int, bool, ItemFilter] | None:
        """(user_id, k, exclude_seen, filter) of a request that needs no validation error (the
        filter parameters as ``lane_filter`` vouches for them), else None."""
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return None
        user_id = path[len(_PREFIX) :]
        if not 0 < len(user_id) <= MAX_ID_LENGTH:
            return None
        k, exclude_seen = self.default_k, True
        try:
            parameters = parse_qsl(
                scope["query_string"].decode("ascii"), keep_blank_values=True, strict_parsing=True
            )
        except ValueError:  # not ASCII, or not name=value pairs
            return None
        names = [name for name, _ in parameters if name not in LIST_PARAMETERS]
        if len(set(names)) != len(names):
            return None
        filters: dict[str, list[str]] = {}
        for name, value in parameters:
            if name == "k" and value.isascii() and value.isdigit() and len(value) <= 9:
                k = int(value)
                if not 1 <= k <= self.max_k:
                    return None
            elif name == "exclude_seen" and value in _BOOLEANS:
                exclude_seen = _BOOLEANS[value]
            elif name in LIST_PARAMETERS or name in NUMBER_PARAMETERS:
                filters.setdefault(name, []).append(value)
            else:
                return None
        item_filter = lane_filter(filters, self.max_filter_ids) if filters else NO_FILTER
        if item_filter is None:
            return None
        return user_id, k, exclude_seen, item_filter


class OneUserBatcher:
    """Ranks the one-user requests that reach it in the same event-loop turn with one call.

    Under concurrent load several requests are parsed in one turn; they are scored into one
    (B, I) matrix by ``ServingModel.recommend_many`` (one row after the other, while the 2.6 MB
    item table at 41k items, d=16 stays in cache) and pay the per-call costs once. The ranking
    runs one turn later, as a plain callback, so a lone request waits only for that turn. All
    answers of a turn come from the same model version; each is exactly what ``_rank`` gives
    that request alone (the top-k of the largest k, cut to each request's k: rankings break ties
    by item index).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, int, bool, asyncio.Future[tuple[int, Ranked]]]] = []

    async def rank(
        self, state: ServiceState, user_id: str, k: int, exclude_seen: bool
    ) -> tuple[int, Ranked]:
        """(version, ranked list) of one user, as ``_rank`` gives it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, Ranked]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush, state)
        self._pending.append((user_id, k, exclude_seen, future))
        return await future

    def _flush(self, state: ServiceState) -> None:
        batch = [entry for entry in self._pending if not entry[3].done()]  # done: client left
        self._pending = []
        if not batch:
            return
        try:
            users, ks, excludes, _ = zip(*batch, strict=True)
            version, ranked = _rank(state, users, max(ks), excludes)
        except Exception as error:  # every waiting request answers it (500), none hangs
            for *_, future in batch:
                future.set_exception(error)
            return
        for (_, k, _, future), result in zip(batch, ranked, strict=True):
            cut = Ranked(result.item_ids[:k], result.scores[:k], result.strategy)
            future.set_result((version, cut))
