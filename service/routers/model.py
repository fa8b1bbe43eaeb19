"""The served model version and its metadata."""

from __future__ import annotations

from fastapi import APIRouter

from service.schemas import ErrorMessage, ModelInfo
from service.state import StateDep


def build_router() -> APIRouter:
    router = APIRouter(tags=["model"])

    @router.get("/model", responses={503: {"model": ErrorMessage}})
    def model_info(state: StateDep) -> ModelInfo:
        """The served version and its metadata (block, training time, prequential metrics...)."""
        model = state.require_model()
        return ModelInfo(
            version=model.version,
            loaded_at=model.loaded_at,
            n_users=model.n_users,
            n_items=model.n_items,
            dim=model.dim,
            meta=model.meta,
        )

    return router
