"""Prometheus metrics of one app instance, plus the ASGI middleware that times every request.

Each app gets its own ``CollectorRegistry`` so that several apps in one process (tests) do not
collide on metric names.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The seen-items counts are read for /metrics and the dashboard at most this often (in Redis
# mode one HMGET of {prefix}:seen-stats, however many scrapers and dashboards poll).
SEEN_COUNTS_MAX_AGE_S = 5.0


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ccd_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "ccd_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "ccd_recommendations", "Ranked lists served", ["strategy"], registry=r
        )
        self.model_version = Gauge(
            "ccd_model_version", "Version being served (0 = none yet)", registry=r
        )
        self.model_loaded_at = Gauge(
            "ccd_model_loaded_timestamp_seconds", "When the served version was loaded", registry=r
        )
        self.model_reloads = Counter(
            "ccd_model_reloads", "Model versions loaded and swapped in", registry=r
        )
        self.model_reload_failures = Counter(
            "ccd_model_reload_failures",
            "Model versions that could not be loaded",
            ["reason"],
            registry=r,
        )
        self.model_store_outages = Counter(
            "ccd_model_store_outages",
            "Times the model store became unreachable (one per outage, however long)",
            registry=r,
        )
        self.publish_to_serve = Histogram(
            "ccd_model_publish_to_serve_seconds",
            "From a version's publication (its published_at, else trained_at) to serving it here",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.events_accepted = Counter(
            "ccd_events_accepted", "Events appended to the event log", registry=r
        )
        self.events_unknown_fields = Counter(
            "ccd_events_unknown_fields",
            "Accepted events that carried fields the event contract does not know (ignored)",
            registry=r,
        )
        self.events_rejected = Counter(
            "ccd_events_rejected", "Events refused by POST /events", ["reason"], registry=r
        )
        self.seen_events = Counter(
            "ccd_seen_events", "Events read by the seen-items tailer", registry=r
        )
        self.seen_malformed = Counter(
            "ccd_seen_malformed", "Unreadable messages skipped by the seen-items tailer", registry=r
        )
        self.seen_records_lost = Counter(
            "ccd_seen_records_lost",
            "Event-log records retention deleted before the seen-items tailer read them (their "
            "pairs are missing from this server's seen-items index; service.log_gaps)",
            registry=r,
        )
        self.seen_users = Gauge("ccd_seen_users", "Users in the seen-items index", registry=r)
        self.seen_pairs = Gauge(
            "ccd_seen_pairs", "Distinct (user, item) pairs in the seen-items index", registry=r
        )
        self._seen_counts_read_at = -math.inf
        self._seen_counts_lock = threading.Lock()

        self.impressions = Counter(
            "ccd_impressions", "Recommendation answers recorded as impressions", registry=r
        )
        self.impressions_dropped = Counter(
            "ccd_impressions_dropped",
            "Impressions not recorded because the buffer was full (the store stalled)",
            registry=r,
        )
        self.impressions_store_failures = Counter(
            "ccd_impressions_store_failures",
            "Impressions the impression store failed to keep (attribution still sees them)",
            registry=r,
        )
        self.impressions_indexed = Gauge(
            "ccd_impressions_indexed", "Impressions held for attribution", registry=r
        )
        self.impression_hits = Counter(
            "ccd_impression_hits",
            "Impressions followed by at least one attributed event",
            ["arm"],
            registry=r,
        )
        self.attributed_events = Counter(
            "ccd_attributed_events",
            "Events attributed to an impression (a new (impression, item) pair), by how matched",
            ["arm", "match"],
            registry=r,
        )
        self.online_hit_rate = Gauge(
            "ccd_online_hit_rate",
            "Share of the online window's impressions with a hit, per model version and arm",
            ["version", "arm"],
            registry=r,
        )

    def refresh_seen_counts(
        self,
        counts: Callable[[], tuple[int, int] | None],
        max_age_s: float = SEEN_COUNTS_MAX_AGE_S,
    ) -> tuple[int, int] | None:
        """Sets ``ccd_seen_users`` / ``ccd_seen_pairs`` from ``counts`` (the seen index's: the
        ``{prefix}:seen-stats`` hash in Redis mode, whoever wrote the pairs), calling it at most
        once per ``max_age_s``; NaN while it answers None (Redis unreachable). Returns the
        counts the gauges hold (None: unknown). In memory mode the tailer also sets them."""
        with self._seen_counts_lock:
            if time.monotonic() - self._seen_counts_read_at >= max_age_s:
                self._seen_counts_read_at = time.monotonic()
                read = counts()
                self.seen_users.set(math.nan if read is None else read[0])
                self.seen_pairs.set(math.nan if read is None else read[1])
        users = self.registry.get_sample_value("ccd_seen_users")
        pairs = self.registry.get_sample_value("ccd_seen_pairs")
        if users is None or pairs is None or math.isnan(users) or math.isnan(pairs):
            return None
        return int(users), int(pairs)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts and times requests per route template (not per raw path, to bound cardinality)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            # path_format: the template without converters ("{user_id}", not "{user_id:path}").
            template = getattr(route, "path_format", None) or getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
            self.metrics.requests.labels(method, template, str(status)).inc()
