"""The model-store contract: how a published student version is encoded, checked and found.

A version is a ``ModelSnapshot``: the student's final (serving) embeddings, the external-id maps
and metadata. ``encode_snapshot`` turns it into one blob (an ``.npz`` archive, no pickle) plus a
metadata dict carrying the blob's SHA-256; ``decode_snapshot`` refuses a blob whose checksum or
shapes are wrong. Stores (Redis, or files in ``data_dir``) keep each version under its own keys,
write it completely, then flip one ``current`` pointer atomically and notify servers.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

FORMAT_VERSION = 1


class CorruptModelError(ValueError):
    """A stored version failed its checksum or shape check; it must not be served."""


@dataclass
class ModelSnapshot:
    """One deployable student version.

    Shapes: ``user_embeddings`` (U, d) float32, ``item_embeddings`` (I, d) float32,
    ``item_popularity`` (I,) float32 (interaction counts, for the cold-start fallback);
    ``user_ids`` has U external ids and ``item_ids`` I, in index order.
    """

    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    item_popularity: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return int(self.meta.get("version", 0))

    def validate(self) -> None:
        users, items = len(self.user_ids), len(self.item_ids)
        u, i = self.user_embeddings, self.item_embeddings
        if u.ndim != 2 or i.ndim != 2 or u.shape[1] != i.shape[1]:
            raise CorruptModelError(f"embedding shapes {u.shape} and {i.shape} do not match")
        if u.shape[0] != users or i.shape[0] != items:
            raise CorruptModelError(
                f"{users} user ids / {items} item ids for tables {u.shape[0]} / {i.shape[0]}"
            )
        if self.item_popularity.shape != (items,):
            raise CorruptModelError(f"popularity shape {self.item_popularity.shape} != ({items},)")
        if not (np.isfinite(u).all() and np.isfinite(i).all()):
            raise CorruptModelError("embeddings contain NaN or inf")


def encode_snapshot(snapshot: ModelSnapshot) -> tuple[bytes, dict[str, Any]]:
    """Returns ``(blob, meta)``; ``meta`` is the snapshot's metadata plus checksum and shapes."""
    snapshot.validate()
    buffer = io.BytesIO()
    np.savez(
        buffer,
        user_ids=np.asarray(snapshot.user_ids, dtype=np.str_),
        item_ids=np.asarray(snapshot.item_ids, dtype=np.str_),
        user_embeddings=np.ascontiguousarray(snapshot.user_embeddings, dtype=np.float32),
        item_embeddings=np.ascontiguousarray(snapshot.item_embeddings, dtype=np.float32),
        item_popularity=np.ascontiguousarray(snapshot.item_popularity, dtype=np.float32),
    )
    blob = buffer.getvalue()
    meta = dict(snapshot.meta)
    meta.update(
        format=FORMAT_VERSION,
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(blob),
        n_users=len(snapshot.user_ids),
        n_items=len(snapshot.item_ids),
        dim=int(snapshot.user_embeddings.shape[1]),
    )
    return blob, meta


def decode_snapshot(blob: bytes, meta: dict[str, Any]) -> ModelSnapshot:
    """Inverse of ``encode_snapshot``; raises ``CorruptModelError`` on any mismatch."""
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CorruptModelError(f"version {meta.get('version')}: checksum mismatch")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            snapshot = ModelSnapshot(
                user_ids=arrays["user_ids"].tolist(),
                item_ids=arrays["item_ids"].tolist(),
                user_embeddings=arrays["user_embeddings"],
                item_embeddings=arrays["item_embeddings"],
                item_popularity=arrays["item_popularity"],
                meta=dict(meta),
            )
    except (OSError, KeyError, ValueError) as error:
        raise CorruptModelError(f"version {meta.get('version')}: unreadable ({error})") from error
    snapshot.validate()
    if snapshot.user_embeddings.shape[1] != meta.get("dim"):
        raise CorruptModelError(f"version {meta.get('version')}: dimension differs from metadata")
    return snapshot


class ModelStore(Protocol):
    """Versioned store of students with an atomic ``current`` pointer."""

    def publish(self, snapshot: ModelSnapshot) -> int:
        """Write a new version completely, then point ``current`` at it and notify; returns
        the version number (strictly increasing). Prunes beyond ``keep_versions``."""

    def current_version(self) -> int | None: ...

    def load(self, version: int | None = None) -> ModelSnapshot:
        """The given (default: current) version; raises ``CorruptModelError`` if it fails its
        checks and ``KeyError`` if it does not exist."""

    def versions(self) -> list[int]:
        """Kept versions, oldest first."""

    def set_current(self, version: int) -> None:
        """Point ``current`` at a kept version (rollback) and notify."""

    def wait_for_update(self, timeout_s: float) -> bool:
        """Block until a notification arrives or ``timeout_s`` passes; True if notified."""

    def close(self) -> None: ...
