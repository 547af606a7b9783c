"""Prometheus metrics of one worker process (``icow worker --metrics-port N``).

Each worker serves its own ``/metrics``: a worker is one process (Celery's solo pool, never
forking), so prometheus-client's multiprocess mode is not needed; scrape every worker. Queue
depth and the age of the oldest job are fleet-wide and come from one process instead
(``icow exporter``, workers/exporter.py).

======================================  =========  ==========================================
metric                                  type       labels
======================================  =========  ==========================================
``icow_jobs_total``                     counter    model, version, outcome (``succeeded`` or
                                                   the error type: ``InvalidJob``, ...)
``icow_queue_wait_seconds``             histogram  model: job created -> taken by a worker
``icow_compute_seconds``                histogram  model, version: one session call
``icow_latency_seconds``                histogram  model: job created -> result written
``icow_batch_size``                     histogram  model, version: jobs run in one session call
``icow_batch_samples``                  histogram  model, version: samples in one session call
``icow_model_load_seconds``             gauge      model, version: session creation time
``icow_session_info``                   gauge (1)  model, version, provider, requested
``icow_session_cpu_fallback``           gauge      model, version: 1 when a GPU provider was
                                                   requested but onnxruntime runs on the CPU
``icow_worker_ready``                   gauge      1 once the preloaded models are warm
``icow_model_failed``                   gauge (1)  model, version: a version in the repository
                                                   not served: it does not load, its config.toml
                                                   is refused (retried at each rescan)
``icow_shadow_jobs_total``              counter    model, primary, shadow (versions), outcome:
                                                   compared, mismatch, failed, dropped
``icow_shadow_max_abs_error``           histogram  model, primary, shadow, output: per job
``icow_shadow_max_rel_error``           histogram  model, primary, shadow, output: per job, over
                                                   the primary's largest magnitude
``icow_shadow_argmax_agreement_ratio``  gauge      model, primary, shadow, output: rows whose argmax
                                                   agrees / rows, since start (2-D float outputs)
``icow_shadow_latency_ratio``           histogram  model, primary, shadow: shadow / primary compute
======================================  =========  ==========================================
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from icow.workers.models import ModelManager
from icow.workers.observer import JobOutcome
from icow.workers.shadow import ShadowResult

OTHER = "_other"  # label for a model this worker does not serve (bounds label cardinality)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_ERROR_BUCKETS = (0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1, 10, 100)
_RATIO_BUCKETS = (0.25, 0.5, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 4, 8)


class _SessionCollector(Collector):
    """Read at scrape time from the model manager: what is loaded, where, how long it took."""

    def __init__(self, manager: ModelManager, ready: Callable[[], bool]):
        self.manager = manager
        self.ready = ready

    def collect(self) -> Iterable[GaugeMetricFamily]:
        load = GaugeMetricFamily("icow_model_load_seconds", "Session creation time", labels=["model", "version"])
        info = GaugeMetricFamily(
            "icow_session_info",
            "Execution provider each session runs on (1 per session)",
            labels=["model", "version", "provider", "requested"],
        )
        fallback = GaugeMetricFamily(
            "icow_session_cpu_fallback",
            "1 when a GPU provider was requested but onnxruntime runs the session on the CPU",
            labels=["model", "version"],
        )
        times = dict(self.manager.load_times_s)
        for m in self.manager.loaded():
            labels = [m.name, str(m.version)]
            if (m.name, m.version) in times:
                load.add_metric(labels, times[(m.name, m.version)])
            requested = getattr(m, "requested", ("",))[0]
            info.add_metric([*labels, m.providers[0], requested], 1)
            fallback.add_metric(labels, 1 if getattr(m, "cpu_fallback", False) else 0)
        ready = GaugeMetricFamily("icow_worker_ready", "1 once the preloaded models are warm")
        ready.add_metric([], 1 if self.ready() else 0)
        failed = GaugeMetricFamily(
            "icow_model_failed", "1 per model version that does not load (not served)", labels=["model", "version"]
        )
        for key in self.manager.failures():  # does not load, config.toml refused, store refused
            name, _, version = key.rpartition(":")
            failed.add_metric([name, version], 1)
        yield from (load, info, fallback, ready, failed)


class WorkerMetrics:
    """A :class:`~icow.workers.observer.JobObserver` that feeds Prometheus metrics."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        ready: Callable[[], bool] = lambda: True,
        registry: CollectorRegistry | None = None,
    ):
        self.manager = manager
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.jobs = Counter("icow_jobs", "Jobs answered", ["model", "version", "outcome"], registry=reg)
        self.queue_wait = Histogram(
            "icow_queue_wait_seconds", "Job created -> taken", ["model"], buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.compute = Histogram(
            "icow_compute_seconds", "One session call", ["model", "version"], buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.latency = Histogram(
            "icow_latency_seconds", "Job created -> result written", ["model"], buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.batch = Histogram(
            "icow_batch_size",
            "Jobs run in one session call",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.samples = Histogram(
            "icow_batch_samples",
            "Samples in one session call",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        reg.register(_SessionCollector(manager, ready))

    def _model(self, name: str | None) -> str:
        return name if name is not None and name in self.manager.entries else OTHER

    def jobs_done(self, outcomes: Sequence[JobOutcome]) -> None:
        # Jobs that shared a session call share its compute time: one observation per call.
        calls: Tally[tuple[str, str, float]] = Tally()
        reported: dict[tuple[str, str, float], tuple[int | None, int | None]] = {}
        for o in outcomes:
            model = self._model(o.model)
            version = "" if o.version is None else str(o.version)
            self.jobs.labels(model, version, o.outcome).inc()
            if o.queue_wait_s is not None:
                self.queue_wait.labels(model).observe(o.queue_wait_s)
            if o.latency_s is not None:
                self.latency.labels(model).observe(o.latency_s)
            if o.ok and o.compute_s is not None:
                calls[(model, version, o.compute_s)] += 1
                if o.batch is not None or (model, version, o.compute_s) not in reported:
                    reported[(model, version, o.compute_s)] = (o.batch, o.batch_samples)
        for (model, version, compute_s), n in calls.items():
            batch, samples = reported[(model, version, compute_s)]
            self.compute.labels(model, version).observe(compute_s)
            self.batch.labels(model, version).observe(batch or n)
            if samples is not None:
                self.samples.labels(model, version).observe(samples)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` from a daemon thread; returns the HTTP server."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return server


class ShadowMetrics:
    """A :class:`~icow.workers.shadow.ShadowListener` that feeds the ``icow_shadow_*`` metrics."""

    def __init__(self, registry: CollectorRegistry):
        labels = ["model", "primary", "shadow"]
        self.jobs = Counter("icow_shadow_jobs", "Shadow runs by outcome", [*labels, "outcome"], registry=registry)
        self.abs_error = Histogram(
            "icow_shadow_max_abs_error",
            "Max absolute error of an output, per shadowed job",
            [*labels, "output"],
            buckets=_ERROR_BUCKETS,
            registry=registry,
        )
        self.rel_error = Histogram(
            "icow_shadow_max_rel_error",
            "Max absolute error over the primary's largest magnitude, per shadowed job",
            [*labels, "output"],
            buckets=_ERROR_BUCKETS,
            registry=registry,
        )
        self.agreement = Gauge(
            "icow_shadow_argmax_agreement_ratio",
            "Rows of 2-D float outputs whose argmax agrees, over rows compared (since start)",
            [*labels, "output"],
            registry=registry,
        )
        self.latency = Histogram(
            "icow_shadow_latency_ratio",
            "Shadow compute time over the primary's",
            labels,
            buckets=_RATIO_BUCKETS,
            registry=registry,
        )
        self._rows: Tally[tuple[str, str, str, str]] = Tally()
        self._agree: Tally[tuple[str, str, str, str]] = Tally()

    def shadow_done(self, result: ShadowResult) -> None:
        labels = (result.model, str(result.primary), str(result.shadow))
        self.jobs.labels(*labels, result.outcome).inc()
        for name, d in result.outputs.items():
            self.abs_error.labels(*labels, name).observe(d.max_abs_error)
            self.rel_error.labels(*labels, name).observe(d.max_rel_error)
            if d.argmax_rows:
                key = (*labels, name)
                self._rows[key] += d.argmax_rows
                self._agree[key] += d.argmax_agree
                self.agreement.labels(*key).set(self._agree[key] / self._rows[key])
        if result.latency_ratio is not None:
            self.latency.labels(*labels).observe(result.latency_ratio)
