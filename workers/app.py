"""The Celery side: the worker's shell (process, bootsteps, remote control, `celery inspect` /
`status`, events, Flower) and the bootstep that runs ICOW's intake.

Celery never consumes ICOW's queues: kombu's BRPOP would take a message out of Redis before
recording it anywhere (a killed worker loses it) and would hand hostile bytes to Celery's own
decoders. ICOW's intake (workers/broker.py, workers/runner.py) runs in a thread started by
:class:`IntakeStep`; Celery's consumer only listens on the control queue ``icow:celery``.
docs/RELIABILITY.md says why a bootstep rather than a kombu transport.

``celery -A icow.workers.app inspect registered`` lists ``icow.infer``: in that process the
app's broker comes from ``ICOW_REDIS_URL``, read when Celery first loads the app's
configuration (its start-up); ``icow worker`` hands its own URL and settings in
(:func:`use_broker`) and reads nothing here.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from icow import connection, keys, settings
from icow.celery_message import TASK_NAME
from icow.settings import Settings

log = logging.getLogger("icow.worker")

CONTROL_QUEUE = keys.PREFIX + "celery"

app = Celery("icow", set_as_current=False)
app.conf.update(
    result_backend=None,  # results are written by icow.workers.broker, once per job id
    # The worker sends no tasks; this is the serializer of Celery's remote-control replies, and
    # JSON lets stock `celery inspect`, `celery status` and Flower read them.
    task_serializer="json",
    result_serializer="json",
    accept_content=["msgpack", "json"],  # stock clients broadcast control commands in either
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # keep reconnecting while Redis is away
    task_default_queue=CONTROL_QUEUE,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


_given: list[str] = []  # the broker URL handed in by use_broker (icow worker)


def use_broker(celery_app: Celery, url: str, s: Settings) -> None:
    """Point the app at ICOW's Redis ``url``: a Sentinel URL becomes kombu's ``sentinel://``,
    and a ``rediss://`` server is verified with the CA and certificate of the URL or ``s``."""
    _given.append(url)
    broker, options = connection.celery_broker(url)
    celery_app.conf.update(  # written, not read: safe before the configuration is loaded
        broker_url=broker,
        broker_transport_options=options,
        broker_use_ssl=connection.celery_ssl(url, s),  # kombu alone would not verify (CERT_NONE)
    )


@app.on_configure.connect
def _broker_from_env(sender: Celery, **_: Any) -> None:
    """``celery -A icow.workers.app ...``: the process's start-up; its broker from ICOW_REDIS_URL
    (also redis+sentinel:// and rediss:// URLs)."""
    if not _given:
        s = settings.from_env()
        use_broker(sender, s.redis_url or "redis://127.0.0.1:6379/0", s)


class IntakeStep(bootsteps.StartStopStep):
    """Worker bootstep: runs the intake loop in a thread from start to warm shutdown; the
    batch in hand is finished (and answered) before the worker exits."""

    runner: Any = None  # set by icow.workers.serve before the worker starts

    def __init__(self, parent: Any, **kwargs: Any):
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        if self.runner is None:
            log.error("no ICOW runner configured: start workers with `icow worker --repo DIR`")
            return
        self._thread = threading.Thread(target=self.runner.run_forever, args=(self._stop,), name="icow-intake")
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def terminate(self, parent: Any) -> None:
        self.stop(parent)


app.steps["worker"].add(IntakeStep)


def configure(runner: Any) -> None:
    """Install the process's runner (its warm models and Redis connection)."""
    IntakeStep.runner = runner


@app.task(name=TASK_NAME, bind=True, ignore_result=True, typing=False)
def infer(self: Any, *args: Any, **kwargs: Any) -> None:
    """Registered for stock tooling. ICOW jobs go to ``icow:q:<model>``; a task sent to the
    control queue by mistake is answered with a failure naming the right queue."""
    runner = IntakeStep.runner
    if runner is not None and self.request.id:
        try:
            job_id = keys.check_job_id(self.request.id)
        except Exception:
            return
        runner.fail_now(job_id, "InvalidJob", "ICOW jobs are sent to the queue icow:q:<model>, not to Celery's queue")
