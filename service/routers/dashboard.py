"""The operator dashboard: a static page at ``/dashboard`` and the small JSON endpoints it reads.

The page (``service/static/dashboard.html`` + ``dashboard.js``) draws its charts with Chart.js
4.6.1, vendored under ``service/static/vendor`` (no CDN: every asset comes from this service,
so it works offline). It polls ``GET /dashboard/api/overview`` every few seconds:

* the served version, the store's current one and the kept versions with their metadata
  (block, learner, trained-at, prequential Recall@K / NDCG@K), with a rollback button that calls
  ``POST /admin/rollback`` with the API key typed into the page (kept in the tab's
  ``sessionStorage`` only);
* ``history``: the prequential metrics per block of every version this server has seen (the kept
  ones are read from the store once each; versions the store has pruned stay while this process
  lives, at most ``MAX_HISTORY``);
* the online statistics of ``GET /stats/online``;
* counters for the ingest chart (the page turns successive values into rates), the served
  version's staleness (now minus its newest event's timestamp) and the serving latency
  percentiles per route, estimated from the Prometheus histogram since start.

``GET /dashboard/api/users/{user_id}`` is the user lens: the user's items from the stream, the
impressions this server holds for them (with their hits) and their current top-k, ranked as
``GET /recommendations`` ranks it but not recorded as an impression (an operator looking is not
the user being shown).
"""

# No `from __future__ import annotations`: the endpoint signatures use names local to
# build_router, which FastAPI must resolve at definition time.

import threading
import time
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from contracts.events import MAX_ID_LENGTH
from service.metrics import ServiceMetrics
from service.state import ServiceState, StateDep

STATIC_DIR = FilePath(__file__).resolve().parent.parent / "static"
# Versions whose per-block metrics the dashboard remembers.
MAX_HISTORY = 1000
# Items of the user lens's interacted-with list.
MAX_LENS_ITEMS = 100
_QUANTILES = (0.5, 0.9, 0.99)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram [(upper bound, count <= it)], interpolated
    linearly inside its bucket (as Prometheus' ``histogram_quantile``); None when empty.

    Examples:
        >>> round(histogram_quantile([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.75), 6)
        0.15
        >>> histogram_quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None
        True
    """
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


def latency_percentiles(metrics: ServiceMetrics) -> list[dict[str, Any]]:
    """p50/p90/p99 (ms) and the request count per (method, route) since start."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for metric in metrics.latency.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["method"], sample.labels["route"])
                series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    rows = []
    for (method, route), buckets in sorted(series.items()):
        buckets.sort()
        row: dict[str, Any] = {"method": method, "route": route, "count": int(buckets[-1][1])}
        for q in _QUANTILES:
            value = histogram_quantile(buckets, q)
            row[f"p{round(q * 100)}_ms"] = None if value is None else round(value * 1000, 3)
        rows.append(row)
    return rows


def version_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one version's metadata.

    Examples:
        >>> version_summary({"version": 3, "block_index": 2, "prequential": {"recall@20": 0.1}})
        {'version': 3, 'block_index': 2, 'learner': None, 'trained_at': None, 'events': None, \
'n_users': None, 'n_items': None, 'prequential': {'recall@20': 0.1}, 'newest_event_at': None}
    """
    data_range = meta.get("data_range") or {}
    return {
        "version": meta.get("version"),
        "block_index": meta.get("block_index"),
        "learner": meta.get("learner"),
        "trained_at": meta.get("trained_at"),
        "events": meta.get("events"),
        "n_users": meta.get("n_users"),
        "n_items": meta.get("n_items"),
        "prequential": dict(meta.get("prequential") or {}),
        "newest_event_at": data_range.get("last_timestamp"),
    }


class VersionHistory:
    """Summaries of the versions seen, by version number (bounded, oldest dropped first)."""

    def __init__(self) -> None:
        self._by_version: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(self, state: ServiceState) -> list[int]:
        """Reads the metadata of kept versions not yet known; returns the kept versions."""
        kept = state.store.versions()
        for version in kept:
            if version not in self._by_version:
                summary = version_summary({"version": version, **state.store.load_meta(version)})
                self._remember(version, summary)
        served = state.holder.model
        if served is not None and served.version not in self._by_version:
            self._remember(
                served.version, version_summary({**served.meta, "version": served.version})
            )
        return kept

    def _remember(self, version: int, summary: dict[str, Any]) -> None:
        with self._lock:
            self._by_version[version] = summary
            while len(self._by_version) > MAX_HISTORY:
                del self._by_version[min(self._by_version)]

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._by_version[version] for version in sorted(self._by_version)]


def _ops(state: ServiceState) -> dict[str, Any]:
    registry = state.metrics.registry
    served = state.holder.model
    newest = (served.meta.get("data_range") or {}).get("last_timestamp") if served else None
    seen = state.metrics.refresh_seen_counts(state.seen.counts)  # the gauges' figures
    return {
        "now": time.time(),
        "events_accepted": registry.get_sample_value("ccd_events_accepted_total") or 0.0,
        "events_read": registry.get_sample_value("ccd_seen_events_total") or 0.0,
        "seen_users": None if seen is None else seen[0],
        "seen_pairs": None if seen is None else seen[1],
        "model_staleness_s": None if newest is None else max(0.0, time.time() - newest),
        "latency": latency_percentiles(state.metrics),
    }


def _arms(state: ServiceState) -> list[dict[str, Any]]:
    """The A/B arms (CCD_AB): slot, weight and the version served from it; [] without a split."""
    weights = dict(state.settings.ab_arms)
    return [
        {
            "arm": arm,
            "weight": weights.get(arm),
            "served_version": view.holder.model.version if view.holder.model else None,
        }
        for arm, view in state.views.items()
    ]


def build_router() -> APIRouter:
    router = APIRouter(tags=["dashboard"])
    history = VersionHistory()

    @router.get("/dashboard", response_class=FileResponse, include_in_schema=False)
    def dashboard() -> FileResponse:
        """The operator dashboard (HTML)."""
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")

    @router.get("/dashboard/api/overview")
    def overview(state: StateDep) -> dict[str, Any]:
        """Versions (kept, current, served), per-block metrics, online statistics, ingest
        counters, staleness and latency percentiles: everything the dashboard polls."""
        try:
            kept, current = history.update(state), state.store.current_version()
            store_error = None
        except Exception as error:  # the page still shows what this server knows
            kept, current, store_error = [], None, str(error)
        served = state.holder.model
        summaries = {entry["version"]: entry for entry in history.all()}
        return {
            "served": None if served is None else summaries.get(served.version),
            "served_version": None if served is None else served.version,
            "current_version": current,
            "kept": [summaries[v] for v in kept if v in summaries],
            "history": list(summaries.values()),
            "store_error": store_error,
            "arms": _arms(state),
            "online": state.attribution.stats(),
            "ops": _ops(state),
            "eval_k": state.settings.eval_k,
        }

    @router.get("/dashboard/api/users/{user_id:path}")
    def user_lens(
        state: StateDep,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> dict[str, Any]:
        """The user's items from the stream, their impressions held here (with hits) and their
        current top-k (not recorded as an impression)."""
        from service.routers.recommendations import _rank

        state = state.view_of(user_id)  # the user's A/B arm
        version, (ranked,) = _rank(state, [user_id], k, [True])
        items = sorted(state.seen.items_of(user_id))
        impressions = state.attribution.impressions_of(user_id)
        return {
            "user_id": user_id,
            "arm": state.arm,
            "model_version": version,
            "strategy": ranked.strategy,
            "recommendations": [
                {"item_id": item, "score": score}
                for item, score in zip(ranked.item_ids, ranked.scores, strict=True)
            ],
            "seen_count": len(items),
            "seen": items[:MAX_LENS_ITEMS],
            "impressions": [
                {
                    "recommendation_id": shown.recommendation_id,
                    "at": shown.at,
                    "version": shown.version,
                    "arm": shown.arm,
                    "items": list(shown.items),
                    "hits": sorted(shown.hits or ()),
                }
                for shown in impressions
            ],
        }

    return router


def static_files() -> StaticFiles:
    """The page's script, style and vendored libraries, mounted at ``/dashboard/static``."""
    return StaticFiles(directory=STATIC_DIR)
