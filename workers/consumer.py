"""Celery's consumer, answering messages Celery itself would drop without a result.

Stock Celery logs and discards a message whose body cannot be decoded, whose task name is
unknown, or whose content type is not accepted; the caller would wait forever. ICOW writes a
structured ``InvalidJob`` failure for the message's id (from its headers) instead.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from icow import keys

log = logging.getLogger("icow.consumer")


def _message_id(message: Any) -> str | None:
    headers = getattr(message, "headers", None) or {}
    props = getattr(message, "properties", None) or {}
    job_id = headers.get("id") or props.get("correlation_id")
    try:
        return keys.check_job_id(job_id)
    except Exception:
        return None


def _answer(message: Any, reason: str) -> None:
    from icow.workers import app as app_module

    job_id = _message_id(message)
    runner = app_module._runner
    if job_id is None or runner is None:
        log.error("dropped a message without a usable id: %s", reason)
        return
    try:
        runner.fail_now(job_id, "InvalidJob", reason)
    except Exception:
        log.exception("could not write the failure of job %s", job_id)


class IcowConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _answer(message, f"the message body could not be decoded ({type(exc).__name__}: {exc})")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _answer(message, "the message is not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        task = (getattr(message, "headers", None) or {}).get("task")
        _answer(message, f"unknown task {task!r}; ICOW workers run 'icow.infer'")
        message.reject_log_error(log, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _answer(message, f"invalid task message ({type(exc).__name__}: {exc})")
        super().on_invalid_task(body, message, exc)
