"""The Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.state import StateDep


def build_router() -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response)
    def metrics(state: StateDep) -> Response:
        """Request counts and latency, model version and reloads, events accepted, seen index,
        impressions and their online hit rate."""
        state.attribution.stats()  # refreshes the ccd_online_hit_rate gauges
        state.metrics.refresh_seen_counts(state.seen.counts)  # Redis: at most every 5 s
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
