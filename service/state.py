"""What the request handlers share: the model holder and its store, the seen-items index, the
event log behind its circuit breaker, the impression recorder and the attribution index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from contracts.event_log import EventLog
from contracts.model_store import ModelStore
from contracts.settings import Settings
from contracts.throttle import WarningThrottle
from service.ab import ArmAssigner
from service.attribution import Attribution
from service.breaker import CircuitBreaker
from service.catalogue import CatalogueView
from service.impressions import DEFAULT_ARM, ImpressionRecorder
from service.metrics import ServiceMetrics
from service.model_holder import ModelHolder
from service.ranking import ServingModel
from service.seen import SeenIndex, SeenTailer

RETRY_AFTER_S = 5


@dataclass
class ServiceState:
    settings: Settings
    holder: ModelHolder
    seen: SeenIndex
    tailer: SeenTailer
    event_log: EventLog
    event_breaker: CircuitBreaker
    store: ModelStore
    metrics: ServiceMetrics
    catalogue: CatalogueView
    impressions: ImpressionRecorder
    attribution: Attribution
    # The A/B split (service.ab): ``assign`` names a user's arm, ``views`` holds per arm this
    # state with that arm's model holder and store; without CCD_AB one arm, ``default``: self.
    assign: ArmAssigner = field(default_factory=lambda: ArmAssigner([]))
    views: dict[str, ServiceState] = field(default_factory=dict)
    arm: str = DEFAULT_ARM
    # Log lines about events with unknown fields (updated from several request threads without
    # a lock: a race can only shift which line is logged, never lose an event or a count).
    unknown_field_warnings: WarningThrottle = field(default_factory=WarningThrottle)

    def view_of(self, user_id: str) -> ServiceState:
        """The state whose holder serves ``user_id``'s arm (self without an A/B split)."""
        return self.views.get(self.assign(user_id), self) if self.views else self

    def require_model(self) -> ServingModel:
        """The served version (read once: the caller keeps it for the whole request), or 503."""
        model = self.holder.model
        if model is None:
            raise HTTPException(
                503, "no model version loaded yet", headers={"Retry-After": str(RETRY_AFTER_S)}
            )
        return model


async def get_state(request: Request) -> ServiceState:
    # async: a plain-function dependency would cost every request a thread-pool handoff.
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]
