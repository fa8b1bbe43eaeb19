"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.schemas import Liveness, Readiness
from service.state import StateDep


def build_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    def live() -> Liveness:
        """The process is up."""
        return Liveness()

    @router.get("/health/ready", responses={503: {"model": Readiness, "description": "Not ready"}})
    def ready(state: StateDep, response: Response) -> Readiness:
        """Ready once a model version is loaded (every A/B arm's), the seen-items index has
        caught up with the event log as it was at start (so recommendations exclude what users
        already saw) and the item catalogue has been read once (so availability and category
        filters know the items); `reasons` says what is missing."""
        model = state.holder.model
        caught_up = state.tailer.caught_up.is_set()
        catalogue_loaded = state.catalogue.loaded.is_set()
        arms = state.views.values() or [state]  # with an A/B split every arm needs its model
        reasons = [
            f"no model version loaded yet{f' (arm {view.arm})' if state.views else ''}"
            for view in arms
            if view.holder.model is None
        ]
        if not caught_up:
            reasons.append("the seen-items index is still reading the event log up to its end")
        if not catalogue_loaded:
            reasons.append("the item catalogue has not been read yet (is its store reachable?)")
        if reasons:
            response.status_code = 503
        return Readiness(
            status="not ready" if reasons else "ready",
            model_version=model.version if model is not None else None,
            seen_caught_up=caught_up,
            catalogue_loaded=catalogue_loaded,
            reasons=reasons,
            seen_records_lost=state.tailer.records_lost,
        )

    return router
