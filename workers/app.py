"""The Celery side: the app, its configuration, and the one task every ICOW job runs as.

``icow worker`` configures this app and starts a solo-pool worker (one process per GPU, no
fork after CUDA init). It also works with stock tooling: ``celery -A icow.workers.app
inspect registered`` lists ``icow.infer``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from icow import keys, protocol
from icow.workers import tls
from icow.workers.runner import Incoming, JobRunner

log = logging.getLogger("icow.worker")

app = Celery("icow", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("ICOW_REDIS_URL", "redis://127.0.0.1:6379/0"),
    result_backend=None,  # results are written by icow.workers.results, once per job id
    # The worker sends no tasks (clients build their messages with icow.protocol); this is the
    # serializer of Celery's remote-control replies, and JSON lets stock `celery inspect`,
    # `celery status` and Flower read them without being configured for msgpack.
    task_serializer="json",
    result_serializer="msgpack",
    accept_content=["msgpack", "json"],
    task_acks_late=True,  # a job is acked only after its result is stored
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # keep reconnecting while Redis is away
    task_default_queue="icow:q:_default",
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_consumer="icow.workers.consumer:IcowConsumer",
    # A short lease instead of kombu's one-hour visibility timeout: the heartbeat renews the
    # lease of every in-flight message, so only a dead worker's jobs come back, within seconds.
    broker_transport_options={
        "visibility_timeout": keys.DEFAULT_LEASE_S,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)

_runner: JobRunner | None = None
_consumer: Any = None  # Celery's consumer, known once the worker is ready


@signals.worker_ready.connect
def _keep_consumer(sender: Any = None, **_: Any) -> None:
    global _consumer
    _consumer = sender


def delivered_tags() -> list[str]:
    """Delivery tags of the messages Celery has handed over and not yet acked."""
    try:
        qos = _consumer.task_consumer.channel.qos
        return [t for t in list(qos._delivered) if isinstance(t, str)]
    except Exception:  # not ready yet, reconnecting, or mutated while read: next beat
        return []


def _tag_of(task_id: str) -> str | None:
    try:
        qos = _consumer.task_consumer.channel.qos
        for tag, message in reversed(list(qos._delivered.items())):
            if (message.headers or {}).get("id") == task_id:
                return str(tag)
    except Exception:
        pass
    return None


def configure(runner: JobRunner) -> None:
    """Install the process's runner (its warm models and Redis connection)."""
    global _runner
    _runner = runner


def _runner_from_env() -> JobRunner:
    """For workers started by ``celery -A icow.workers.app worker``: build from ICOW_*."""
    import redis

    from icow import settings
    from icow.workers.models import ModelManager
    from icow.workers.repository import Repository

    s = settings.from_env()
    if not s.repo:
        raise RuntimeError("ICOW_REPO is not set; start workers with `icow worker --repo DIR`")
    manager = ModelManager(Repository(s.repo), device=s.device, threads=s.threads)
    manager.start()
    url = s.redis_url or app.conf.broker_url
    r = redis.Redis.from_url(url, **tls.redis_options(url))
    manager.publish(r)
    return JobRunner(
        manager, r, worker=f"{os.getpid()}", max_tensor_bytes=s.max_tensor_bytes, inline_max_bytes=s.inline_max_bytes
    )


@signals.worker_process_init.connect
def _init_process(**_: Any) -> None:
    # Prefork children build their own sessions (never inherit CUDA state over fork).
    if _runner is None and os.environ.get("ICOW_REPO"):
        configure(_runner_from_env())


@app.task(name=protocol.TASK_NAME, bind=True, ignore_result=True, acks_late=True, typing=False)
def infer(self: Any, *args: Any, **kwargs: Any) -> None:
    """Run one ICOW job; its result is written under its id by the runner."""
    global _runner
    if _runner is None:
        configure(_runner_from_env())
    assert _runner is not None
    job = args[0] if len(args) == 1 and not kwargs else kwargs.get("job") if not args else args
    info = self.request.delivery_info or {}
    incoming = Incoming(self.request.id, job, _tag_of(self.request.id), redelivered=bool(info.get("redelivered")))
    _runner.serve(incoming, info.get("routing_key"))
