"""Celery task events for the jobs the intake answers, so Flower and `celery events` show ICOW
jobs (``icow worker --events``).

Celery would send these from its own consumer; ICOW's intake takes jobs itself, so this
observer sends ``task-received``, ``task-started`` and ``task-succeeded`` / ``task-failed`` per
answered job, in the format Celery's event receivers expect. It never fails a job: the runner
logs and ignores an observer's exceptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from icow.celery_message import TASK_NAME
from icow.workers.observer import JobOutcome

log = logging.getLogger("icow.events")


class TaskEvents:
    def __init__(self, app: Any, hostname: str):
        self._app = app
        self._hostname = hostname
        self._conn: Any = None
        self._dispatcher: Any = None

    def _get(self) -> Any:
        if self._dispatcher is None:
            self._conn = self._app.connection_for_write()
            self._dispatcher = self._app.events.Dispatcher(self._conn, hostname=self._hostname, enabled=True)
        return self._dispatcher

    def jobs_done(self, outcomes: Sequence[JobOutcome]) -> None:
        if not outcomes:
            return
        d = self._get()
        now = time.time()
        try:
            for o in outcomes:
                started = now - (o.compute_s or 0.0)
                received = started - (o.queue_wait_s or 0.0) if o.queue_wait_s is not None else started
                common = {"uuid": o.job_id}
                d.send(
                    "task-received",
                    name=TASK_NAME,
                    args=f"<icow job {o.model}>",
                    kwargs="{}",
                    retries=0,
                    eta=None,
                    root_id=o.job_id,
                    parent_id=None,
                    timestamp=received,
                    **common,
                )
                d.send("task-started", timestamp=started, **common)
                if o.ok:
                    d.send("task-succeeded", result="", runtime=o.compute_s or 0.0, timestamp=now, **common)
                else:
                    d.send("task-failed", exception=o.outcome, traceback=None, timestamp=now, **common)
        except Exception:
            self.close()  # a broken connection: reconnect on the next batch
            raise

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.release()
        except Exception:
            pass
        self._conn = self._dispatcher = None
