"""Fleet-wide Prometheus metrics read from Redis by ONE process (``icow exporter``).

Queue depth and the age of the oldest waiting job are what autoscalers need (KEDA, the HPA
through prometheus-adapter); they are the same whichever worker you ask, so a single exporter
reads them from Redis at each scrape instead of every worker exporting them.

======================================  =========  ==========================================
metric                                  type       labels
======================================  =========  ==========================================
``icow_queue_backlog``                  gauge      model: jobs waiting (every priority list)
``icow_queue_oldest_age_seconds``       gauge      model: age of the oldest waiting job (0:
                                                   none waiting)
``icow_model_workers``                  gauge      model, state (``alive``, ``ready``: serving
                                                   it; ``failed``: a version of it does not
                                                   load there, or its config.toml is refused)
``icow_workers``                        gauge      state (``alive``, ``ready``)
``icow_recent_failures``                gauge      length of the capped recent-failures list
``icow_redis_up``                       gauge      0 when Redis did not answer this scrape
======================================  =========  ==========================================
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from icow import connection, keys
from icow.settings import Settings
from icow.workers.heartbeat import failed_models, live_workers
from icow.workers.queues import published_models, queue_states

log = logging.getLogger("icow.exporter")


class FleetCollector(Collector):
    def __init__(self, r: redis.Redis):
        self.r = r

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily("icow_redis_up", "1 when Redis answered this scrape")
        try:
            families = self._read()
        except redis.exceptions.RedisError as exc:
            log.warning("scrape failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        workers = live_workers(self.r)
        models = sorted(
            set(published_models(self.r))
            | {m for w in workers for m in w.get("models") or {}}
            | {m for w in workers for m in failed_models(w)}
        )
        backlog = GaugeMetricFamily("icow_queue_backlog", "Jobs waiting in the model's queue", labels=["model"])
        age = GaugeMetricFamily(
            "icow_queue_oldest_age_seconds", "Age of the oldest waiting job (0: none)", labels=["model"]
        )
        for q in queue_states(self.r, models):
            backlog.add_metric([q.model], q.backlog)
            age.add_metric([q.model], q.oldest_age_s or 0.0)
        per_model = GaugeMetricFamily("icow_model_workers", "Workers serving the model", labels=["model", "state"])
        for m in models:
            serving = [w for w in workers if m in (w.get("models") or {})]
            per_model.add_metric([m, "alive"], len(serving))
            per_model.add_metric([m, "ready"], sum(1 for w in serving if w.get("ready")))
            per_model.add_metric([m, "failed"], sum(1 for w in workers if m in failed_models(w)))
        fleet = GaugeMetricFamily("icow_workers", "Workers with a live heartbeat", labels=["state"])
        fleet.add_metric(["alive"], len(workers))
        fleet.add_metric(["ready"], sum(1 for w in workers if w.get("ready")))
        failures = GaugeMetricFamily("icow_recent_failures", "Entries in the capped recent-failures list")
        failures.add_metric([], int(self.r.llen(keys.RECENT_FAILURES)))
        return [backlog, age, per_model, fleet, failures]


def run_exporter(redis_url: str, port: int, addr: str = "0.0.0.0", *, s: Settings | None = None) -> int:
    """Serve the fleet metrics on ``addr:port`` until SIGTERM/SIGINT (``s``: the ICOW_REDIS_* TLS files)."""
    tls = connection.tls_options(redis_url, s)
    r = connection.connect(redis_url, socket_connect_timeout=5, socket_timeout=10, **tls)
    registry = CollectorRegistry()
    registry.register(FleetCollector(r))
    server: Any
    server, _ = start_http_server(port, addr=addr, registry=registry)
    log.warning("icow exporter serving http://%s:%s/metrics", addr, server.server_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0
