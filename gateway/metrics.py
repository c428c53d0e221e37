"""The gateway's own Prometheus metrics, served at GET /metrics on its port (the scheduler's
token and queue metrics stay on `metrics_port`): requests by route and status, how long each
took (a stream: until its last byte), and how many are being answered now."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class HTTPMetrics:
    """ASGI middleware. A path outside `routes` is counted as "other", so a scan of random URLs
    cannot grow the label set."""

    def __init__(self, app, registry: CollectorRegistry, routes: set[str]):
        self.app, self.routes = app, routes
        self.requests = Counter("litelang_http_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=registry)
        self.seconds = Histogram("litelang_http_request_seconds", "From a request's arrival to its last byte, by path",
                                 ["path"], buckets=_SECONDS, registry=registry)
        self.in_progress = Gauge("litelang_http_requests_in_progress", "Requests being answered (open streams too)",
                                 registry=registry)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.routes else "other"
        status = 500  # what the server answers if the app fails before starting a response
        start = time.monotonic()

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_progress.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.in_progress.dec()
            self.requests.labels(path=path, status=str(status)).inc()
            self.seconds.labels(path=path).observe(time.monotonic() - start)
