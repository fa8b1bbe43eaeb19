"""POST /events: validate interaction events and append them to the event stream.

The body is parsed by hand rather than declared as a parameter so that each error names the
failing event and field (``["body", 3, "item_id"]``); ``service.limits`` has already refused (413)
a body larger than ``events_body_limit(settings)``. A log that cannot take the events gets a 503
with ``Retry-After`` and nothing is acknowledged: a 202 means every event of the request was
appended (Kafka: acks=all), anything else means the client should retry, keeping each event's
``event_id`` so that a retry of events that did get through is recognised by the trainer.

Fields the event contract does not know are ignored (not appended), and the events that carried
some are counted (``ccd_events_unknown_fields_total``) and logged without a flood.

Writes need ``Content-Type: application/json`` (415 otherwise: no cross-site form can post
events) and, when ``CCD_EVENTS_API_KEY`` is set, header ``X-API-Key`` with that key (401).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from contracts.event_log import EventLogUnavailable
from contracts.events import InteractionEvent, parse_event, shown_fields
from contracts.settings import Settings
from service.breaker import BreakerOpen
from service.guards import (
    API_KEY_HEADER,
    UNSUPPORTED_MEDIA_TYPE,
    configured_key,
    key_checker,
    require_json,
)
from service.schemas import ErrorMessage, EventsAccepted, ValidationErrors
from service.state import ServiceState, StateDep

log = logging.getLogger(__name__)

# Generous bound on one event's JSON size, for refusing oversized bodies before parsing them.
MAX_BYTES_PER_EVENT = 4096
# Errors reported per request; the rest are only counted.
MAX_REPORTED_ERRORS = 100

_EVENT_SCHEMA = InteractionEvent.model_json_schema()
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _EVENT_SCHEMA,
                        {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1},
                    ]
                }
            }
        },
    }
}


def _invalid(loc: tuple, message: str, error_type: str) -> RequestValidationError:
    return RequestValidationError([{"type": error_type, "loc": loc, "msg": message}])


def events_body_limit(settings: Settings) -> int:
    """Largest POST /events body: what ``max_events_per_request`` generous events can fill."""
    return settings.max_events_per_request * MAX_BYTES_PER_EVENT


def parse_events(body: bytes, max_events: int) -> tuple[list[InteractionEvent], list[list[str]]]:
    """One event object or a list of them, and the unknown (ignored) field names of each event
    that had some; raises 422 (naming event and field) or 413."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _invalid(("body",), f"JSON decode error: {error}", "json_invalid") from None
    batch = isinstance(payload, list)
    entries = payload if batch else [payload]
    if len(entries) > max_events:
        raise HTTPException(413, f"{len(entries)} events; at most {max_events} per request")
    if not entries:
        raise _invalid(("body",), "List should have at least 1 item", "too_short")
    events, unknown, errors = [], [], []
    for position, entry in enumerate(entries):
        try:
            event, names = parse_event(entry)
        except ValidationError as error:
            prefix = ("body", position) if batch else ("body",)
            errors.extend(
                {**detail, "loc": (*prefix, *detail["loc"])}
                for detail in error.errors(include_url=False, include_context=False)
            )
            continue
        events.append(event)
        if names:
            unknown.append(names)
    if errors:
        raise RequestValidationError(errors[:MAX_REPORTED_ERRORS])
    return events, unknown


def _count_unknown_fields(state: ServiceState, unknown: list[list[str]]) -> None:
    """Accepted events that carried fields the contract does not know: counted, and logged
    without a flood (a producer that adds a field sends it in every event)."""
    state.metrics.events_unknown_fields.inc(len(unknown))
    throttle = state.unknown_field_warnings
    if throttle.allow() or throttle.summary():
        log.warning(
            "POST /events: %d accepted events had fields the event contract does not know "
            "(the first: %s); they are ignored",
            len(unknown),
            shown_fields(unknown[0]),
        )


def _append(state: ServiceState, body: bytes) -> int:
    limit = state.settings.max_events_per_request
    try:
        events, unknown = parse_events(body, limit)
    except HTTPException:
        state.metrics.events_rejected.labels("too_large").inc()
        raise
    except RequestValidationError:
        state.metrics.events_rejected.labels("invalid").inc()
        raise
    try:
        count = state.event_breaker.call(lambda: state.event_log.append(events))
    except Exception as error:
        state.metrics.events_rejected.labels("unavailable").inc(len(events))
        if not isinstance(error, BreakerOpen | EventLogUnavailable):
            log.exception("appending %d events failed unexpectedly", len(events))
        raise HTTPException(
            503,
            f"event log unavailable, events not acknowledged (retry them later with the "
            f"same event_id): {error}",
            headers={"Retry-After": str(state.event_breaker.retry_after_s())},
        ) from None
    _mark_seen(state, events)
    state.metrics.events_accepted.inc(count)
    if unknown:
        _count_unknown_fields(state, unknown)
    return count


def _mark_seen(state: ServiceState, events: list[InteractionEvent]) -> None:
    """Adds the accepted pairs to the seen-items index, so the user's next request excludes
    them at once. The events are in the log already: if the index (Redis) cannot take them now,
    the indexer adds them when it reads them back, and the answer stays 202."""
    try:
        state.seen.add((event.user_id, event.item_id) for event in events)
    except Exception as error:
        log.warning("adding %d accepted events to the seen items failed: %s", len(events), error)


_events_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="EventsAPIKey",
    auto_error=False,
    description="Equal to the server's CCD_EVENTS_API_KEY",
)


def _write_guards(settings: Settings) -> tuple[list[DependsParam], dict[int | str, Any]]:
    """The dependencies of POST /events and the answers they add: the key check only when
    ``events_api_key`` is set (then it runs first: 401 before 415), the JSON check always."""
    guards, responses = [Depends(require_json)], dict(UNSUPPORTED_MEDIA_TYPE)
    expected = configured_key(settings.events_api_key)
    if expected is not None:
        guards.insert(0, Depends(key_checker(expected, _events_key_header)))
        responses[401] = {"model": ErrorMessage, "description": "Missing or wrong X-API-Key"}
    return guards, responses


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["events"])
    guards, guard_responses = _write_guards(settings)

    @router.post(
        "/events",
        status_code=202,
        openapi_extra=_REQUEST_BODY,
        dependencies=guards,
        responses={
            **guard_responses,
            413: {
                "model": ErrorMessage,
                "description": "More events than max_events_per_request, or a larger body",
            },
            422: {
                "model": ValidationErrors,
                "description": "Not JSON, an empty list, or an invalid event (its field named)",
            },
            503: {"model": ErrorMessage, "description": "The event log cannot take events now"},
        },
    )
    async def post_events(request: Request, state: StateDep) -> EventsAccepted:
        """Append one event (a JSON object) or several (a JSON array) to the event stream,
        all or none. `timestamp` defaults to the server's time."""
        body = await request.body()
        accepted = await run_in_threadpool(_append, state, body)
        return EventsAccepted(accepted=accepted)

    return router
