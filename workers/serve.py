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
from icow.workers.heartbeat import Heartbeat
from icow.workers.models import ModelManager
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


def hostname(name: str | None = None) -> str:
    return name or f"icow-{os.getpid()}@{socket.gethostname()}"


def run_worker(opts: WorkerOptions) -> int:
    """Serve until shut down (SIGTERM/SIGINT: warm shutdown). Returns the exit code."""
    from icow.workers import app as app_module

    manager = ModelManager(Repository(opts.repo), only=opts.models, device=opts.device, threads=opts.threads)
    if not manager.names:
        wanted = f" among {sorted(opts.models)}" if opts.models else ""
        raise InvalidInput(f"no models{wanted} in repository {opts.repo}")
    name = hostname(opts.name)
    manager.start()
    r = redis.Redis.from_url(opts.redis_url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=30)
    manager.publish(r)
    for m in manager.loaded():
        log.info("serving %s v%s on %s", m.name, m.version, ", ".join(m.providers))
    runner = JobRunner(
        manager,
        r,
        worker=name,
        max_tensor_bytes=opts.max_tensor_bytes,
        inline_max_bytes=opts.inline_max_bytes,
    )
    app_module.configure(runner)
    heartbeat = Heartbeat(
        r,
        name,
        {
            "models": {m: list(e.versions) for m, e in manager.entries.items()},
            "providers": {f"{m.name}:{m.version}": m.providers[0] for m in manager.loaded()},
            "device": opts.device,
        },
        stats=runner.stats,
    )
    heartbeat.start()

    def _ready(**_: object) -> None:
        heartbeat.mark_ready()
        log.info("worker %s ready: models %s", name, ", ".join(manager.names))

    signals.worker_ready.connect(_ready, weak=False)
    app = app_module.app
    app.conf.broker_url = opts.redis_url
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
        heartbeat.stop()
    return int(worker.exitcode or 0)
