"""Prometheus metrics of the scheduler (served over HTTP when `metrics_port` is set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from litelang.scheduler.engine.request import Request

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("litelang_requests", "Finished requests by finish reason", ["reason"], registry=r)
        self.prompt_tokens = Counter("litelang_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.cached_tokens = Counter("litelang_cached_prompt_tokens", "Prompt tokens served from the radix cache", registry=r)
        self.generated_tokens = Counter("litelang_generated_tokens", "Generated tokens", registry=r)
        self.waiting = Gauge("litelang_waiting_requests", "Requests in the waiting queue", registry=r)
        self.running = Gauge("litelang_running_requests", "Requests in the running batch", registry=r)
        self.kv = Gauge("litelang_kv_slots", "KV pool slots by state", ["state"], registry=r)
        self.ttft = Histogram("litelang_time_to_first_token_seconds", "Arrival to first token", buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("litelang_queue_seconds", "Arrival to first scheduled", buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("litelang_e2e_request_latency_seconds", "Arrival to finish", buckets=_LATENCY_BUCKETS,
                             registry=r)
        self.tpot = Histogram("litelang_request_time_per_output_token_seconds",
                              "A request's mean time between output tokens (first token to finish)",
                              buckets=_TOKEN_BUCKETS, registry=r)
        self.retractions = Counter("litelang_retractions", "Running requests paused to free KV slots (recomputed later)",
                                   registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def finished(self, req: Request, reason_name: str) -> None:
        self.requests.labels(reason=reason_name).inc()
        self.prompt_tokens.inc(len(req.prompt_ids))
        self.cached_tokens.inc(req.cached_tokens)
        if req.first_token is not None:
            self.ttft.observe(req.first_token - req.arrival)
        if req.first_scheduled is not None:
            self.queue_time.observe(req.first_scheduled - req.arrival)
        if req.finished_at is not None:
            self.e2e.observe(req.finished_at - req.arrival)
            generated = len(req.output_ids)
            if req.first_token is not None and generated > 1:
                self.tpot.observe((req.finished_at - req.first_token) / (generated - 1))

    def gauges(self, waiting: int, running: int, kv: dict[str, int]) -> None:
        self.waiting.set(waiting)
        self.running.set(running)
        for state in ("free", "cached", "in_use"):
            self.kv.labels(state=state).set(kv[state])
