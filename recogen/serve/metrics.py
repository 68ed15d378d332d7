"""Prometheus metrics of the service: requests by route and status, latency histograms, errors, inference and
explanation time.

Each app has its own ``CollectorRegistry`` (two apps in one process, as in the tests, do not clash).
The route label is the route's template (``/v1/classify``), never the raw path, so label values stay few.
"""
from __future__ import annotations

import time
from typing import Any

# Latency buckets in seconds: tiny CPU models answer in milliseconds, generation can take seconds.
BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The app's counters and histograms, and :meth:`exposition` for ``GET /metrics``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("recogen_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("recogen_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=BUCKETS, registry=self.registry)
        self.errors = Counter("recogen_http_errors", "requests answered with an error, by route and kind",
                              ["route", "kind"], registry=self.registry)
        self.inference = Histogram("recogen_inference_duration_seconds", "model time per request (lock wait excluded)",
                                   ["model", "task"], buckets=BUCKETS, registry=self.registry)
        self.explain = Histogram("recogen_explain_duration_seconds",
                                 "explanation time per POST /v1/explain request (lock wait excluded), by model and method",
                                 ["model", "method"], buckets=BUCKETS, registry=self.registry)
        self.explain_waiting = Gauge("recogen_explain_in_progress",
                                     "POST /v1/explain requests being computed or waiting for their model's network",
                                     registry=self.registry)
        self.in_flight = Gauge("recogen_http_requests_in_flight", "requests being answered", registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        """``(body, content type)`` of the Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(scope: dict[str, Any]) -> str:
    """The matched route's path template, or "unmatched" (a 404 on an unknown path)."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and times it (a crash counts as a 500)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        m, t0 = self.metrics, time.perf_counter()
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status["code"] = 500
            raise
        finally:
            m.in_flight.dec()
            route, method = route_label(scope), scope.get("method", "")
            m.requests.labels(route, method, str(status["code"])).inc()
            m.latency.labels(route, method).observe(time.perf_counter() - t0)
            if status["code"] >= 500:
                m.errors.labels(route, "internal").inc()
