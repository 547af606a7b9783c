"""The gateway's Prometheus metrics (its own registry, served at /metrics on the HTTP port)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "icow_gateway_requests",
            "Requests answered, by protocol, endpoint, model and status code",
            ["protocol", "endpoint", "model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "icow_gateway_request_seconds",
            "Request latency in the gateway, by protocol, endpoint and model",
            ["protocol", "endpoint", "model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "icow_gateway_in_flight", "Requests being served now", ["protocol"], registry=self.registry
        )

    @contextmanager
    def track(self, protocol: str, endpoint: str, model: str) -> Iterator[list[str]]:
        """Count one request; the caller puts its status code in the yielded list."""
        code = ["500" if protocol == "http" else "INTERNAL"]
        gauge = self.in_flight.labels(protocol)
        gauge.inc()
        start = time.perf_counter()
        try:
            yield code
        finally:
            gauge.dec()
            self.latency.labels(protocol, endpoint, model).observe(time.perf_counter() - start)
            self.requests.labels(protocol, endpoint, model, code[0]).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
