"""Operator endpoints: the kept model versions, and rollback to one of them.

Every admin request must carry header ``X-API-Key`` equal to ``settings.api_key``
(``CCD_API_KEY``); a missing or wrong key gets 401. With no key configured the endpoints are
disabled (403) rather than open. Keys are compared in constant time.
"""

# No `from __future__ import annotations`: the endpoint signatures use names local to
# build_router, which FastAPI must resolve at definition time.

import logging

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import APIKeyHeader

from contracts.model_store import CorruptModelError
from contracts.settings import Settings
from service.guards import (
    API_KEY_HEADER,
    UNSUPPORTED_MEDIA_TYPE,
    configured_key,
    key_checker,
    require_json,
)
from service.schemas import ErrorMessage, RollbackRequest, RollbackResult, VersionsInfo
from service.state import RETRY_AFTER_S, ServiceState, StateDep

log = logging.getLogger(__name__)

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Equal to the server's CCD_API_KEY",
)
_DISABLED = "admin endpoints are disabled: no API key is configured (set CCD_API_KEY)"


def _store_unavailable(error: Exception) -> HTTPException:
    log.warning("model store unavailable for an admin request: %s", error)
    return HTTPException(
        503, f"model store unavailable: {error}", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _slot_state(state: ServiceState, slot: str | None) -> ServiceState:
    """The state of an A/B arm's slot (``state`` itself for None); 404 for an unknown one."""
    if slot is None or (not state.views and slot == state.arm):
        return state
    if slot not in state.views:
        raise HTTPException(404, f"no model slot {slot!r} here (CCD_AB names the slots)")
    return state.views[slot]


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[
            Depends(key_checker(configured_key(settings.api_key), _api_key_header, _DISABLED))
        ],
        responses={
            401: {"model": ErrorMessage, "description": "Missing or wrong X-API-Key"},
            403: {"model": ErrorMessage, "description": "Admin disabled: no key configured"},
            503: {"model": ErrorMessage, "description": "The model store is unreachable"},
        },
    )

    @router.get("/versions", responses={404: {"model": ErrorMessage, "description": "No slot"}})
    def versions(state: StateDep, slot: str | None = None) -> VersionsInfo:
        """The versions the store keeps, the one its pointer names and the one served here
        (of an A/B arm's `slot`; default: the first arm, or the one slot)."""
        state = _slot_state(state, slot)
        try:
            kept, current = state.store.versions(), state.store.current_version()
        except Exception as error:
            raise _store_unavailable(error) from None
        served = state.holder.model
        return VersionsInfo(
            versions=kept, current=current, served=served.version if served else None
        )

    @router.post(
        "/rollback",
        dependencies=[Depends(require_json)],  # after the key: 401/403 before 415
        responses={
            **UNSUPPORTED_MEDIA_TYPE,
            404: {"model": ErrorMessage, "description": "No such kept version, or slot"},
            409: {"model": ErrorMessage, "description": "The version fails its checks"},
        },
    )
    def rollback(state: StateDep, request: RollbackRequest) -> RollbackResult:
        """Point the store's current version at a kept one and serve it here at once (other
        servers follow the store's notification). The trainer's next publication supersedes
        it, as any new version does. With an A/B split, `slot` names the arm."""
        state = _slot_state(state, request.slot)
        served = state.holder.model
        try:
            model = state.holder.rollback(request.version)
        except KeyError:
            raise HTTPException(404, f"version {request.version} is not kept") from None
        except CorruptModelError as error:
            raise HTTPException(409, f"version {request.version} refused: {error}") from None
        except Exception as error:
            raise _store_unavailable(error) from None
        log.warning("rolled back to model version %d by an admin request", model.version)
        return RollbackResult(version=model.version, previous=served.version if served else None)

    return router
