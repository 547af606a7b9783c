"""Start one worker process: load the repository, warm the models, publish them, consume."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

import redis
from celery import signals

from icow import connection, keys
from icow.errors import InvalidInput
from icow.settings import Settings
from icow.workers.broker import Broker
from icow.workers.failboard import FailureBoard
from icow.workers.followup import FollowUps
from icow.workers.heartbeat import Heartbeat
from icow.workers.kept import InputKeeper
from icow.workers.models import ModelManager
from icow.workers.observer import FanOut, JobObserver, WorkerStats
from icow.workers.reload import RepositoryWatcher
from icow.workers.repository import Repository
from icow.workers.runner import JobRunner
from icow.workers.shadow import ShadowListener, ShadowRunner, ShadowStats

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
    lease_s: float = keys.DEFAULT_LEASE_S  # a killed worker's jobs are redone after this (renewed while alive)
    max_message_bytes: int = 64 * 1024 * 1024  # larger queue messages are refused unread
    # The process's ICOW_* settings (read once by `icow worker`): the TLS files, ICOW_MAX_QUEUE,
    # ICOW_CACHE_DIR, ICOW_ORT_SPIN, ICOW_ORT_VERBOSE. The fields above win over them.
    settings: Settings = field(default_factory=Settings)


def hostname(name: str | None = None) -> str:
    return name or f"icow-{os.getpid()}@{socket.gethostname()}"


def maintain(
    manager: ModelManager,
    broker: Broker,
    runner: JobRunner,
    r: redis.Redis,
    live_ttl_s: float,
    board: FailureBoard | None = None,
    *,
    check_published: bool = True,
) -> None:
    """Every heartbeat: reinstall the functions if Redis lost them, renew this worker's lease
    and its versions' liveness and the reasons of its failed versions (``board``), learn the
    fleet's latest versions, republish models and limits that Redis forgot, and put back what
    dead workers held. ``check_published=False``: the caller (a rescan that added models)
    publishes them itself next, so none is missing because Redis lost it."""
    try:
        broker.install()
        served = {m: list(e.versions) for m, e in manager.entries.items() if e.versions}
        # models dropped since the last beat are withdrawn
        withdrawn: dict[str, list[int]] = {m: [] for m in runner.announced if m not in served}
        offers = {m: manager.latest(m) for m in served}
        now_ms = broker.renew({**served, **withdrawn}, offers, live_ttl_s)
        runner.announced = set(served)
        _, runner.fleet_latest = broker.live_versions(sorted(served), now_ms)
        if board is not None:
            board.publish(manager.failures(), live_ttl_s)
        if check_published:
            pipe = r.pipeline(transaction=False)
            for m in served:
                pipe.sismember(keys.MODELS, m)
                pipe.hlen(keys.model(m))
            found = pipe.execute()
            if not all(found):
                log.warning("Redis lost the published models: publishing them again")
                manager.publish(r)
        broker.reap()
        broker.restore_stale()
    except redis.exceptions.RedisError as exc:
        log.warning("worker upkeep failed (retrying at the next heartbeat): %s", exc)
    except Exception:
        log.exception("worker upkeep failed (retrying at the next heartbeat)")


def serve_cancels(broker: Broker, stop: threading.Event) -> None:
    """The cancel listener: answers cancel requests as they come (workers/broker.py)."""
    backoff = 0.1
    while not stop.is_set():
        try:
            for request in broker.wait_cancels(1.0):
                code = broker.cancel(request)
                log.info("cancel request answered: %s", code)
            backoff = 0.1
        except redis.exceptions.RedisError as exc:
            log.warning("cancel listener: %s (retrying in %.1f s)", exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)
        except Exception:
            log.exception("cancel listener failed (continuing)")


def run_worker(opts: WorkerOptions) -> int:
    """Serve until shut down (SIGTERM/SIGINT: warm shutdown). Returns the exit code."""
    from icow.workers import app as app_module

    s = opts.settings
    app_module.use_broker(app_module.app, opts.redis_url, s)  # before anything reads the app's configuration
    manager = ModelManager(
        Repository(opts.repo, cache_dir=s.cache_dir or None),
        only=opts.models,
        device=opts.device,
        threads=opts.threads,
        max_queue=s.max_queue,
        ort_spin=s.ort_spin,
        ort_verbose=s.ort_verbose,
    )
    if not manager.names and not manager.repo.failed:  # a model refused at config is reported
        wanted = f" among {sorted(opts.models)}" if opts.models else ""
        raise InvalidInput(f"no models{wanted} in repository {opts.repo}")
    if opts.lease_s < 2 * keys.HEARTBEAT_INTERVAL_S:
        raise InvalidInput(f"lease_s must be at least {2 * keys.HEARTBEAT_INTERVAL_S:g} s (2 heartbeats)")
    name = hostname(opts.name)
    manager.start()  # a version that does not load is marked failed; the others are served
    r = connection.connect(  # redis://, rediss://, unix:// or redis+sentinel://
        opts.redis_url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        **connection.tls_options(opts.redis_url, s),
    )
    broker = Broker(r, name, lease_s=opts.lease_s, max_message_bytes=opts.max_message_bytes)
    board = FailureBoard(r, name)
    broker.install()
    manager.publish(r)
    for m in manager.loaded():
        log.info("serving %s v%s on %s", m.name, m.version, ", ".join(m.providers))
    stats = WorkerStats()  # per-model counts and rates for the heartbeat (`icow status`)
    observers: list[JobObserver] = [stats]
    shadow_stats = ShadowStats()  # shadow runs' comparisons for the heartbeat (and metrics below)
    shadow_listeners: list[ShadowListener] = [shadow_stats]
    metrics_server = None
    if opts.metrics_port:
        from icow.workers.metrics import ShadowMetrics, WorkerMetrics

        metrics = WorkerMetrics(manager, ready=lambda: bool(heartbeat.info.get("ready")))
        observers.append(metrics)
        shadow_listeners.append(ShadowMetrics(metrics.registry))
        metrics_server = metrics.serve(opts.metrics_port)
        log.info("metrics on http://0.0.0.0:%s/metrics", opts.metrics_port)
    shadow = ShadowRunner(manager, shadow_listeners)  # shadow runs (config.toml `shadow`), in a thread
    if opts.events:  # Celery task events for Flower: the intake answers jobs, so it sends them
        from icow.workers.events import TaskEvents

        observers.append(TaskEvents(app_module.app, name))
    runner = JobRunner(
        manager,
        broker,
        worker=name,
        max_tensor_bytes=opts.max_tensor_bytes,
        inline_max_bytes=opts.inline_max_bytes,
        observer=FanOut(*observers),
        after_answer=FollowUps(InputKeeper(manager, r), shadow),
    )
    shadow.start()
    app_module.configure(runner)
    heartbeat = Heartbeat(
        r,
        name,
        {**manager.state(), "device": opts.device},
        stats=lambda: {
            **_upkeep(manager, broker, runner, r, opts.heartbeat_ttl_s, board),
            **runner.stats(),
            **stats.snapshot(),
            **shadow_stats.snapshot(),
            **manager.state(),
        },
        ttl_s=opts.heartbeat_ttl_s,
    )
    heartbeat.start()
    cancels_stop = threading.Event()
    threading.Thread(target=serve_cancels, args=(broker, cancels_stop), name="icow-cancels", daemon=True).start()
    watcher = RepositoryWatcher(
        manager,
        r,
        interval_s=opts.rescan_s,
        on_change=lambda: maintain(manager, broker, runner, r, opts.heartbeat_ttl_s, board, check_published=False),
    )
    watcher.start()

    def _ready(**_: object) -> None:
        heartbeat.mark_ready()
        failed = manager.failures()
        why = "; failed (not served): " + "; ".join(f"{k} ({v})" for k, v in failed.items()) if failed else ""
        log.info("worker %s ready: models %s%s", name, ", ".join(manager.names) or "none", why)

    signals.worker_ready.connect(_ready, weak=False)
    app = app_module.app
    worker = app.Worker(
        hostname=name,
        pool="solo",
        concurrency=1,
        queues=[app_module.CONTROL_QUEUE],  # ICOW's queues are read by the intake, never by kombu
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
        cancels_stop.set()
        watcher.stop()
        shadow.stop()
        heartbeat.stop()
        try:  # withdraw at once: pinned jobs are refused at submit rather than left waiting
            broker.renew({m: [] for m in runner.announced}, {}, opts.heartbeat_ttl_s)
            board.withdraw()
            broker.release()
        except redis.exceptions.RedisError:
            pass
        if metrics_server is not None:
            metrics_server.shutdown()
    return int(worker.exitcode or 0)


def _upkeep(
    manager: ModelManager, broker: Broker, runner: JobRunner, r: redis.Redis, ttl_s: float, board: FailureBoard
) -> dict[str, object]:
    maintain(manager, broker, runner, r, ttl_s, board)
    return {}
