"""A compatibility facade, and nothing else: the wire format lives in the modules named below.

Code outside this repository (and the Node client's cross-language tests) may still import
these names from ``icow.protocol``; ICOW itself imports them from their owners:

- icow.codec: msgpack as every record is packed and unpacked, the protocol version;
- icow.envelope: the job envelope, job ids, and the claim check (large tensors under own keys);
- icow.celery_message: the Celery task message around a job (headers, properties, body);
- icow.result: the result record, built and read (:class:`icow.result.Result`);
- icow.records: dead letters, recent failures, kept inputs and bulk records.

Nothing may be added here: a new name goes to its owner.
"""

from __future__ import annotations

from icow.celery_message import (
    CONTENT_TYPE,
    DEFAULT_MAX_MESSAGE_BYTES,
    ETA_TOLERANCE_S,
    TASK_NAME,
    Message,
    celery_message,
    created_from_message,
    decode_message,
    oversize_message,
)
from icow.codec import PROTOCOL_VERSION, packb, unpackb
from icow.envelope import (
    DEFAULT_INLINE_MAX_BYTES,
    DEFAULT_MAX_JOB_BYTES,
    Job,
    job_envelope,
    job_id_for_token,
    new_input_key,
    new_job,
    new_job_id,
    parse_job,
)
from icow.records import kept_entry, parse_kept
from icow.result import READY_STATES, ResultMeta, cancel_outcome, failure_meta, failure_of, parse_meta, success_meta

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_INLINE_MAX_BYTES",
    "DEFAULT_MAX_JOB_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ETA_TOLERANCE_S",
    "PROTOCOL_VERSION",
    "READY_STATES",
    "TASK_NAME",
    "Job",
    "Message",
    "ResultMeta",
    "cancel_outcome",
    "celery_message",
    "created_from_message",
    "decode_message",
    "failure_meta",
    "failure_of",
    "job_envelope",
    "job_id_for_token",
    "kept_entry",
    "new_input_key",
    "new_job",
    "new_job_id",
    "oversize_message",
    "packb",
    "parse_job",
    "parse_kept",
    "parse_meta",
    "success_meta",
    "unpackb",
]
