"""Every Redis key, channel and TTL ICOW uses. Nobody else builds key names.

Key schema (``<m>`` model name, ``<id>`` job id, ``<c>`` client id, ``<w>`` worker name):

=================================  ======  =========================================================
key                                type    content
=================================  ======  =========================================================
``icow:q:<m>``                     list    Celery task messages for model ``<m>`` (kombu Redis
                                           transport queue; LPUSH by clients, BRPOP by workers)
``icow:q:<m>\\x06\\x16<p>``          list    the same queue at kombu priority step ``<p>`` (3, 6, 9;
                                           a lower number is served first)
``celery-task-meta-<id>``          string  the job's result: a Celery result meta map, msgpack;
                                           written once (SET NX), expires after the job's TTL.
                                           Also the pub/sub channel its result is published on.
``icow:state:<id>``                string  ``queued`` / ``running``: the job's record until its
                                           result exists (same TTL as the result)
``icow:blob:<id>:<dir>:<n>``       string  claim-checked tensor bytes (``dir`` = ``in``/``out``,
                                           ``n`` = tensor index) for tensors over the inline limit
``icow:reply:<c>``                 list    results pushed for client ``<c>`` (its fast wait path);
                                           expires after the longest result TTL pushed to it
``icow:models``                    set     names of models some worker has published
``icow:model:<m>``                 hash    version -> msgpack model metadata (inputs, outputs)
``icow:limits``                    hash    model -> most jobs its queue lists may hold (backpressure;
                                           written by workers from ``max_queue``, checked by the
                                           submit script, see docs/RELIABILITY.md)
``icow:workers``                   set     names of workers that have sent a heartbeat
``icow:worker:<w>``                string  the worker's heartbeat (msgpack: host, pid, models,
                                           providers, jobs done); expires when heartbeats stop
``icow:failures``                  list    recent failures, newest first (msgpack: id, model,
                                           version, worker, error, message, time); capped at
                                           ``RECENT_FAILURES_MAX`` by the result writer (LPUSH+LTRIM)
``icow:bulk:<id>``                 string  a bulk submission (msgpack: model, job ids in sample order,
                                           samples); same TTL as its results
``icow:tries:<id>``                string  redeliveries of the job so far (poison-job detection; 10 min)
``icow:dead:<id>``                 string  dead-letter record of a job given up on (msgpack: reason,
                                           attempts, model); kept 7 days
``icow:dead``                      list    ids of dead-lettered jobs, newest first (capped)
``unacked``, ``unacked_index``,    kombu   kombu's ack emulation (in-flight messages), kept at
``unacked_mutex``                          kombu's default names so stock Celery tooling agrees
=================================  ======  =========================================================
"""

from __future__ import annotations

import re

from icow.errors import InvalidInput

PREFIX = "icow:"
QUEUE_PREFIX = PREFIX + "q:"
RESULT_PREFIX = "celery-task-meta-"  # Celery's own result key: stock AsyncResult reads it
MODELS = PREFIX + "models"
LIMITS = PREFIX + "limits"  # hash: model -> max backlog; absent: unbounded
WORKERS = PREFIX + "workers"
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10
RECENT_FAILURES = PREFIX + "failures"
RECENT_FAILURES_MAX = 200
RESCAN_INTERVAL_S = 5.0  # how often a worker rescans its model repository for new versions

DEFAULT_RESULT_TTL_S = 24 * 3600
MAX_RESULT_TTL_S = 30 * 24 * 3600

# kombu's Redis transport: queue + sep + step is the list for a priority step.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
DEFAULT_LEASE_S = 15  # kombu visibility timeout: a dead worker's jobs return after this
TRIES_TTL_S = 600
DEAD = PREFIX + "dead"
DEAD_TTL_S = 7 * 24 * 3600
DEAD_MAX = 10_000
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_model_name(name: object) -> str:
    """A model name is 1-128 of ``[A-Za-z0-9_.-]``, starting alphanumeric (no paths)."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"invalid model name {name!r}: use 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


def check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise InvalidInput(f"invalid job id {job_id!r}")
    return job_id


def queue(model: str) -> str:
    """The Celery queue (and Redis list) of a model's jobs."""
    return QUEUE_PREFIX + model


def queue_list(model: str, priority: int = 0) -> str:
    """The Redis list a message of kombu ``priority`` (0-9) is pushed to."""
    step = max(s for s in KOMBU_PRIORITY_STEPS if s <= priority)
    base = queue(model)
    return base if step == 0 else f"{base}{KOMBU_PRIORITY_SEP}{step}"


def queue_lists(model: str) -> list[str]:
    """All priority lists of a model's queue, in the order workers serve them."""
    return [queue_list(model, s) for s in KOMBU_PRIORITY_STEPS]


def result(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def result_channel(job_id: str) -> str:
    """Pub/sub channel the result is published on (Celery's convention: the key itself)."""
    return RESULT_PREFIX + job_id


def state(job_id: str) -> str:
    return f"{PREFIX}state:{job_id}"


def blob(job_id: str, direction: str, index: int) -> str:
    return f"{PREFIX}blob:{job_id}:{direction}:{index}"


def reply(client_id: str) -> str:
    return f"{PREFIX}reply:{client_id}"


def model(name: str) -> str:
    return f"{PREFIX}model:{name}"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def tries(job_id: str) -> str:
    return f"{PREFIX}tries:{job_id}"


def dead(job_id: str) -> str:
    return f"{PREFIX}dead:{job_id}"


def model_of_queue(queue_name: str) -> str | None:
    """The model whose queue (or priority list) this is, or None."""
    if not queue_name.startswith(QUEUE_PREFIX):
        return None
    return queue_name[len(QUEUE_PREFIX) :].split(KOMBU_PRIORITY_SEP, 1)[0]


def bulk(bulk_id: str) -> str:
    return f"{PREFIX}bulk:{bulk_id}"


# -- Redis ACL users (Redis >= 7.0: %R~ read-only key patterns and (...) selectors).
# Rules for ``ACL SETUSER <name> reset on ><password> <rules...>``; docs/RELIABILITY.md explains
# them. Clients may queue jobs, read results, models and limits, and wait on their reply list;
# they may not read queued jobs, kombu's in-flight messages or heartbeats, overwrite
# results, delete queues, or run admin commands (FLUSHALL, KEYS, CONFIG, ...).
CLIENT_ACL_RULES = (
    "resetkeys",
    "resetchannels",
    "-@all",
    # Root: scripts (submit, cancel) and pub/sub. EVALSHA needs every key it declares in one
    # selector; the commands inside a script are checked one by one against all selectors.
    *("+ping", "+select", "+evalsha", "+script|load", "+script|exists"),
    *("+subscribe", "+unsubscribe", f"&{RESULT_PREFIX}*"),
    *(f"~{QUEUE_PREFIX}*", f"~{LIMITS}", f"~{PREFIX}state:*", f"~{PREFIX}blob:*", f"~{PREFIX}reply:*"),
    f"~{RESULT_PREFIX}*",
    # Reads: results, models, limits, job records, blobs, bulk records.
    f"(%R~{RESULT_PREFIX}* %R~{MODELS} %R~{PREFIX}model:* %R~{LIMITS} %R~{PREFIX}state:* %R~{PREFIX}blob:* "
    f"%R~{PREFIX}bulk:* +get +mget +exists +ttl +smembers +hgetall +hkeys +hget)",
    # The client's own records: job state, blobs, its reply list, bulk records.
    f"(~{PREFIX}state:* ~{PREFIX}blob:* ~{PREFIX}reply:* ~{PREFIX}bulk:* "
    "+set +del +expire +ttl +get +blpop +lpop +rpush)",
    f"(~{QUEUE_PREFIX}* +lpush +llen)",  # queues: push (in the submit script) and count, never read
)
# Add these for clients that cancel jobs: the cancel script writes the JobCancelled result,
# which lets such a client write the result of any unfinished job whose id it knows.
CLIENT_CANCEL_ACL_RULES = (f"(~{RESULT_PREFIX}* &{RESULT_PREFIX}* +set +publish)",)
# Workers touch every ICOW and kombu key and channel; they get all but the dangerous commands.
WORKER_ACL_RULES = ("resetkeys", "resetchannels", "~*", "&*", "+@all", "-@dangerous")
