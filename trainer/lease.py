"""The trainer's writer lease: of all trainers started against one store, one trains and
publishes; the others wait and take over when it dies.

- Redis (when the store is Redis): key ``{prefix}:trainer:lease`` (on a Redis Cluster
  ``{{prefix}}:trainer:lease``, in the model store's slot) holds the holder's random
  token with a TTL (``SET NX PX``), renewed by a heartbeat thread every TTL/3 and deleted on a
  clean exit. Each acquisition increments ``{prefix}:trainer:lease:epoch``. A holder that could
  not renew in time (Redis down, process paused) counts its lease as doubtful from TTL * 0.8
  after its last successful renewal and writes nothing durable until it renews; it takes the key
  back after an outage only if the epoch shows nobody held it meanwhile, else it has lost (and
  says whether to another trainer, or with Redis's data: no holder and an epoch counter behind
  its own, as after a restart without persistence; an epoch never goes below the last one this
  lease held). The
  store's publish is fenced by the token (checked atomically with the pointer flip), so a
  zombie holder cannot publish.
- Embedded (file store): an exclusive ``flock`` on ``data_dir/trainer.lock``. The kernel drops
  it when the holder dies, so a lost lease is never held by a live process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from contracts.model_store import Fence
from contracts.redis_client import connect, hash_tagged, is_cluster

if TYPE_CHECKING:
    from contracts.settings import Settings

log = logging.getLogger(__name__)

# A holder trusts its lease until this fraction of the TTL after the start of its last
# successful renewal: the rest is the margin for clock drift and scheduling delays.
TRUST_FRACTION = 0.8
LOCK_FILE = "trainer.lock"


class LeaseLost(RuntimeError):
    """Another trainer holds (or has held) the writer lease since this one acquired it."""


class WriterLease(Protocol):
    holder: str  # who this trainer is, for logs and the published metadata
    epoch: int  # increments with every acquisition (0 before the first)

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this trainer holds the lease (True) or ``stop`` is set (False)."""

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is known to be lost."""

    def wait_trusted(self, stop: threading.Event) -> bool:
        """Block until the lease is surely held (False if ``stop`` is set first); raises
        ``LeaseLost``. Called before every durable write."""

    @property
    def fence(self) -> Fence | None:
        """What the store's publish checks, or None when the lease needs no fencing."""

    def release(self) -> None: ...

    def close(self) -> None: ...


def open_lease(settings: Settings) -> WriterLease:
    """The Redis lease next to a Redis store, else a lock file in ``data_dir`` (both the model
    slot's own: ``Settings.store_prefix``, ``Settings.slot_dir``)."""
    if settings.uses_redis:
        return RedisLease(settings.redis_url, settings.store_prefix, settings.lease_ttl_s)
    return FileLease(settings.slot_dir / LOCK_FILE)


def _holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --- embedded: flock -----------------------------------------------------------------------


class FileLease:
    """An exclusive ``flock``; the file's content (epoch, holder) is for operators and epochs."""

    POLL_S = 0.2

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.holder = _holder_name()
        self.epoch = 0
        self._file: Any = None

    def acquire(self, stop: threading.Event) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the lease's lifetime
        waiting_logged = False
        while True:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting_logged:
                    log.info("standing by: %s is held by %s", self.path, self._read()["holder"])
                    waiting_logged = True
            if stop.wait(self.POLL_S):
                self._file.close()
                self._file = None
                return False
        self.epoch = int(self._read().get("epoch", 0)) + 1
        self._file.truncate(0)
        self._file.write(json.dumps({"epoch": self.epoch, "holder": self.holder}).encode())
        self._file.flush()
        log.info("writer lock %s taken (epoch %d)", self.path, self.epoch)
        return True

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_bytes() or b"{}")
        except ValueError:
            return {"holder": "?"}

    def check(self) -> None:
        pass  # a flock cannot be taken away from a living holder

    def wait_trusted(self, stop: threading.Event) -> bool:
        return not stop.is_set()

    @property
    def fence(self) -> Fence | None:
        return None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.release()


# --- Redis: SET NX PX with a token and a heartbeat -----------------------------------------

# KEYS: lease, epoch; ARGV: token, ttl ms, the last epoch this trainer held (a floor: the epoch
# must not go back when Redis lost its counter). Returns the new epoch, or 0 if someone holds it.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    local epoch = redis.call('INCR', KEYS[2])
    if epoch <= tonumber(ARGV[3]) then
        epoch = tonumber(ARGV[3]) + 1
        redis.call('SET', KEYS[2], epoch)
    end
    return epoch
end
return 0
"""
# KEYS: lease, epoch; ARGV: token, ttl ms, our epoch. 1: renewed; 2: expired and taken back
# (nobody held it meanwhile); -1: lost to another trainer (it holds the lease, or the epoch
# moved past ours); -2: lost with Redis's data (no holder and the epoch counter behind ours: a
# Redis restarted without persistence; whether another trainer wrote meanwhile is unknowable).
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if holder then return -1 end
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch < tonumber(ARGV[3]) then return -2 end
if epoch > tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""
_LOST_TO_ANOTHER = "another trainer took it"
_LOST_WITH_DATA = (
    "Redis no longer has it nor its epoch counter (restarted without persistence? run it "
    "with an append-only file); taking it again and resuming from the checkpoint"
)
# KEYS: lease; ARGV: token. Deletes the key only if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLease:
    """See the module docstring. ``ttl_s`` also sets the standby's poll (TTL/4, at most 1 s)."""

    def __init__(self, url: str, prefix: str, ttl_s: float) -> None:
        timeout = max(0.5, ttl_s / 3)
        self._redis = connect(url, socket_timeout=timeout)
        # The model store's tag on a cluster: the fenced flip reads this key with its own.
        tagged = hash_tagged(prefix, is_cluster(self._redis))
        self.key = f"{tagged}:trainer:lease"
        self.epoch_key = f"{tagged}:trainer:lease:epoch"
        self.ttl_s = ttl_s
        self.holder = _holder_name()
        self.epoch = 0
        self._trusted_until = float("-inf")  # monotonic clock
        self._lost = False
        self._lost_reason = ""
        self._held = False
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def acquire(self, stop: threading.Event) -> bool:
        import redis

        poll = min(1.0, self.ttl_s / 4)
        last_holder, failing = None, False
        while not stop.is_set():
            started = time.monotonic()
            try:
                epoch = int(self._redis.eval(_ACQUIRE, 2, self.key, self.epoch_key, self.holder,
                                             self._ttl_ms, self.epoch))  # fmt: skip
                if epoch > 0:
                    self._taken(epoch, started)
                    return True
                holder = self._redis.get(self.key)
                if holder != last_holder:
                    log.info("standing by: the writer lease %s is held by %s", self.key, holder)
                    last_holder = holder
                failing = False
            except redis.RedisError as error:
                if not failing:  # once per outage, not once per poll
                    log.error("cannot reach Redis for the writer lease (%s); retrying", error)
                failing = True
            stop.wait(poll)
        return False

    def _taken(self, epoch: int, started: float) -> None:
        self.epoch, self._lost, self._held = epoch, False, True
        self._trusted_until = started + TRUST_FRACTION * self.ttl_s
        self._stop_heartbeat.clear()
        self._heartbeat = threading.Thread(
            target=self._renew_loop, name="lease-heartbeat", daemon=True
        )
        self._heartbeat.start()
        log.info("writer lease %s taken (epoch %d, holder %s)", self.key, epoch, self.holder)

    def _renew_loop(self) -> None:
        import redis

        failing = False
        while not self._stop_heartbeat.wait(self.ttl_s / 3):
            started = time.monotonic()
            try:
                result = int(self._redis.eval(_RENEW, 2, self.key, self.epoch_key, self.holder,
                                              self._ttl_ms, self.epoch))  # fmt: skip
            except redis.RedisError as error:
                if not failing:
                    log.warning("cannot renew the writer lease (%s); retrying", error)
                failing = True
                continue
            if result < 0:
                self._lost_reason = _LOST_TO_ANOTHER if result == -1 else _LOST_WITH_DATA
                log.error("writer lease %s lost: %s", self.key, self._lost_reason)
                self._lost = True
                return
            self._trusted_until = started + TRUST_FRACTION * self.ttl_s
            if failing or result == 2:
                log.info("writer lease %s renewed after an interruption", self.key)
            failing = False

    @property
    def lost(self) -> bool:
        """True once the heartbeat found another holder (or a newer epoch)."""
        return self._lost

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(
                f"writer lease {self.key} lost (epoch {self.epoch}): {self._lost_reason}"
            )

    def wait_trusted(self, stop: threading.Event) -> bool:
        waited = False
        while True:
            self.check()
            if time.monotonic() < self._trusted_until:
                if waited:
                    log.info("writer lease %s trusted again", self.key)
                return True
            if not waited:
                log.warning("writer lease %s not renewed lately; waiting before writing", self.key)
                waited = True
            if stop.wait(0.1):
                return False

    @property
    def fence(self) -> Fence | None:
        return Fence(self.key, self.holder)

    def release(self) -> None:
        import redis

        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        if self._held:
            self._held = False
            try:
                self._redis.eval(_RELEASE, 1, self.key, self.holder)
            except redis.RedisError as error:  # it expires after the TTL anyway
                log.warning("could not release the writer lease (%s)", error)
        self._trusted_until = float("-inf")

    def close(self) -> None:
        self.release()
        self._redis.close()
