"""Prometheus metrics of one server: requests, latencies, the version served, swaps, index age, re-verification."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """All metrics of one app, in a registry of its own.

    A registry per app (not prometheus-client's global one) lets two servers live in one process,
    as they do in tests, without "duplicated timeseries" errors.

    Args:
        version_info: returns ``(version, created_at)`` of the version served now, or ``(None, None)``.
    """

    def __init__(self, version_info: Callable[[], tuple[str | None, datetime | None]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self._version_info = version_info
        self.requests = Counter(
            "retrofresh_requests_total", "HTTP requests answered", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "retrofresh_request_seconds", "Time to answer a request", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.swaps = Counter("retrofresh_index_swaps_total", "Index versions swapped in", registry=self.registry)
        self.swap_failures = Counter(
            "retrofresh_index_swap_failures_total", "Index versions refused", ["kind"], registry=self.registry
        )
        self.swap_seconds = Histogram(
            "retrofresh_index_load_seconds",
            "Time to download, verify, map and warm a version",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "retrofresh_retrieve_batch_texts",
            "Texts embedded and searched together by the retrieve batcher",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.version = Gauge(
            "retrofresh_index_version_info", "1 for the index version served now", ["version"], registry=self.registry
        )
        self.loaded = Gauge("retrofresh_index_loaded", "1 while an index version is loaded", registry=self.registry)
        self.loaded.set_function(lambda: 1.0 if self._version_info()[0] else 0.0)
        self.age = Gauge(
            "retrofresh_index_age_seconds",
            "Seconds since the version served now was created (0 when none is)",
            registry=self.registry,
        )
        self.age.set_function(self._age)
        # Re-verification of the served shards (model/server/reverify.py).
        self.verifications = Counter(
            "retrofresh_index_verifications_total", "Re-verification passes over the served version's shard files",
            registry=self.registry,
        )
        self.corrupt_found = Counter(
            "retrofresh_index_corrupt_shards_found_total",
            "Served shards a re-verification found corrupt that the pass before had not", registry=self.registry,
        )
        self.corrupt_shards = Gauge(
            "retrofresh_index_corrupt_shards", "Shards of the served version the last re-verification found corrupt",
            registry=self.registry,
        )
        self.last_verified = Gauge(
            "retrofresh_index_last_verified_timestamp_seconds",
            "Unix time the last re-verification of the served shards finished (0: none yet)", registry=self.registry,
        )
        self._labelled_version: str | None = None

    def _age(self) -> float:
        _, created_at = self._version_info()
        return max(0.0, time.time() - created_at.timestamp()) if created_at else 0.0

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def set_version(self, version: str | None) -> None:
        """Move the ``version`` label of ``retrofresh_index_version_info`` to the version served now."""
        if self._labelled_version is not None:
            self.version.remove(self._labelled_version)
        if version is not None:
            self.version.labels(version=version).set(1)
        self._labelled_version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every HTTP request by its route template (``/v1/retrieve``, not the raw path)."""

    def __init__(self, app, metrics_of: Callable[[dict], ServerMetrics | None]):
        self.app = app
        self._metrics_of = metrics_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            metrics = self._metrics_of(scope)
            if metrics is not None:
                route = scope.get("route")
                # Unmatched paths share one label so a scanner cannot grow the label set.
                name = getattr(route, "path", None) or "unmatched"
                metrics.observe_request(name, scope["method"], status, time.perf_counter() - start)
