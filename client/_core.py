"""The I/O-free half of the client (httpx's model): every decision that needs no Redis call.

It is one core in several modules, one per concept, and this module names them all for the
shells (:mod:`icow.client.sync`, :mod:`icow.client.aio`), which only do the Redis I/O the
core's plans ask for (icow.client._ops), so the two clients cannot drift:

* :mod:`~icow.client._options`: what a client is built with, ``from_env``, argument checks;
* :mod:`~icow.client._deadlines`: deadlines, read slices, the bound of one Redis command;
* :mod:`~icow.client._redis_errors`: Redis failures as ICOW errors;
* :mod:`~icow.client._prepare`: a job validated and encoded (target, envelope, input keys);
* :mod:`~icow.client._submit`: the ``icow_submit`` call and the submit plans;
* :mod:`~icow.client._results`: replies, results, statuses and outputs;
* :mod:`~icow.client._cancel`: the cancel request and its answer;
* :mod:`~icow.client._models`: model listing;
* :mod:`~icow.client._wait`: how to wait (reply list, bells, pub/sub) and the reply box;
* :mod:`~icow.client._job` and :mod:`~icow.client.bulk`: the handles' and bulks' plans.
"""

from __future__ import annotations

from icow.client._cancel import cancel_key, cancel_outcome, cancel_request, check_token
from icow.client._deadlines import MARGIN_S, SLICE_S, deadline_of, io_limit, remaining, slice_for
from icow.client._models import ModelInfo, TensorSpec, model_info, models_of, text
from icow.client._options import (
    DEFAULT_CANCEL_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Options,
    check_timeout,
    check_ttl,
    env_arguments,
    new_client_id,
)
from icow.client._prepare import DURABLE_WAIT_S, PreparedJob, Target, prepare
from icow.client._redis_errors import INVALID_PREFIX, broker_error, is_acl_denial, surfaced, surfacing
from icow.client._results import (
    JobStatus,
    Outputs,
    decode_result,
    output_refs,
    parse_entry,
    read_meta,
    settled,
    status_of,
    status_of_meta,
)
from icow.client._submit import (
    DIGEST_CONFLICT,
    SUBMIT_CHUNK,
    check_conflicts,
    chunked,
    is_served,
    not_durable,
    not_queued_with,
    not_served_reasons,
    queue,
    queue_full,
    share,
    submit_call,
    submit_outcome,
)
from icow.client._wait import BELLS_MAX, DRAIN_MAX, STASH_MAX

__all__ = [
    "BELLS_MAX",
    "DEFAULT_CANCEL_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "DIGEST_CONFLICT",
    "DRAIN_MAX",
    "DURABLE_WAIT_S",
    "INVALID_PREFIX",
    "MARGIN_S",
    "SLICE_S",
    "STASH_MAX",
    "SUBMIT_CHUNK",
    "JobStatus",
    "ModelInfo",
    "Options",
    "Outputs",
    "PreparedJob",
    "Target",
    "TensorSpec",
    "broker_error",
    "cancel_key",
    "cancel_outcome",
    "cancel_request",
    "check_conflicts",
    "check_timeout",
    "check_token",
    "check_ttl",
    "chunked",
    "deadline_of",
    "decode_result",
    "env_arguments",
    "io_limit",
    "is_acl_denial",
    "is_served",
    "model_info",
    "models_of",
    "new_client_id",
    "not_durable",
    "not_queued_with",
    "not_served_reasons",
    "output_refs",
    "parse_entry",
    "prepare",
    "queue",
    "queue_full",
    "read_meta",
    "remaining",
    "settled",
    "share",
    "slice_for",
    "status_of",
    "status_of_meta",
    "submit_call",
    "submit_outcome",
    "surfaced",
    "surfacing",
    "text",
]
