"""The catalogue routes of the items resource (added to the items router by
``service.routers.items``): write, read and hide an item's metadata.

A write is validated whole before anything is stored (422 naming the item and field; 413 for a
batch above ``CCD_MAX_ITEMS_PER_REQUEST``), stored in one atomic step, then read back and applied
to this server's view, so filters on this server follow it when the answer arrives. A store that
cannot take it answers 503 with ``Retry-After``; nothing was acknowledged.
"""

# No `from __future__ import annotations`: FastAPI resolves the signatures.

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path
from fastapi.params import Depends as DependsParam
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from contracts.catalogue import EMPTY_ENTRY, CatalogueEntry, ItemMetadata
from contracts.events import MAX_ID_LENGTH
from contracts.settings import Settings
from service.guards import require_json
from service.routers.events import _write_guards
from service.schemas import ErrorMessage
from service.seen_store import SeenUnavailable
from service.state import RETRY_AFTER_S, ServiceState, StateDep

log = logging.getLogger(__name__)

# Generous bound on one item's JSON size in PUT /items, for refusing oversized bodies unread.
MAX_BYTES_PER_ITEM = 4096

ItemPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, examples=["i3"])]


class ItemWrite(ItemMetadata):
    """One entry of a ``PUT /items`` batch."""

    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, examples=["i3"])


class ItemRecord(BaseModel):
    item_id: str
    categories: list[str] = Field(examples=[["shoes", "outdoor"]])
    labels: dict[str, str] = Field(examples=[{"color": "red"}])
    available: bool = Field(description="False: hidden, never recommended")
    timestamp: float | None = Field(description="When the item was added (epoch seconds)")


class ItemsWritten(BaseModel):
    written: int = Field(description="Items stored")
    catalogue_version: int = Field(description="The catalogue version of this write")


def items_body_limit(settings: Settings) -> int:
    """Largest ``PUT /items`` body: what ``max_items_per_request`` generous items can fill."""
    return settings.max_items_per_request * MAX_BYTES_PER_ITEM


def _record(item_id: str, entry: CatalogueEntry) -> ItemRecord:
    return ItemRecord(item_id=item_id, **{k: v for k, v in entry.to_json().items()})


def _written(state: ServiceState, write: Callable[[], int], item_ids: list[str]) -> int:
    """Runs a store write, then applies what it stored to this server's view and rebuilds its
    masks; 503 when the store cannot be reached."""
    store = state.catalogue.store
    try:
        version = write()
        state.catalogue.apply(store.get_many(item_ids))
        state.catalogue.refresh_masks()  # in force here when the answer arrives
    except Exception as error:
        log.warning("catalogue write of %d items failed: %s", len(item_ids), error)
        raise HTTPException(
            503,
            f"catalogue store unavailable, nothing acknowledged (retry): {error}",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    return version


def _seen_item(state: ServiceState, item_id: str) -> bool:
    """Whether some event named the item; 503 if the seen-items store cannot say."""
    try:
        return state.seen.knows_item(item_id)
    except SeenUnavailable as error:
        raise HTTPException(
            503, str(error), headers={"Retry-After": str(error.retry_after_s)}
        ) from None


def add_catalogue_routes(router: APIRouter, settings: Settings) -> None:
    """Adds ``PUT /items``, ``PUT / GET / DELETE /items/{item_id}`` to ``router``."""
    write_guards, guard_responses = _write_guards(settings)
    key_guards: list[DependsParam] = [g for g in write_guards if g.dependency is not require_json]
    unavailable: dict[int | str, Any] = {
        503: {"model": ErrorMessage, "description": "The catalogue store is unreachable"}
    }
    most = settings.max_items_per_request

    @router.put(
        "/items",
        dependencies=write_guards,
        responses={
            **guard_responses,
            **unavailable,
            413: {"model": ErrorMessage, "description": f"More than {most} items"},
        },
    )
    async def put_items(state: StateDep, items: Annotated[list[ItemWrite], Body()]) -> ItemsWritten:
        """Write several items' metadata at once, all or none (a later entry for the same id
        wins). Each replaces the item's categories, labels and availability; its timestamp
        only when given."""
        if len(items) > most:
            raise HTTPException(413, f"{len(items)} items; at most {most} per request")
        batch = {
            item.item_id: ItemMetadata(**item.model_dump(exclude={"item_id"})) for item in items
        }
        ids = list(batch)
        store = state.catalogue.store
        version = await run_in_threadpool(_written, state, lambda: store.put(batch), ids)
        return ItemsWritten(written=len(batch), catalogue_version=version)

    @router.put(
        "/items/{item_id:path}",
        dependencies=write_guards,
        responses={**guard_responses, **unavailable},
    )
    async def put_item(state: StateDep, item_id: ItemPath, metadata: ItemMetadata) -> ItemRecord:
        """Write one item's metadata: its categories, labels and availability are replaced;
        its timestamp only when given (a new item without one gets the server's time)."""
        store = state.catalogue.store
        await run_in_threadpool(_written, state, lambda: store.put({item_id: metadata}), [item_id])
        return _record(item_id, state.catalogue.entry(item_id) or EMPTY_ENTRY)

    @router.get(
        "/items/{item_id:path}",
        responses={404: {"model": ErrorMessage, "description": "No such item anywhere"}},
    )
    async def read_item(state: StateDep, item_id: ItemPath) -> ItemRecord:
        """An item's metadata as this server filters by it; empty for an item known only from
        events or the model, 404 for one nobody has mentioned."""
        entry = state.catalogue.entry(item_id)
        if entry is None:
            model = state.holder.model
            if not (model is not None and item_id in model.item_index) and not _seen_item(
                state, item_id
            ):
                raise HTTPException(404, f"unknown item {item_id!r}")
            entry = EMPTY_ENTRY
        return _record(item_id, entry)

    @router.delete(
        "/items/{item_id:path}",
        dependencies=key_guards,
        responses={**guard_responses, **unavailable},
    )
    async def delete_item(state: StateDep, item_id: ItemPath) -> ItemRecord:
        """Hide an item: it is never recommended again (until a PUT makes it available); its
        metadata is kept."""
        store = state.catalogue.store
        await run_in_threadpool(_written, state, lambda: store.hide([item_id]), [item_id])
        return _record(item_id, state.catalogue.entry(item_id) or EMPTY_ENTRY)
