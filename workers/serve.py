"""Start one worker process: load the repository, warm the models, publish them, consume."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import redis
from celery import signals

from icow import keys
from icow.errors import InvalidInput
from icow.workers import tls
from icow.workers.heartbeat import Heartbeat
from icow.workers.models import ModelManager
from icow.workers.observer import FanOut, JobObserver, WorkerStats
from icow.workers.reload import QueueSubscriber, RepositoryWatcher
from icow.workers.repository import Repository
from icow.workers.runner import JobRunner

log = logging.getLogger("icow.worker")


@dataclass
class WorkerOptions:
    repo: str
    redis_url: str
    models: set[str] | None = None
    device: int = 0
    threads: int = 0
    name: str | None = None
    loglevel: str = "INFO"
    events: bool = False
    max_tensor_bytes: int = 256 * 1024 * 1024
    inline_max_bytes: int = 256 * 1024
    metrics_port: int = 0  # serve Prometheus /metrics on this port (0: off)
    rescan_s: float = keys.RESCAN_INTERVAL_S  # rescan the repository this often (0: never)
    heartbeat_ttl_s: int = keys.HEARTBEAT_TTL_S
    lease_s: int = keys.DEFAULT_LEASE_S  # a killed worker's jobs are redone after this (renewed while alive)


def hostname(name: str | None = None) -> str:
    return name or f"icow-{os.getpid()}@{socket.gethostname()}"


def _renew_then_stats(runner: JobRunner) -> dict[str, object]:
    """Each heartbeat also renews the lease of every in-flight message (see workers/intake.py)."""
    from icow.workers import app as app_module

    try:
        runner.intake.renew(runner.inflight_tags() + app_module.delivered_tags())
    except redis.exceptions.RedisError as exc:
        log.warning("could not renew leases: %s", exc)
    return runner.stats()


def run_worker(opts: WorkerOptions) -> int:
    """Serve until shut down (SIGTERM/SIGINT: warm shutdown). Returns the exit code."""
    from icow.workers import app as app_module

    manager = ModelManager(Repository(opts.repo), only=opts.models, device=opts.device, threads=opts.threads)
    if not manager.names:
        wanted = f" among {sorted(opts.models)}" if opts.models else ""
        raise InvalidInput(f"no models{wanted} in repository {opts.repo}")
    name = hostname(opts.name)
    manager.start()
    r = redis.Redis.from_url(
        opts.redis_url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        **tls.redis_options(opts.redis_url),
    )
    manager.publish(r)
    for m in manager.loaded():
        log.info("serving %s v%s on %s", m.name, m.version, ", ".join(m.providers))
    stats = WorkerStats()  # per-model counts and rates for the heartbeat (`icow status`)
    observers: list[JobObserver] = [stats]
    metrics_server = None
    if opts.metrics_port:
        from icow.workers.metrics import WorkerMetrics

        metrics = WorkerMetrics(manager, ready=lambda: bool(heartbeat.info.get("ready")))
        observers.append(metrics)
        metrics_server = metrics.serve(opts.metrics_port)
        log.info("metrics on http://0.0.0.0:%s/metrics", opts.metrics_port)
    runner = JobRunner(
        manager,
        r,
        worker=name,
        max_tensor_bytes=opts.max_tensor_bytes,
        inline_max_bytes=opts.inline_max_bytes,
        observer=FanOut(*observers),
    )
    app_module.configure(runner)
    heartbeat = Heartbeat(
        r,
        name,
        {**manager.state(), "device": opts.device},
        stats=lambda: {**_renew_then_stats(runner), **stats.snapshot(), **manager.state()},
        ttl_s=opts.heartbeat_ttl_s,
    )
    heartbeat.start()
    watcher = RepositoryWatcher(manager, r, interval_s=opts.rescan_s, on_new_models=QueueSubscriber.subscribe)
    watcher.start()

    def _ready(**_: object) -> None:
        heartbeat.mark_ready()
        log.info("worker %s ready: models %s", name, ", ".join(manager.names))

    signals.worker_ready.connect(_ready, weak=False)
    app = app_module.app
    app.conf.broker_url = opts.redis_url
    app.conf.broker_use_ssl = tls.ssl_options(opts.redis_url)  # verify the server (kombu would not)
    app.steps["consumer"].add(QueueSubscriber)  # subscribes to queues of models added later
    if opts.lease_s < 2 * keys.HEARTBEAT_INTERVAL_S:
        raise InvalidInput(f"lease_s must be at least {2 * keys.HEARTBEAT_INTERVAL_S:g} s (2 heartbeats)")
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "visibility_timeout": opts.lease_s}
    worker = app.Worker(
        hostname=name,
        pool="solo",
        concurrency=1,
        queues=[keys.queue(m) for m in manager.names],
        loglevel=opts.loglevel,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=not opts.events,
        task_events=opts.events,
        quiet=True,
    )
    try:
        worker.start()
    finally:
        watcher.stop()
        heartbeat.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
    return int(worker.exitcode or 0)
