"""Keeps the newest good model version in memory and swaps it atomically.

A background thread waits on the store's notification (``wait_for_update``), which returns at the
latest after ``poll_s`` so polling is the fallback when a notification is lost. Whatever version
the store's ``current`` pointer names is served (a rollback is followed too). A version that
fails its checks is refused once, logged and counted; the last good model stays in place. While
the store is unreachable the last loaded model keeps being served and the thread keeps trying;
an outage is logged once when it starts and once when it ends (``OutageLog``) and counted
(``ccd_model_store_outages_total``; each failed attempt in ``ccd_model_reload_failures_total``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from contracts.model_store import CorruptModelError, ModelStore
from contracts.throttle import OutageLog
from service.metrics import ServiceMetrics
from service.ranking import ServingModel

log = logging.getLogger(__name__)

# Longest single wait on the store's notification, so that stop() takes effect quickly.
_WAIT_SLICE_S = 1.0
# Shortest wait after a failed wait on the store (no busy loop while it is down).
_MIN_RETRY_S = 0.1


def is_outage(error: Exception) -> bool:
    """The store is unreachable (a connection refused, reset or timed out), as opposed to a
    bug, which still gets its traceback."""
    return isinstance(error, OSError | redis.ConnectionError | redis.TimeoutError)


class ModelHolder:
    def __init__(
        self,
        store: ModelStore,
        metrics: ServiceMetrics,
        poll_s: float,
        prepare: Callable[[ServingModel], object] | None = None,
        ann_min_items: int = 0,
    ) -> None:
        """``prepare``: called with each new model before it is swapped in (the catalogue
        builds its filter masks), in the reload thread. ``ann_min_items``: a version with at
        least this many items gets its approximate item index built before the swap, in the
        same thread (``CCD_ANN_MIN_ITEMS``; 0 = never)."""
        self._store = store
        self.ann_min_items = ann_min_items
        self.prepare = prepare
        self._metrics = metrics
        self._poll_s = poll_s
        self._model: ServingModel | None = None
        self._refused: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self._outage = OutageLog(log, "model store")

    @property
    def model(self) -> ServingModel | None:
        """The version to serve; callers read it once per request and keep that reference."""
        return self._model

    def refresh(self) -> bool:
        """Loads the store's current version if it differs from the served one; True if swapped."""
        with self._refresh_lock:
            try:
                version = self._store.current_version()
            except Exception as error:
                self._store_failed(error, "cannot read the current model version")
                return False
            self._store_answered()
            served = self._model.version if self._model is not None else None
            if version is None or version == served or version in self._refused:
                return False
            return self._load(version)

    def _load(self, version: int) -> bool:
        try:
            model = self._serving(version)
        except CorruptModelError as error:
            # Refused for good: a version's bytes never change, so retrying cannot help.
            self._refused.add(version)
            log.error("refusing model version %d: %s", version, error)
            self._metrics.model_reload_failures.labels("corrupt").inc()
            return False
        except KeyError:
            log.warning("model version %d vanished before it could be loaded", version)
            self._metrics.model_reload_failures.labels("missing").inc()
            return False
        except Exception as error:
            self._store_failed(error, f"cannot load model version {version}")
            return False
        self._prepare(model)
        self._model = model  # the atomic swap: in-flight requests keep their old reference
        self._record_swap(model)
        return True

    def _serving(self, version: int) -> ServingModel:
        """``version`` loaded, checked and in serving form (with its item index when big)."""
        return ServingModel.from_snapshot(self._store.load(version), self.ann_min_items)

    def _prepare(self, model: ServingModel) -> None:
        """Runs ``prepare`` on a model about to be served; a failure is logged, not fatal (a
        request then builds what it needs itself)."""
        if self.prepare is None:
            return
        try:
            self.prepare(model)
        except Exception:
            log.exception("preparing model version %d for serving failed", model.version)

    def _store_failed(self, error: Exception, doing: str) -> None:
        """Count a failed store call; an outage is logged when it starts, a bug every time."""
        self._metrics.model_reload_failures.labels("store").inc()
        if not is_outage(error):
            log.error("%s", doing, exc_info=error)
        elif self._outage.failed(error):
            self._metrics.model_store_outages.inc()

    def _store_answered(self) -> None:
        self._outage.succeeded()  # logs the end of an outage, once

    def rollback(self, version: int) -> ServingModel:
        """Loads and checks a kept ``version``, points the store's ``current`` at it and serves
        it. Raises ``KeyError`` when the store does not keep it and ``CorruptModelError`` when
        it fails its checks; then the pointer and the served model are left as they were."""
        with self._refresh_lock:
            try:
                model = self._serving(version)
            except CorruptModelError:
                self._refused.add(version)
                raise
            self._store.set_current(version)
            self._prepare(model)
            self._model = model
            self._record_swap(model)
        return model

    def _record_swap(self, model: ServingModel) -> None:
        self._metrics.model_reloads.inc()
        self._metrics.model_version.set(model.version)
        self._metrics.model_loaded_at.set(model.loaded_at)
        finished_at = model.meta.get("published_at", model.meta.get("trained_at"))
        if isinstance(finished_at, int | float):
            self._metrics.publish_to_serve.observe(max(0.0, model.loaded_at - finished_at))
        log.info(
            "serving model version %d (%d users, %d items, dim %d)",
            model.version,
            model.n_users,
            model.n_items,
            model.dim,
        )

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="model-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_poll = time.monotonic() + self._poll_s
        while not self._stop.is_set():
            # Short waits keep stop() prompt whatever the poll interval.
            wait_s = min(_WAIT_SLICE_S, max(0.0, next_poll - time.monotonic()))
            try:
                notified = self._store.wait_for_update(wait_s)
            except Exception as error:
                if is_outage(error):
                    if self._outage.failed(error):
                        self._metrics.model_store_outages.inc()
                else:
                    log.exception("waiting for model updates failed; polling instead")
                notified = False
                self._stop.wait(max(wait_s, _MIN_RETRY_S))
            if self._stop.is_set():
                break
            if notified or time.monotonic() >= next_poll:
                self.refresh()
                next_poll = time.monotonic() + self._poll_s

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Blocks until a version >= ``version`` is served (for tests and the CLI banner)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            model = self._model
            if model is not None and model.version >= version:
                return True
            time.sleep(0.05)
        return False
