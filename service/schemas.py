"""Request and response bodies of the HTTP API (they make up the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events import MAX_ID_LENGTH

# Largest number of users one POST /recommendations may name.
MAX_BATCH_USERS = 1000

ExternalId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: int
    strategy: Literal["personalized", "fold_in", "popular"] = Field(
        description="'personalized' for users the model knows, 'fold_in' for a user it does "
        "not know yet but whose events the server has seen, 'popular' for a user with none"
    )
    recommendation_id: str = Field(
        description="Identifies this answer; send it back as an event's recommendation_id"
    )
    arm: str = Field(
        description="The A/B arm (model slot, CCD_AB) that answered; 'default' without a split"
    )


class BatchRecommendationRequest(BaseModel):
    # strict: a JSON body must hold the types its schema names (no 0 for false, no "5" for 5).
    model_config = ConfigDict(strict=True)

    user_ids: list[ExternalId] = Field(
        min_length=1, max_length=MAX_BATCH_USERS, examples=[["u7", "u8"]]
    )
    k: int = Field(20, ge=1, description="Items per user, 1..max_k", examples=[10])
    exclude_seen: bool = Field(
        True, description="Leave out items each user already interacted with", examples=[True]
    )


class BatchRecommendations(BaseModel):
    model_version: int
    results: list[Recommendations]


class SimilarItems(BaseModel):
    item_id: str
    items: list[ScoredItem] = Field(description="Nearest items by cosine similarity, best first")
    model_version: int
    recommendation_id: str = Field(
        description="Identifies this answer; send it back as an event's recommendation_id"
    )


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events appended to the event log")


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model_version: int | None
    seen_caught_up: bool = Field(
        description="Whether the seen-items index has read the event log up to its end at start"
    )
    catalogue_loaded: bool = Field(
        description="Whether the item catalogue has been read once (availability and category "
        "filters need it)"
    )
    reasons: list[str] = Field(
        default_factory=list, description="Why the server is not ready (empty when it is)"
    )
    seen_records_lost: int = Field(
        0,
        description="Event-log records retention deleted before the seen-items tailer read them "
        "(their pairs are missing from the index; the server stays ready, the log says which)",
    )


class ModelInfo(BaseModel):
    version: int
    loaded_at: float
    n_users: int
    n_items: int
    dim: int
    meta: dict[str, Any]


class ErrorMessage(BaseModel):
    detail: str


class ValidationErrorEntry(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", event index, field] and the like')
    msg: str
    type: str
    input: Any = Field(None, description="The invalid input; its first 200 characters if longer")


class ValidationErrors(BaseModel):
    detail: list[ValidationErrorEntry]


class RollbackRequest(BaseModel):
    # strict: {"version": true} is not version 1.
    model_config = ConfigDict(extra="forbid", strict=True)

    version: int = Field(ge=1, description="A kept version (see GET /admin/versions)")
    slot: str | None = Field(
        None, description="The A/B arm's model slot (CCD_AB) to roll back; default: the first"
    )


class RollbackResult(BaseModel):
    version: int = Field(description="The version now current in the store and served here")
    previous: int | None = Field(description="The version served here before the rollback")


class VersionsInfo(BaseModel):
    versions: list[int] = Field(description="Versions kept in the store, oldest first")
    current: int | None = Field(description="The version the store's current pointer names")
    served: int | None = Field(description="The version this server is serving")
