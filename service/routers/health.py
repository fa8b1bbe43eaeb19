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
        """Ready once a model version is loaded and the seen-items index has caught up with the
        event log as it was at start (so recommendations exclude what users already saw)."""
        model = state.holder.model
        caught_up = state.tailer.caught_up.is_set()
        arms = state.views.values() or [state]  # with an A/B split every arm needs its model
        is_ready = all(view.holder.model is not None for view in arms) and caught_up
        if not is_ready:
            response.status_code = 503
        return Readiness(
            status="ready" if is_ready else "not ready",
            model_version=model.version if model is not None else None,
            seen_caught_up=caught_up,
        )

    return router
