"""The item-catalogue contract: each item's categories, labels, availability and added-time,
shared by every server replica and kept across restarts.

An item the catalogue has no entry for (one seen only in events) is an available item with empty
metadata. Writes are all-or-nothing and stamp every written item with the catalogue's next
version (a counter that only grows), so a reader that remembers the version it has caught up to
asks only for ``changes(since)``: one cheap ``version()`` call per poll, and the changed items
when it moved. Entries are never removed; ``DELETE /items/{id}`` is ``hide``.

Stores: ``RedisCatalogue`` (distributed mode: ``CCD_REDIS_URL`` set) and ``SqliteCatalogue``
(embedded mode: ``data_dir/catalogue.sqlite``, in WAL mode so several server processes share it).
``ItemMetadata`` is the validated input form: bad input is refused before anything is stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.redis_client import connect, hash_tagged, is_cluster

if TYPE_CHECKING:
    from contracts.settings import Settings

# Bounds of one item's metadata (a request beyond them is a 422 and stores nothing).
MAX_CATEGORIES = 100
MAX_LABELS = 100
MAX_TAG_LENGTH = 256

# A category, a label value: 1..256 characters. A label key also holds no ":" (a filter names a
# label condition as "key:value", split at the first ":").
Tag = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH)]
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH, pattern=r"^[^:]+$")
]


class ItemMetadata(BaseModel):
    """What a client may say about an item (the body of ``PUT /items/{item_id}``)."""

    # strict: "available": "no" or "timestamp": true is an error, not a coercion.
    model_config = ConfigDict(extra="forbid", strict=True)

    categories: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_CATEGORIES,
        description=f"Categories of the item (any number up to {MAX_CATEGORIES})",
        examples=[["shoes", "outdoor"]],
    )
    labels: dict[LabelKey, Tag] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Label name -> value (a name holds no ':')",
        examples=[{"color": "red", "brand": "acme"}],
    )
    available: bool = Field(
        True, description="Hidden items (false) are never recommended", examples=[True]
    )
    timestamp: float | None = Field(
        None,
        allow_inf_nan=False,
        description="When the item was added, epoch seconds; default: the time of its first write",
        examples=[1767225600],
    )


@dataclass(frozen=True)
class CatalogueEntry:
    """One stored item: ``timestamp`` is when it was added (epoch seconds)."""

    categories: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    available: bool = True
    timestamp: float | None = None
    version: int = 0  # the catalogue version of the write that left the item so

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "labels": dict(self.labels),
            "available": self.available,
            "timestamp": self.timestamp,
        }


EMPTY_ENTRY = CatalogueEntry()


def _tags_json(meta: ItemMetadata) -> str:
    """Categories (de-duplicated, in their first order) and labels as one JSON text.

    Examples:
        >>> _tags_json(ItemMetadata(categories=["a", "b", "a"], labels={"k": "v"}))
        '{"c":["a","b"],"l":{"k":"v"}}'
    """
    categories = list(dict.fromkeys(meta.categories))
    return json.dumps({"c": categories, "l": meta.labels}, separators=(",", ":"))


def _flag(value: object) -> bool:
    """A stored availability (SQLite 0/1, Redis b"0"/b"1") as a bool."""
    return (value.decode() if isinstance(value, bytes) else str(value)) == "1"


def _entry(
    tags: str | bytes | None, available: object, timestamp: object, version: object
) -> CatalogueEntry:
    """An entry from its stored parts (``tags`` None: written by ``hide`` only)."""
    parsed = json.loads(tags) if tags else {}
    return CatalogueEntry(
        categories=tuple(parsed.get("c", ())),
        labels=dict(parsed.get("l", {})),
        available=_flag(available),
        timestamp=None if timestamp is None else float(timestamp),  # type: ignore[arg-type]
        version=int(version),  # type: ignore[call-overload]
    )


class CatalogueStore(Protocol):
    """Versioned item metadata. Every write stamps its items with a new, larger version."""

    def put(self, items: Mapping[str, ItemMetadata]) -> int:
        """Store every item (all or none) and return the new catalogue version. An item without
        a ``timestamp`` keeps its stored one, or gets the current time when new."""

    def hide(self, item_ids: Iterable[str]) -> int:
        """Mark the items unavailable, keeping their other metadata; the new version."""

    def get_many(self, item_ids: Iterable[str]) -> dict[str, CatalogueEntry]:
        """The stored entries of those of ``item_ids`` that were ever written."""

    def version(self) -> int:
        """The version of the newest write (0 before any)."""

    def changes(self, since: int) -> dict[str, CatalogueEntry]:
        """The items written after version ``since``, in their newest state (each entry's
        ``version`` is at most that of the state read: a reader keeps the newest it has)."""

    def close(self) -> None: ...


def open_catalogue(settings: Settings) -> CatalogueStore:
    """The store the settings select: Redis if a URL is set, else SQLite in ``data_dir``."""
    if settings.uses_redis:
        return RedisCatalogue(settings.redis_url, settings.redis_prefix)
    return SqliteCatalogue(settings.data_dir / "catalogue.sqlite")


# --- embedded: one SQLite table ---------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    tags TEXT,
    available INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_version ON items (version);
"""
# tags NULL: written by hide() only. :ts NULL keeps the stored time (or :now for a new item).
_UPSERT = """
INSERT INTO items (item_id, tags, available, timestamp, version)
VALUES (:id, :tags, :available, COALESCE(:ts, :now), :version)
ON CONFLICT(item_id) DO UPDATE SET
    tags = COALESCE(excluded.tags, items.tags),
    available = excluded.available,
    timestamp = COALESCE(:ts, items.timestamp),
    version = excluded.version
"""


_SQLITE_IN_BATCH = 500  # ids per "IN (...)" query (SQLite caps the parameters of one query)


class SqliteCatalogue:
    """Table ``items(item_id, tags JSON, available, timestamp, version)`` in WAL mode; a write
    is one ``BEGIN IMMEDIATE`` transaction, its version ``MAX(version) + 1``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(
            path, timeout=30.0, check_same_thread=False, isolation_level=None
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one connection shared by the server's threads

    def _write(self, rows: list[dict[str, Any]]) -> int:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                (newest,) = self._connection.execute("SELECT MAX(version) FROM items").fetchone()
                version = int(newest or 0) + 1
                now = time.time()
                for row in rows:
                    row.update(version=version, now=now)
                self._connection.executemany(_UPSERT, rows)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
        return version

    def put(self, items: Mapping[str, ItemMetadata]) -> int:
        rows = [
            {
                "id": item,
                "tags": _tags_json(meta),
                "available": int(meta.available),
                "ts": meta.timestamp,
            }
            for item, meta in items.items()
        ]
        return self._write(rows)

    def hide(self, item_ids: Iterable[str]) -> int:
        return self._write(
            [{"id": item, "tags": None, "available": 0, "ts": None} for item in item_ids]
        )

    def get_many(self, item_ids: Iterable[str]) -> dict[str, CatalogueEntry]:
        ids = list(dict.fromkeys(item_ids))
        found: dict[str, CatalogueEntry] = {}
        with self._lock:
            for first in range(0, len(ids), _SQLITE_IN_BATCH):
                batch = ids[first : first + _SQLITE_IN_BATCH]
                rows = self._connection.execute(
                    "SELECT item_id, tags, available, timestamp, version FROM items "
                    f"WHERE item_id IN ({','.join('?' * len(batch))})",
                    batch,
                ).fetchall()
                found.update((row[0], _entry(*row[1:])) for row in rows)
        return found

    def version(self) -> int:
        with self._lock:
            (newest,) = self._connection.execute("SELECT MAX(version) FROM items").fetchone()
        return int(newest or 0)

    def changes(self, since: int) -> dict[str, CatalogueEntry]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT item_id, tags, available, timestamp, version FROM items WHERE version > ?",
                (since,),
            ).fetchall()
        return {row[0]: _entry(*row[1:]) for row in rows}

    def close(self) -> None:
        with self._lock:
            self._connection.close()


# --- Redis ----------------------------------------------------------------------------------

# One write, atomic. KEYS: tags hash, available hash, timestamps hash, changes zset, version
# counter. ARGV: now, then per item: id, tags JSON ('' = keep), available ('1'/'0'),
# timestamp ('' = keep, or now for a new item).
_REDIS_WRITE = """
local version = redis.call('INCR', KEYS[5])
for i = 2, #ARGV, 4 do
    local id = ARGV[i]
    if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], id, ARGV[i + 1]) end
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then
        redis.call('HSET', KEYS[3], id, ARGV[i + 3])
    else
        redis.call('HSETNX', KEYS[3], id, ARGV[1])
    end
    redis.call('ZADD', KEYS[4], version, id)
end
return version
"""
# Ids fetched per HMGET when reading changes.
_REDIS_READ_BATCH = 10_000


class RedisCatalogue:
    """Keys under ``prefix`` (``p``): ``{p}:items:tags`` / ``:available`` / ``:timestamp``
    (hashes by item id), ``{p}:items:changes`` (sorted set: item id scored by the version of its
    newest write) and ``{p}:items:version`` (the counter). A write (one script) and a read (one
    transaction) touch several of them: on a Redis Cluster they share the hash tag
    ``{<p>:items}`` (``contracts.redis_client.hash_tagged``), a slot of their own."""

    def __init__(self, url: str, prefix: str = "ccd") -> None:
        self._redis = connect(url, socket_timeout=30, socket_connect_timeout=5)
        items = hash_tagged(f"{prefix}:items", is_cluster(self._redis))
        self._keys = [
            f"{items}:{part}" for part in ("tags", "available", "timestamp", "changes", "version")
        ]
        self._write_script = self._redis.register_script(_REDIS_WRITE)

    def _write(self, rows: list[tuple[str, str, str, str]]) -> int:
        arguments: list[str] = [repr(time.time())]
        for row in rows:
            arguments.extend(row)
        return int(self._write_script(keys=self._keys, args=arguments))

    def put(self, items: Mapping[str, ItemMetadata]) -> int:
        return self._write(
            [
                (
                    item,
                    _tags_json(meta),
                    "1" if meta.available else "0",
                    "" if meta.timestamp is None else repr(float(meta.timestamp)),
                )
                for item, meta in items.items()
            ]
        )

    def hide(self, item_ids: Iterable[str]) -> int:
        return self._write([(item, "", "0", "") for item in item_ids])

    def get_many(self, item_ids: Iterable[str]) -> dict[str, CatalogueEntry]:
        ids = list(dict.fromkeys(item_ids))
        found: dict[str, CatalogueEntry] = {}
        for first in range(0, len(ids), _REDIS_READ_BATCH):
            batch = ids[first : first + _REDIS_READ_BATCH]
            pipe = self._redis.pipeline(transaction=True)  # one consistent read
            for key in self._keys[:3]:
                pipe.hmget(key, batch)
            pipe.zmscore(self._keys[3], batch)
            tags, available, timestamps, versions = pipe.execute()
            for item, *parts in zip(batch, tags, available, timestamps, versions, strict=True):
                if parts[1] is not None:  # every write sets availability
                    found[item] = _entry(*parts)
        return found

    def version(self) -> int:
        value = self._redis.get(self._keys[4])
        return 0 if value is None else int(value)

    def changes(self, since: int) -> dict[str, CatalogueEntry]:
        changed = self._redis.zrangebyscore(self._keys[3], f"({since}", "+inf")
        return self.get_many(item.decode() for item in changed)

    def close(self) -> None:
        self._redis.close()
