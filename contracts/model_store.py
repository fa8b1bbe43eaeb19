"""The model-store contract: how a published student version is encoded, checked and found.

A version is a ``ModelSnapshot``: the student's final (serving) embeddings, the external-id maps
and metadata. ``encode_snapshot`` turns it into one blob (an ``.npz`` archive, no pickle) plus a
metadata dict carrying the blob's SHA-256; ``decode_snapshot`` refuses a blob whose checksum or
shapes are wrong. Stores (Redis, or files in ``data_dir``) keep each version under its own keys,
write it completely, then flip one ``current`` pointer atomically and notify servers.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from contracts.redis_client import connect, hash_tagged, is_cluster

if TYPE_CHECKING:
    from contracts.settings import Settings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CorruptModelError(ValueError):
    """A stored version failed its checksum or shape check; it must not be served."""


class StaleWriterError(RuntimeError):
    """A fenced publish was refused: the writer lease it names is held by someone else (or by
    nobody) now, so this writer may be a zombie that lost its lease while paused or cut off."""


@dataclass(frozen=True)
class Fence:
    """Publish only while the key ``key`` holds ``token`` (the trainer's writer lease)."""

    key: str
    token: str


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
        if not np.isfinite(self.item_popularity).all():
            raise CorruptModelError("item popularity contains NaN or inf")
        # A repeated id would make one of its rows unreachable and could list an item twice.
        if len(set(self.user_ids)) != users or len(set(self.item_ids)) != items:
            raise CorruptModelError("user or item ids are not unique")


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
    if not isinstance(meta, dict):
        raise CorruptModelError("metadata is not a JSON object")
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
    # np.load surfaces a damaged archive (whose checksum was computed over the damage) as any
    # of these; all mean the same thing here.
    except (
        OSError,
        KeyError,
        ValueError,
        EOFError,
        NotImplementedError,
        zipfile.BadZipFile,
    ) as error:
        raise CorruptModelError(f"version {meta.get('version')}: unreadable ({error})") from error
    snapshot.validate()
    if snapshot.user_embeddings.shape[1] != meta.get("dim"):
        raise CorruptModelError(f"version {meta.get('version')}: dimension differs from metadata")
    return snapshot


class ModelStore(Protocol):
    """Versioned store of students with an atomic ``current`` pointer."""

    def publish(self, snapshot: ModelSnapshot, fence: Fence | None = None, after: int = 0) -> int:
        """Write a new version completely, then point ``current`` at it and notify; returns
        the version number (strictly increasing, and above ``after``: the writer's last
        published version, so that numbers never go back even if the store lost its counter,
        as a Redis restarted without persistence does). Prunes beyond ``keep_versions``. With a
        ``fence``, the pointer flips only while the fence's lease is still held (checked in
        the same atomic step), else ``StaleWriterError``."""

    def current_version(self) -> int | None: ...

    def load_meta(self, version: int) -> dict[str, Any]:
        """The metadata of a kept version without its weights (``KeyError`` if absent)."""

    def load(self, version: int | None = None) -> ModelSnapshot:
        """The given (default: current) version; raises ``CorruptModelError`` if it fails its
        checks and ``KeyError`` if it does not exist."""

    def versions(self) -> list[int]:
        """Kept versions, oldest first."""

    def set_current(self, version: int) -> None:
        """Point ``current`` at a kept version (rollback) and notify."""

    def wait_for_update(self, timeout_s: float) -> bool:
        """Block until a notification arrives or ``timeout_s`` passes; True if notified.
        Raises when the store cannot be reached (the caller decides how to report it)."""

    def close(self) -> None: ...


def open_model_store(settings: Settings) -> ModelStore:
    """The store the settings select: Redis if a URL is set, else versioned files in data_dir."""
    if settings.uses_redis:
        return RedisModelStore(settings.redis_url, settings.store_prefix, settings.keep_versions)
    return FileModelStore(settings.model_store_dir, settings.keep_versions)


def _versions_to_prune(versions: list[int], current: int | None, keep: int) -> list[int]:
    """The oldest versions beyond ``keep``, never the current one."""
    return [v for v in sorted(versions)[:-keep] if v != current]


# --- embedded: one directory per version ------------------------------------------------------

_POINTER = "CURRENT"
_BLOB = "model.npz"
_META = "meta.json"
_FILE_POLL_S = 0.1


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: readers see all of it or none."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileModelStore:
    """Versions under ``root/v00000001/{model.npz,meta.json}``; ``root/CURRENT`` names the
    current one. A version directory is renamed into place only when complete, and the pointer
    file is replaced atomically, so a reader never sees half a version."""

    def __init__(self, root: Path, keep_versions: int = 5) -> None:
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.root.mkdir(parents=True, exist_ok=True)
        self._seen_pointer = self._pointer_state()

    def _version_dir(self, version: int) -> Path:
        return self.root / f"v{version:08d}"

    def _pointer_state(self) -> tuple[int, bytes] | None:
        try:
            pointer = self.root / _POINTER
            return pointer.stat().st_mtime_ns, pointer.read_bytes()
        except FileNotFoundError:
            return None

    def publish(self, snapshot: ModelSnapshot, fence: Fence | None = None, after: int = 0) -> int:
        """``fence`` is not checked here: the embedded writer lease is a ``flock`` that the
        kernel drops when its holder dies, so a writer that lost it is no longer running."""
        with self._lock_file():
            self._remove_leftovers()
            version = max(*self.versions(), after, 0) + 1
            snapshot.meta["version"] = version
            blob, meta = encode_snapshot(snapshot)
            staging = self.root / f".staging-{uuid.uuid4().hex}"
            staging.mkdir()
            _write_durably(staging / _BLOB, blob)
            _write_durably(staging / _META, json.dumps(meta).encode())
            os.replace(staging, self._version_dir(version))
            _fsync_directory(self.root)
            self._point_at(version)
            for old in _versions_to_prune(self.versions(), version, self.keep_versions):
                shutil.rmtree(self._version_dir(old), ignore_errors=True)
        return version

    def _remove_leftovers(self) -> None:
        """Staging directories and temporary files of a publisher that died (any that exist
        while we hold the lock are nobody's)."""
        for path in self.root.glob(".staging-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _lock_file(self) -> _FileLock:
        return _FileLock(self.root / ".lock")

    def _point_at(self, version: int) -> None:
        _write_durably(self.root / _POINTER, f"{version}\n".encode())

    def current_version(self) -> int | None:
        try:
            return int((self.root / _POINTER).read_text().strip())
        except FileNotFoundError:
            return None

    def load_meta(self, version: int) -> dict[str, Any]:
        try:
            meta_bytes = (self._version_dir(version) / _META).read_bytes()
        except FileNotFoundError as error:
            raise KeyError(f"model version {version} does not exist") from error
        try:
            return json.loads(meta_bytes)
        except ValueError as error:
            raise CorruptModelError(f"version {version}: unreadable metadata") from error

    def load(self, version: int | None = None) -> ModelSnapshot:
        if version is None:
            version = self.current_version()
            if version is None:
                raise KeyError("no model version has been published yet")
        directory = self._version_dir(version)
        try:
            meta_bytes = (directory / _META).read_bytes()
            blob = (directory / _BLOB).read_bytes()
        except FileNotFoundError as error:
            raise KeyError(f"model version {version} does not exist") from error
        try:
            meta = json.loads(meta_bytes)
        except ValueError as error:
            raise CorruptModelError(f"version {version}: unreadable metadata") from error
        return decode_snapshot(blob, meta)

    def versions(self) -> list[int]:
        found = []
        for path in self.root.glob("v*"):
            if path.is_dir() and path.name[1:].isdigit():
                found.append(int(path.name[1:]))
        return sorted(found)

    def set_current(self, version: int) -> None:
        with self._lock_file():
            if not (self._version_dir(version) / _META).exists():
                raise KeyError(f"model version {version} does not exist")
            self._point_at(version)

    def wait_for_update(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._pointer_state()
            if state != self._seen_pointer:
                self._seen_pointer = state
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(_FILE_POLL_S, remaining))

    def close(self) -> None:
        pass


class _FileLock:
    """An exclusive ``flock`` so two publishers never pick the same version number."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: Any = None

    def __enter__(self) -> _FileLock:
        self._file = open(self._path, "a+b")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()


# --- Redis ----------------------------------------------------------------------------------

# Large payloads (1M users x 64 dims is 256 MiB) go in chunks well under Redis' value limits.
REDIS_CHUNK_BYTES = 4 * 1024 * 1024
# Chunks sent (or fetched) per round trip.
_REDIS_CHUNKS_PER_PIPELINE = 8
# Chunks expire unless the publish completes (which makes them permanent), so a publish that
# dies half-way leaves no garbage behind.
_REDIS_STAGING_TTL_S = 3600
# The flip, atomic and (with a fence) conditional on the writer lease; a refused publish deletes
# its chunks. KEYS: meta, versions, current, chunk 0 .. n-1, then the fence's key when fenced.
# ARGV: fence token ('' = unfenced), meta JSON, version.
_REDIS_FLIP = """
local n_chunks = #KEYS - 3
if ARGV[1] ~= '' then
    n_chunks = n_chunks - 1
    if redis.call('GET', KEYS[#KEYS]) ~= ARGV[1] then
        for i = 4, 3 + n_chunks do redis.call('DEL', KEYS[i]) end
        return 0
    end
end
for i = 4, 3 + n_chunks do redis.call('PERSIST', KEYS[i]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[3])
redis.call('SET', KEYS[3], ARGV[3])
return 1
"""


# The next version number: the counter's next value, raised above ``after`` (ARGV[1], the
# writer's last published version) and above every kept version when the counter is behind
# (a Redis restarted without persistence starts it again at 0). KEYS: counter, versions.
_REDIS_NEXT_VERSION = """
local version = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
local newest = redis.call('ZREVRANGE', KEYS[2], 0, 0)[1]
if newest and tonumber(newest) > floor then floor = tonumber(newest) end
if version <= floor then
    version = floor + 1
    redis.call('SET', KEYS[1], version)
end
return version
"""


class RedisModelStore:
    """Keys under ``prefix`` (``p``): ``{p}:next_version`` (INCR counter), ``{p}:versions``
    (sorted set), ``{p}:model:{v}:meta`` (JSON incl. the chunk count), ``{p}:model:{v}:chunk:{i}``
    (blob parts), ``{p}:current`` (the pointer); updates are announced on channel
    ``{p}:updates``. On a Redis Cluster the keys' prefix is the hash tag ``{<prefix>}``
    (``contracts.redis_client.hash_tagged``): the version counter, the flip and the pruning each
    touch several of these keys, and the writer lease's key (the publish's fence) sits under the
    same tag, so they all live in one slot. The channel keeps its name (a cluster delivers a
    PUBLISH to subscribers on every node)."""

    def __init__(self, url: str, prefix: str = "ccd", keep_versions: int = 5) -> None:
        self._redis = connect(url, socket_timeout=30, socket_connect_timeout=5)
        self.prefix = hash_tagged(prefix, is_cluster(self._redis))
        self.keep_versions = keep_versions
        self.channel = f"{prefix}:updates"
        self._pubsub: Any = None
        self._seen_pointer = self._read_pointer_or_none()

    def _key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def publish(self, snapshot: ModelSnapshot, fence: Fence | None = None, after: int = 0) -> int:
        counter, versions = self._key("next_version"), self._key("versions")
        version = int(self._redis.eval(_REDIS_NEXT_VERSION, 2, counter, versions, after))
        snapshot.meta["version"] = version
        blob, meta = encode_snapshot(snapshot)
        n_chunks = max(1, -(-len(blob) // REDIS_CHUNK_BYTES))
        for first in range(0, n_chunks, _REDIS_CHUNKS_PER_PIPELINE):
            pipe = self._redis.pipeline(transaction=False)
            for index in range(first, min(first + _REDIS_CHUNKS_PER_PIPELINE, n_chunks)):
                part = blob[index * REDIS_CHUNK_BYTES : (index + 1) * REDIS_CHUNK_BYTES]
                pipe.set(self._key("model", version, "chunk", index), part, ex=_REDIS_STAGING_TTL_S)
            pipe.execute()
        meta["chunks"] = n_chunks
        keys = [self._key("model", version, "meta"), self._key("versions"), self._key("current")]
        keys += [self._key("model", version, "chunk", index) for index in range(n_chunks)]
        if fence is not None:
            keys.append(fence.key)
        token = "" if fence is None else fence.token
        # The flip, after every part is stored.
        if not self._redis.eval(_REDIS_FLIP, len(keys), *keys, token, json.dumps(meta), version):
            raise StaleWriterError(f"version {version} refused: {fence} is not held any more")
        self._notify("publish", version)
        self._prune(version)
        return version

    def _notify(self, event: str, version: int) -> None:
        self._redis.publish(self.channel, json.dumps({"event": event, "version": version}))

    def _prune(self, current: int) -> None:
        for old in _versions_to_prune(self.versions(), current, self.keep_versions):
            meta = self._redis.get(self._key("model", old, "meta"))
            n_chunks = int(json.loads(meta).get("chunks", 0)) if meta else 0
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._key("versions"), str(old))
            pipe.delete(self._key("model", old, "meta"))
            for index in range(n_chunks):
                pipe.delete(self._key("model", old, "chunk", index))
            pipe.execute()

    def current_version(self) -> int | None:
        value = self._redis.get(self._key("current"))
        return None if value is None else int(value)

    def _read_pointer_or_none(self) -> int | None:
        import redis

        try:
            return self.current_version()
        except redis.RedisError:
            return None

    def _raw_meta(self, version: int) -> tuple[dict[str, Any], int]:
        """The stored metadata of ``version`` and its chunk count."""
        raw_meta = self._redis.get(self._key("model", version, "meta"))
        if raw_meta is None:
            raise KeyError(f"model version {version} does not exist")
        try:
            meta = json.loads(raw_meta)
            return meta, int(meta.pop("chunks"))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptModelError(f"version {version}: unreadable metadata") from error

    def load_meta(self, version: int) -> dict[str, Any]:
        return self._raw_meta(version)[0]

    def load(self, version: int | None = None) -> ModelSnapshot:
        if version is None:
            version = self.current_version()
            if version is None:
                raise KeyError("no model version has been published yet")
        meta, n_chunks = self._raw_meta(version)
        parts: list[bytes] = []
        for first in range(0, n_chunks, _REDIS_CHUNKS_PER_PIPELINE):
            keys = [
                self._key("model", version, "chunk", index)
                for index in range(first, min(first + _REDIS_CHUNKS_PER_PIPELINE, n_chunks))
            ]
            values = self._redis.mget(keys)
            if any(value is None for value in values):
                raise CorruptModelError(f"version {version}: a chunk is missing")
            parts.extend(values)
        return decode_snapshot(b"".join(parts), meta)

    def versions(self) -> list[int]:
        return sorted(int(v) for v in self._redis.zrange(self._key("versions"), 0, -1))

    def set_current(self, version: int) -> None:
        if not self._redis.exists(self._key("model", version, "meta")):
            raise KeyError(f"model version {version} does not exist")
        self._redis.set(self._key("current"), version)
        self._notify("rollback", version)

    def wait_for_update(self, timeout_s: float) -> bool:
        """True when an update was announced, or when the pointer moved while not subscribed
        (first call, or after a lost connection). A lost connection raises its ``RedisError``
        at once (the next call resubscribes): the caller reports the outage, once."""
        import redis

        deadline = time.monotonic() + timeout_s
        try:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self.channel)
                if self._pointer_moved():
                    return True
            while (remaining := deadline - time.monotonic()) > 0:
                message = self._pubsub.get_message(timeout=remaining)
                if message is not None and message.get("type") == "message":
                    while self._pubsub.get_message(timeout=0) is not None:
                        pass  # several queued announcements need only one reload
                    self._seen_pointer = self.current_version()
                    return True
            return False
        except redis.RedisError:
            self._drop_pubsub()
            raise

    def _pointer_moved(self) -> bool:
        pointer = self.current_version()
        moved = pointer != self._seen_pointer
        self._seen_pointer = pointer
        return moved

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:  # closing a broken connection may fail again; it is gone anyway
                pass
            self._pubsub = None

    def close(self) -> None:
        self._drop_pubsub()
        self._redis.close()
