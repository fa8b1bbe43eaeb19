"""The interaction-event contract: what producers send and what the trainer consumes.

On Kafka an event is one JSON message on topic ``interactions`` keyed by ``user_id``. Fields the
contract does not name are ignored (not kept), so that a producer that adds a field loses
nothing; ``parse_event`` says which there were, for the readers to count them.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ID_LENGTH = 256
# Events dated further than this in the future are refused (clock skew allowance).
MAX_FUTURE_SKEW_S = 24 * 3600
# What a recommendation_id may hold (the server issues 12 URL-safe base64 characters).
RECOMMENDATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class InteractionEvent(BaseModel):
    """One implicit-feedback interaction: ``user_id`` interacted with ``item_id``."""

    # extra="ignore": an unknown field must not cost the event (it used to be dead-lettered).
    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    timestamp: float = Field(
        default_factory=time.time,
        description="Epoch seconds, or an ISO-8601 string; server time when absent",
    )
    event_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    type: str | None = Field(None, max_length=64)
    weight: float | None = None
    recommendation_id: str | None = Field(
        None,
        pattern=RECOMMENDATION_ID_PATTERN,
        description="The recommendation_id of the answer that showed the item, when the event "
        "follows one (outcome attribution); 1-64 characters of A-Z a-z 0-9 _ -",
    )

    @field_validator("timestamp", "weight", mode="before")
    @classmethod
    def _no_boolean(cls, value: object) -> object:
        # JSON true/false are not numbers (pydantic's lax mode would read them as 1.0 / 0.0).
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        return value

    @field_validator("timestamp")
    @classmethod
    def _check_timestamp(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("timestamp must be a finite, non-negative epoch time")
        if value > time.time() + MAX_FUTURE_SKEW_S:
            raise ValueError("timestamp is more than a day in the future")
        return value

    @field_validator("weight")
    @classmethod
    def _check_weight(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("weight must be a finite number")
        return value

    def dedup_key(self) -> str:
        """``event_id`` when given, else a hash of the content: identifies re-delivered events."""
        if self.event_id is not None:
            return self.event_id
        raw = f"{self.user_id}\x1f{self.item_id}\x1f{self.timestamp!r}\x1f{self.type}"
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))

    @classmethod
    def from_bytes(cls, raw: bytes) -> InteractionEvent:
        """Parse one wire message; raises ``ValueError`` (a ``ValidationError`` too) if bad."""
        return cls.model_validate(orjson.loads(raw))


KNOWN_FIELDS = frozenset(InteractionEvent.model_fields)
# Unknown field names a log line shows (a name can be as long as the body allows).
MAX_SHOWN_FIELDS, MAX_SHOWN_NAME = 5, 40


def parse_event(payload: object) -> tuple[InteractionEvent, list[str]]:
    """The event ``payload`` (a decoded JSON value) holds and the names of the fields in it
    that the contract does not know (ignored); raises ``ValidationError`` if it holds none."""
    event = InteractionEvent.model_validate(payload)
    if not isinstance(payload, dict):  # an InteractionEvent itself, not a decoded message
        return event, []
    return event, [name for name in payload if name not in KNOWN_FIELDS]


def shown_fields(names: list[str]) -> str:
    """Unknown field names for a log line, shortened: a few names, each cut to a few chars."""
    shown = [repr(name[:MAX_SHOWN_NAME]) for name in names[:MAX_SHOWN_FIELDS]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


# What each event type teaches the learners: > 0 a positive of that strength (BPR weight, iALS
# confidence), < 0 an explicit negative of that strength, 0 nothing (kept in the log only).
DEFAULT_EVENT_WEIGHTS = (
    "view:1,click:1,like:2,add_to_cart:2,purchase:4,impression:-0.25,read:-0.25,dislike:-2,*:1"
)


class EventWeights:
    """The ``CCD_EVENT_WEIGHTS`` mapping of event ``type`` to a learning weight.

    Written ``type:weight,...``; ``*`` is the weight of an event without a type or of a type
    not listed (default 1: a plain interaction). An event's own ``weight`` field multiplies its
    type's weight. Within one block a pair with any positive event is a positive (its largest
    weight): an impression followed by a click is a click, not a hard negative.

    >>> weights = EventWeights.parse("purchase:4,dislike:-2,*:1")
    >>> weights.of("purchase", None), weights.of("dislike", 1.5), weights.of(None, None)
    (4.0, -3.0, 1.0)
    >>> EventWeights.parse("purchase:lots")
    Traceback (most recent call last):
    ValueError: CCD_EVENT_WEIGHTS: 'purchase:lots' is not type:weight with a finite number
    """

    def __init__(self, by_type: dict[str, float], default: float = 1.0) -> None:
        self.by_type, self.default = dict(by_type), default

    @classmethod
    def parse(cls, text: str) -> EventWeights:
        by_type: dict[str, float] = {}
        for entry in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = entry.rpartition(":")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not name.strip() or not math.isfinite(number):
                raise ValueError(
                    f"CCD_EVENT_WEIGHTS: {entry!r} is not type:weight with a finite number"
                )
            by_type[name.strip()] = number
        return cls(by_type, by_type.pop("*", 1.0))

    def of(self, event_type: str | None, event_weight: float | None) -> float:
        """The learning weight of one event."""
        base = self.by_type.get(event_type, self.default) if event_type else self.default
        return base * (1.0 if event_weight is None else event_weight)
