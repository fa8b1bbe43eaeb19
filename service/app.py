"""The FastAPI application: ``create_app(settings)`` wires the model holder, the seen-items tailer,
the event log and the routers. Background threads start and stop with the app's lifespan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse

from contracts.catalogue import open_catalogue
from contracts.event_log import EventLog, open_event_log
from contracts.model_store import ModelStore, open_model_store
from contracts.settings import Settings
from contracts.version import package_version
from service.ab import ArmAssigner
from service.attribution import Attribution
from service.breaker import CircuitBreaker
from service.catalogue import CatalogueView
from service.head import HeadAsGetMiddleware
from service.impressions import ImpressionRecorder, open_impression_store
from service.limits import BodySizeLimitMiddleware
from service.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.model_holder import ModelHolder
from service.routers import (
    admin,
    dashboard,
    events,
    health,
    items,
    metrics,
    model,
    recommendations,
    stats,
)
from service.routers.catalogue import items_body_limit
from service.seen import build_seen
from service.state import ServiceState

DESCRIPTION = """\
Top-k recommendations from the newest student model of a streaming
Continual Collaborative Distillation trainer. Events posted here feed that trainer.
The `/admin` endpoints need header `X-API-Key` (the server's `CCD_API_KEY`).
"""

# After a failed append, POST /events answers 503 at once for this long before trying again.
EVENT_LOG_COOLDOWN_S = 2.0
# Characters of an invalid input (or of a field name) a 422 echoes back: enough to recognise
# it, while a 39 MB field must not come back as a 39 MB answer.
MAX_ECHOED_CHARS = 200


def _cap(value: Any) -> Any:
    """``value`` as JSON, shortened to about ``MAX_ECHOED_CHARS`` (a string, then) if longer."""
    value = jsonable_encoder(value)
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # e.g. an integer beyond 64 bits, which orjson refuses
            text = json.dumps(value, default=str)
        if len(text) <= MAX_ECHOED_CHARS:
            return value
    if len(text) <= MAX_ECHOED_CHARS:
        return text
    return f"{text[:MAX_ECHOED_CHARS]}... ({len(text)} characters)"


def capped_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors with their ``input`` and ``loc`` parts capped (``_cap``)."""
    capped = []
    for error in errors:
        error = dict(error)
        if "input" in error:
            error["input"] = _cap(error["input"])
        error["loc"] = [part if isinstance(part, int) else _cap(part) for part in error["loc"]]
        capped.append(error)
    return capped


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": jsonable_encoder(capped_errors(error.errors()))}, 422)


def _impression_recorder(
    settings: Settings, metrics: ServiceMetrics, attribution: Attribution
) -> ImpressionRecorder:
    """The recorder of this app: its store opened only when impressions are recorded."""
    store = open_impression_store(settings) if settings.record_impressions else None
    return ImpressionRecorder(store, metrics, settings.impressions_max, on_batch=attribution.add)


def _add_arm_views(state: ServiceState, arm_stores: dict[str, ModelStore]) -> None:
    """With an A/B split (``arm_stores``: each arm's slot store, in CCD_AB order): the user
    assigner and one view of ``state`` per arm, with the arm's model holder (the first arm's is
    ``state.holder``) and store (``service.ab``)."""
    if not arm_stores:
        return
    state.assign = ArmAssigner(state.settings.ab_arms)
    state.arm = next(iter(arm_stores))
    for arm, arm_store in arm_stores.items():
        holder = state.holder
        if arm != state.arm:
            holder = ModelHolder(
                arm_store,
                state.metrics,
                state.settings.reload_poll_s,
                ann_min_items=state.settings.ann_min_items,
            )
            holder.prepare = state.catalogue.prepare
        state.views[arm] = replace(state, holder=holder, store=arm_store, arm=arm, views={})


def _holder_views(state: ServiceState) -> list[ServiceState]:
    """The states whose model holders run: one per arm, or the app's own."""
    return list(state.views.values()) or [state]


def operation_id(route: APIRoute) -> str:
    """OpenAPI operation ids as tag-name (``recommendations-recommend_one``): short method names
    in a generated client, instead of FastAPI's function + path + method."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(
    settings: Settings,
    store: ModelStore | None = None,
    event_log: EventLog | None = None,
    fast_lane: bool = True,
) -> FastAPI:
    """The app for ``settings``. ``store`` / ``event_log`` default to the ones the settings
    select (Redis / Kafka, else embedded under ``data_dir``); those the app opens itself it also
    closes. The seen-items index is this process's, tailing the log from its start, or with
    ``CCD_SEEN_STORE=redis`` the sets in Redis (``service.seen.build_seen``).
    Run it with its lifespan (``with TestClient(app)``, uvicorn). ``fast_lane=False`` sends every
    request through FastAPI's routing (``recommendations.OneUserFastLane`` answers the same)."""
    service_metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned_store = store is None
        owned_log = event_log is None
        model_store = open_model_store(settings) if owned_store else store
        log_writer = open_event_log(settings) if owned_log else event_log
        attribution = Attribution(
            service_metrics,
            settings.attribution_window_s,
            settings.online_window_s,
            settings.impressions_max,
        )
        # With CCD_AB, one store per arm's slot; the first arm's holder is the app's own.
        arm_stores = {arm: open_model_store(settings.for_slot(arm)) for arm, _ in settings.ab_arms}
        first_store = next(iter(arm_stores.values()), model_store)
        holder = ModelHolder(
            first_store,
            service_metrics,
            settings.reload_poll_s,
            ann_min_items=settings.ann_min_items,
        )
        catalogue = CatalogueView(
            open_catalogue(settings), settings.catalogue_poll_s, lambda: holder.model
        )
        holder.prepare = catalogue.prepare  # each new version's filter masks, before its swap
        recorder = _impression_recorder(settings, service_metrics, attribution)

        def observe(events: list[tuple[str, str, str | None]]) -> None:
            recorder.flush()  # impressions of the last moments first
            attribution.observe(events)

        seen, tailer = build_seen(settings, service_metrics, observe)  # memory or Redis
        state = ServiceState(
            settings=settings,
            holder=holder,
            seen=seen,
            tailer=tailer,
            event_log=log_writer,
            event_breaker=CircuitBreaker(EVENT_LOG_COOLDOWN_S),
            store=first_store,
            metrics=service_metrics,
            catalogue=catalogue,
            impressions=recorder,
            attribution=attribution,
        )
        _add_arm_views(state, arm_stores)
        app.state.service = state
        state.tailer.start()
        state.catalogue.start()  # read before the first model, whose masks it feeds
        for view in _holder_views(state):
            view.holder.start()
        state.impressions.start()
        try:
            yield
        finally:
            state.impressions.stop()
            if state.impressions.store is not None:
                state.impressions.store.close()
            state.catalogue.stop()
            state.catalogue.store.close()
            for view in _holder_views(state):
                view.holder.stop()
            for arm_store in arm_stores.values():
                arm_store.close()
            state.tailer.stop()
            state.seen.close()
            if owned_log:
                log_writer.close()
            if owned_store:
                model_store.close()

    app = FastAPI(
        title="CCD recommender",
        version=package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    recommendation_routes = recommendations.build_router(settings)
    if fast_lane:  # innermost: the metrics middleware counts and times it like any route
        app.add_middleware(
            recommendations.OneUserFastLane,
            router=recommendation_routes,
            max_k=settings.max_k,
            max_filter_ids=settings.max_filter_ids,
        )
    app.add_middleware(
        BodySizeLimitMiddleware,
        limits={
            "/events": events.events_body_limit(settings),
            "/items": items_body_limit(settings),
        },
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    app.add_middleware(HeadAsGetMiddleware)  # outermost: every route and the lane see a GET
    app.include_router(recommendation_routes)
    app.include_router(items.build_router(settings))
    app.include_router(events.build_router(settings))
    app.include_router(model.build_router())
    app.include_router(health.build_router())
    app.include_router(metrics.build_router())
    app.include_router(admin.build_router(settings))
    app.include_router(stats.build_router())
    app.include_router(dashboard.build_router())
    app.mount("/dashboard/static", dashboard.static_files(), name="dashboard-static")
    _document_answers_before_routing(app)
    return app


def _document_answers_before_routing(app: FastAPI) -> None:
    """Adds to the OpenAPI schema two answers Starlette and FastAPI give before any route runs,
    so a client generated from the schema knows them: 400 where a body's bytes cannot be parsed
    at all (not UTF-8, say), and 404 where a path parameter is empty (or, for one that cannot
    hold ``/``, holds one): such a URL matches no operation."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_schema()
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    answers = operation["responses"]
                    if "requestBody" in operation:
                        answers.setdefault(
                            "400", {"description": "The body could not be parsed", "content": error}
                        )
                    if "{" in path:
                        answers.setdefault(
                            "404", {"description": "The URL matches no operation", "content": error}
                        )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
