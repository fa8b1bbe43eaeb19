"""Online metrics: hit rate and CTR@k of the recommendations served, per model version and arm.

``service.attribution`` says what a hit is and where attribution runs (the seen-items tailer).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.state import StateDep


def build_router() -> APIRouter:
    router = APIRouter(tags=["stats"])

    @router.get("/stats/online")
    def online_stats(state: StateDep) -> dict[str, Any]:
        """Over the last `window_s` seconds of impressions: per model version and arm, and per
        arm, the impressions, items shown, impressions with a hit (`hit_rate`, with its 95 %
        Wilson interval `hit_rate_ci95`) and attributed (impression, item) pairs (`hits`;
        `ctr` = hits / items shown, the CTR@k of lists of k items)."""
        return state.attribution.stats()

    return router
