"""Write the golden wire vectors of docs/PROTOCOL.md (protocol version 1) into this folder.

    .venv/bin/python tests/golden/make_golden.py          # rewrite the files
    .venv/bin/python tests/golden/make_golden.py --check  # exit 1 if a file would change

Every vector is built with the wire modules (icow.envelope, icow.celery_message, icow.result,
icow.records, icow.codec) and icow.tensor from fixed ids, times and delivery
tags, so the output is byte-for-byte reproducible. For each vector ``<name>.json`` says what
the bytes mean, and the bytes themselves sit beside it:

* ``<name>.job.msgpack``: the job envelope (msgpack map) a client puts in the task body;
* ``<name>.message.json``: the exact kombu envelope a client LPUSHes (one line of JSON);
* ``<name>.result.msgpack``: a result meta map as stored under ``celery-task-meta-<id>``;
* ``<name>.blob-*.bin``: claim-checked tensor bytes stored under their own key;
* ``<name>.model.msgpack``: one model-metadata hash value;
* ``<name>.entry.msgpack``: a reply-list entry that is not a result (the fleet's answer to a
  cancel request);
* ``<name>.record.msgpack``: a bulk record (``icow:bulk:<id>``);
* ``submit_*.json`` / ``cancel_request.json``: the exact KEYS and ARGV of ``FCALL icow_submit``
  and ``FCALL icow_cancel_request``;
* ``invalid_jobs.json``: job envelopes a worker must refuse (``InvalidJob``), with why;
* ``digests.json`` / ``job_custom_id.*``: job digests, and a job under a caller-chosen id with
  its digest header and ``icow_submit`` call (docs/PROTOCOL.md 8.4).

Job ids are made from fixed cancel tokens (``job_id_for_token``), claim-check keys from fixed
nonces; a real client draws both at random.

tests/test_golden.py (Python) and clients/node/test/golden.test.js (Node.js) check that both
encoders reproduce these bytes and both decoders read them.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from icow import celery_message as celery
from icow import codec, envelope, keys, result, tensor

HERE = Path(__file__).resolve().parent
CREATED = 1700000000.0
DATE_DONE = "2023-11-14T22:13:20.500000+00:00"
REPLY = keys.reply("5eed" * 8)  # a client's reply list: icow:reply:<32 hex>


def token(n: int) -> str:
    """The fixed cancel token of vector ``n`` (a client draws 128 random bits)."""
    return f"{n:032x}"


def job_id(n: int) -> str:
    return envelope.job_id_for_token(token(n))


def input_key(n: int, i: int) -> str:
    """The fixed claim-check key of input ``i`` of vector ``n`` (a client draws a random nonce)."""
    return keys.input_blob(f"c1a1c4ec{n:012x}{i:012x}")


def describe(wire: dict[str, Any], array: np.ndarray | None) -> dict[str, Any]:
    """The JSON meaning of one wire tensor: header, flat values, exact bytes."""
    out: dict[str, Any] = {"name": wire["name"], "datatype": wire["datatype"], "shape": wire["shape"]}
    if array is not None:
        flat = array.reshape(-1)
        if wire["datatype"] == tensor.BYTES:
            out["values"] = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
        else:
            out["values"] = flat.tolist()
    if "ref" in wire:
        out["ref"] = wire["ref"]
    else:
        out["data_hex"] = bytes(wire["data"]).hex()
    return out


def job_vector(
    name: str,
    doc: str,
    n: int,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    version: int | None = None,
    outputs: list[str] | None = None,
    ttl: int = 60,
    reply_to: str | None = REPLY,
    created: float = CREATED,
    deadline: float | None = None,
    priority: int = 0,
    inline_max_bytes: int = envelope.DEFAULT_INLINE_MAX_BYTES,
) -> dict[str, bytes]:
    jid = job_id(n)
    wire, meanings, blobs = [], [], {}
    for i, (tname, array) in enumerate(inputs.items()):
        t = tensor.encode(tname, array)
        t["data"] = bytes(t["data"])
        if len(t["data"]) > inline_max_bytes:
            ref = input_key(n, i)
            blobs[ref] = t.pop("data")
            t["ref"] = ref
        wire.append(t)
        meanings.append(describe(t, array))
    job = envelope.job_envelope(
        job_id=jid,
        model=model,
        version=version,
        inputs=wire,
        outputs=outputs,
        result_ttl_s=ttl,
        reply_to=reply_to,
        deadline=deadline,
        created=created,
    )
    tag = f"golden-tag-{n:02d}"
    queue = keys.queue(model, version)
    message = celery.celery_message(job, queue=queue, priority=priority, delivery_tag=tag)
    files = {f"{name}.job.msgpack": codec.packb(job), f"{name}.message.json": message}
    blob_files = {}
    for i, (ref, data) in enumerate(blobs.items()):
        blob_files[ref] = f"{name}.blob-{i}.bin"
        files[blob_files[ref]] = data
    meaning = {
        "kind": "job",
        "doc": doc,
        "token": token(n),
        "job": {
            "v": codec.PROTOCOL_VERSION,
            "id": jid,
            "model": model,
            "version": version,
            "created": created,
            "inputs": meanings,
            "outputs": outputs,
            "ttl": ttl,
            "reply_to": reply_to,
            "deadline": deadline,
        },
        "priority": priority,
        "delivery_tag": tag,
        "queue": queue,
        "queue_list": keys.queue_list(queue, priority),
        "inline_max_bytes": inline_max_bytes,
        "blobs": blob_files,
        "files": {"job": f"{name}.job.msgpack", "message": f"{name}.message.json"},
    }
    files[f"{name}.json"] = _json(meaning)
    return files


def result_vector(
    name: str,
    doc: str,
    n: int,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
    blobs: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    meta["date_done"] = DATE_DONE
    files = {f"{name}.result.msgpack": codec.packb(meta)}
    blob_files = {}
    for i, (ref, data) in enumerate((blobs or {}).items()):
        blob_files[ref] = f"{name}.blob-{i}.bin"
        files[blob_files[ref]] = data
    res = dict(meta["result"])
    if meta["status"] == "SUCCESS":
        res["outputs"] = [describe(t, (arrays or {}).get(t["name"])) for t in res["outputs"]]
    meaning = {
        "kind": "result",
        "doc": doc,
        "key": keys.result(meta["task_id"]),
        "meta": {**meta, "result": res},
        "blobs": blob_files,
        "files": {"result": f"{name}.result.msgpack"},
    }
    if meta["status"] != "SUCCESS":
        meaning["error"] = dict(zip(("type", "message"), result.failure_of(meta)))
    files[f"{name}.json"] = _json(meaning)
    return files


def _outputs(jid: str, arrays: dict[str, np.ndarray], inline_max_bytes: int) -> tuple[list[Any], dict[str, bytes]]:
    wire, blobs = [], {}
    for i, (name, array) in enumerate(arrays.items()):
        t = tensor.encode(name, array)
        t["data"] = bytes(t["data"])
        if len(t["data"]) > inline_max_bytes:
            ref = keys.output_blob(jid, i)
            blobs[ref] = t.pop("data")
            t["ref"] = ref
        wire.append(t)
    return wire, blobs


def success(
    name: str,
    doc: str,
    n: int,
    model: str,
    version: int,
    arrays: dict[str, np.ndarray],
    inline_max_bytes: int = 1 << 18,
) -> dict[str, bytes]:
    jid = job_id(n)
    wire, blobs = _outputs(jid, arrays, inline_max_bytes)
    meta = result.success_meta(
        jid,
        model=model,
        version=version,
        outputs=wire,
        worker="golden@host",
        # batch: jobs that shared the ONNX Runtime call; batch_samples: the samples in it
        timing={"queued_s": 0.25, "compute_s": 0.5, "batch": 2, "batch_samples": 3},
    )
    return result_vector(name, doc, n, meta, arrays, blobs)


def failure(name: str, doc: str, n: int, error_type: str, message: str, model: str | None) -> dict[str, bytes]:
    meta = result.failure_meta(
        job_id(n), error_type=error_type, message=message, model=model, version=None, worker="golden@host"
    )
    return result_vector(name, doc, n, meta)


def json_form(name: str, doc: str, n: int) -> dict[str, bytes]:
    """A job as a JSON-only Celery client sends it: JSON body, tensor data as base64 text."""
    jid = job_id(n)
    x = np.array([[0.5, -1.0, 2.0, 0.0]], np.float32)
    job = {
        "v": codec.PROTOCOL_VERSION,
        "id": jid,
        "model": "mlp",
        "version": None,
        "created": CREATED,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": base64.b64encode(x.tobytes()).decode()}],
        "outputs": None,
        "ttl": 60,
        "reply_to": None,
        "deadline": None,
    }
    body = json.dumps([[job], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "js", "task": celery.TASK_NAME, "id": jid, "root_id": jid},
        "properties": {
            "correlation_id": jid,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": keys.queue("mlp")},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": f"golden-tag-{n:02d}",
        },
    }
    meaning = {
        "kind": "json_job",
        "doc": doc,
        "job": job,
        "inputs": [describe(tensor.encode("x", x) | {"data": x.tobytes()}, x)],
        "queue_list": keys.queue("mlp"),
        "files": {"message": f"{name}.message.json"},
    }
    return {f"{name}.message.json": json.dumps(message, separators=(",", ":")).encode(), f"{name}.json": _json(meaning)}


def model_metadata(name: str, doc: str) -> dict[str, bytes]:
    meta: dict[str, Any] = {
        "name": "multi",
        "version": 1,
        "platform": "onnxruntime",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "ids", "datatype": "INT64", "shape": [-1, 2]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1]},
        ],
        "outputs": [
            {"name": "total", "datatype": "FP32", "shape": [-1]},
            {"name": "doubled", "datatype": "INT64", "shape": [-1, 2]},
            {"name": "flipped", "datatype": "BOOL", "shape": [-1]},
            {"name": "half", "datatype": "FP16", "shape": [-1, 3]},
        ],
        "unsupported_outputs": [],
        "providers": ["CPUExecutionProvider"],
    }
    return _model_vector(name, doc, meta)


def model_zipmap(name: str, doc: str) -> dict[str, bytes]:
    """A ZipMap classifier: its tensor output is listed in ``outputs`` (and returned by
    default), its seq(map) output only in ``unsupported_outputs`` (never returned)."""
    meta: dict[str, Any] = {
        "name": "classifier",
        "version": 1,
        "platform": "onnxruntime",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "unsupported_outputs": [{"name": "probabilities", "type": "seq(map(int64,tensor(float)))"}],
        "providers": ["CPUExecutionProvider"],
    }
    return _model_vector(name, doc, meta)


def _model_vector(name: str, doc: str, meta: dict[str, Any]) -> dict[str, bytes]:
    meaning = {
        "kind": "model",
        "doc": doc,
        "key": keys.model(meta["name"]),
        "field": "1",
        "meta": meta,
        "files": {"model": f"{name}.model.msgpack"},
    }
    return {f"{name}.model.msgpack": codec.packb(meta), f"{name}.json": _json(meaning)}


def submit_vector(name: str, doc: str, job_name: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """The KEYS and ARGV of the ``FCALL icow_submit`` that queues the job vector ``job_name``."""
    job = json.loads(files[f"{job_name}.json"])
    queue, priority = job["queue"], job["priority"]
    model, version = job["job"]["model"], job["job"]["version"]
    inputs = list(job["blobs"])
    meaning = {
        "kind": "submit",
        "doc": doc,
        "function": "icow_submit",
        "job": job_name,
        "model": model,
        "version": version,
        "priority": priority,
        "require_published": True,
        "keys": [
            keys.LIMITS,
            keys.live(model),
            keys.wake(queue),
            *keys.queue_lists(queue),
            keys.queue_list(queue, priority),
            *inputs,
        ],
        "args": [
            model,
            "" if version is None else str(version),
            "1",
            "1",
            {"file": f"{job_name}.message.json"},
            str(len(inputs)),
        ],
        "args_doc": "every ARGV is a Redis bulk string: counts are decimal ASCII; {file} is that file's bytes",
        "reply": {"queued": 1, "depth": 1, "limit": -1, "served": 1},
        "reply_doc": "the model has no limit (-1): depth then counts only the jobs this call queued",
    }
    return {f"{name}.json": _json(meaning)}


def cancel_vectors(n: int) -> dict[str, bytes]:
    """What a cancel request sends, and the entry the fleet pushes back."""
    jid = job_id(n)
    request = {
        "kind": "cancel_request",
        "doc": "FCALL icow_cancel_request: the job's cancel token and the reply list to answer on",
        "function": "icow_cancel_request",
        "job_id": jid,
        "token": token(n),
        "keys": [keys.CANCELS],
        "args": [token(n), REPLY],
        "member": f"{token(n)} {REPLY}",
        "with_ttl": {
            "doc": "the job's result TTL (s) as a third argument: its JobCancelled result keeps it (else 86400)",
            "ttl": 3600,
            "args": [token(n), REPLY, "3600"],
            "member": f"{token(n)} {REPLY} 3600",
        },
        "refused": [
            {"doc": doc, "args": args, "error": error}
            for doc, args, error in [
                ("a token in upper-case hex", ["0" * 30 + "AB", REPLY], "ICOW_INVALID a cancel token"),
                ("a token of 31 characters", [token(n)[1:], REPLY], "ICOW_INVALID a cancel token"),
                (
                    "a reply list that is not icow:reply:<32 hex>",
                    [token(n), "icow:q:mlp"],
                    "ICOW_INVALID the reply list",
                ),
                ("a TTL out of 1..2592000", [token(n), REPLY, "2592001"], "ICOW_INVALID the result TTL"),
                ("a TTL that is not a decimal integer", [token(n), REPLY, "1e3"], "ICOW_INVALID the result TTL"),
            ]
        ],
    }
    entry = result.cancel_outcome(jid, 1)
    outcome = {
        "kind": "cancel_outcome",
        "doc": "pushed onto the canceller's reply list: result 1 cancelled, 0 already finished, -1 already running",
        "entry": codec.unpackb(entry),
        "files": {"entry": "reply_cancel_outcome.entry.msgpack"},
    }
    return {
        "cancel_request.json": _json(request),
        "reply_cancel_outcome.json": _json(outcome),
        "reply_cancel_outcome.entry.msgpack": entry,
    }


def bulk_record(name: str, doc: str) -> dict[str, bytes]:
    """The record a bulk submission leaves under icow:bulk:<id> (SET ... EX <the jobs' TTL>)."""
    bulk_id = "0b0b0b0b-0000-4000-8000-000000000001"  # a random UUID4 in a real client
    record = {"id": bulk_id, "model": "mlp", "jobs": [job_id(21), job_id(22)], "samples": 300}
    meaning = {
        "kind": "bulk_record",
        "doc": doc,
        "key": keys.bulk(bulk_id),
        "ttl": 60,
        "record": record,
        "files": {"record": f"{name}.record.msgpack"},
    }
    return {f"{name}.record.msgpack": codec.packb(record), f"{name}.json": _json(meaning)}


def invalid_jobs() -> dict[str, bytes]:
    """Job envelopes every worker refuses with InvalidJob, and the words its message contains."""
    jid = job_id(11)
    x = np.ones(2, np.float32).tobytes()

    def job(**changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "v": 1,
            "id": jid,
            "model": "mlp",
            "version": None,
            "created": CREATED,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": x}],
            "outputs": None,
            "ttl": 60,
            "reply_to": REPLY,
            "deadline": None,
        }
        base.update(changes)
        return base

    cases = [
        (
            "tensor data as a msgpack str (base64 belongs to the JSON form only)",
            "msgpack str",
            job(inputs=[{"name": "x", "datatype": "FP32", "shape": [2], "data": base64.b64encode(x).decode()}]),
        ),
        (
            "a tensor with both data and ref",
            "both data and ref",
            job(inputs=[{"name": "x", "datatype": "FP32", "shape": [2], "data": x, "ref": input_key(11, 0)}]),
        ),
        (
            "a ref that is not a claim-check input key",
            "claim-check ref",
            job(inputs=[{"name": "x", "datatype": "FP32", "shape": [2], "ref": "celery-task-meta-x"}]),
        ),
        ("an empty outputs list (null asks for every output)", "non-empty list of output names", job(outputs=[])),
        ("reply_to that is not a reply list", "reply_to", job(reply_to="icow:q:mlp")),
        (
            "data that does not match shape x datatype",
            "needs 8",
            job(inputs=[{"name": "x", "datatype": "FP32", "shape": [2], "data": x[:4]}]),
        ),
    ]
    meaning = {
        "kind": "invalid_jobs",
        "doc": "job envelopes a worker answers with InvalidJob (msgpack form); 'error' is a phrase of its message",
        "cases": [{"doc": d, "error": e, "job_hex": codec.packb(j).hex()} for d, e, j in cases],
    }
    return {"invalid_jobs.json": _json(meaning)}


def custom_id_vectors() -> dict[str, bytes]:
    """Job digests (docs/PROTOCOL.md 8.4): ``digests.json`` (the digest of several jobs) and
    ``job_custom_id.*``: a job under a caller-chosen id, its message (``icow_digest`` header
    after ``id``) and its ``icow_submit`` call with the digest part."""
    from icow.digest import job_digest

    def wire(name: str, array: np.ndarray) -> tuple[dict[str, Any], tuple[str, str, list[int], bytes]]:
        t = tensor.encode(name, array)
        data = bytes(t["data"])
        return describe({**t, "data": data}, array), (name, t["datatype"], list(t["shape"]), data)

    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    cases = []
    for doc, model, version, outputs, inputs in [
        ("one FP32 input, latest version, every output", "mlp", None, None, {"x": x}),
        ("the same with another value: another digest", "mlp", None, None, {"x": x * 100}),
        ("pinned to version 2", "mlp", 2, None, {"x": x}),
        ("one output asked for", "mlp", None, ["y"], {"x": x}),
        (
            "two inputs, listed in any order (sorted by the UTF-8 bytes of their names), BYTES and INT64",
            "multi",
            None,
            ["total", "half"],
            {"s": np.array(["héllo", ""], dtype=object), "ids": np.array([[1, -2]], np.int64)},
        ),
        ("an empty tensor", "any", None, None, {"e": np.zeros((0, 3), np.float32)}),
    ]:
        described, hashed = zip(*(wire(n, a) for n, a in inputs.items()))
        cases.append(
            {
                "doc": doc,
                "model": model,
                "version": version,
                "outputs": outputs,
                "inputs": list(described),
                "digest": job_digest(model, version, outputs, hashed),
            }
        )
    files = {
        "digests.json": _json(
            {
                "kind": "digests",
                "doc": "SHA-256 of msgpack(['icow-digest', 1, model, version, outputs, [[name, datatype, shape]...]]) "
                "then each input's data bytes, inputs sorted by the UTF-8 bytes of their names",
                "cases": cases,
            }
        )
    }
    jid, ttl = "order-2024-0001", 60
    described, hashed = wire("x", x)
    digest = job_digest("mlp", None, None, [hashed])
    t = tensor.encode("x", x)
    t["data"] = bytes(t["data"])
    job = envelope.job_envelope(
        job_id=jid, model="mlp", version=None, inputs=[t], result_ttl_s=ttl, reply_to=REPLY, created=CREATED
    )
    queue = keys.queue("mlp", None)
    message = celery.celery_message(job, queue=queue, delivery_tag="golden-tag-custom", digest=digest)
    files["job_custom_id.job.msgpack"] = codec.packb(job)
    files["job_custom_id.message.json"] = message
    files["job_custom_id.json"] = _json(
        {
            "kind": "custom_id_job",
            "doc": "a job under a caller-chosen id: the message carries headers.icow_digest right after headers.id, "
            "and icow_submit gets the digest part (one key, digest and TTL per job after the usual KEYS and ARGV)",
            "job": {
                "id": jid,
                "model": "mlp",
                "version": None,
                "created": CREATED,
                "inputs": [described],
                "outputs": None,
                "ttl": ttl,
                "reply_to": REPLY,
                "deadline": None,
            },
            "digest": digest,
            "delivery_tag": "golden-tag-custom",
            "queue": queue,
            "files": {"job": "job_custom_id.job.msgpack", "message": "job_custom_id.message.json"},
            "submit": {
                "keys": [
                    keys.LIMITS,
                    keys.live("mlp"),
                    keys.wake(queue),
                    *keys.queue_lists(queue),
                    keys.queue_list(queue, 0),
                    keys.digest(jid),
                ],
                "args": [
                    "mlp",
                    "",
                    "1",
                    "1",
                    {"file": "job_custom_id.message.json"},
                    "0",
                    digest,
                    str(ttl + keys.DONE_EXTRA_TTL_S),
                ],
                "replies": {
                    "first": [1, 1, -1, 1, 0],
                    "again_with_the_same_inputs": [1, 1, -1, 1, 1],
                    "again_with_other_inputs": [0, 0, -1, 1, 2],
                },
                "reply_doc": "{queued, depth, limit, served} then one code per job: 0 new, 1 the id already held "
                "this digest (queued again: idempotent), 2 the id holds another digest (not queued: JobIdConflict)",
            },
        }
    )
    return files


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


def vectors() -> dict[str, bytes]:
    """Every golden file: name -> bytes."""
    x = np.array([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.0, 0.25, 1e-3]], np.float32)
    files: dict[str, bytes] = {}
    files |= job_vector("job_mlp", "FP32 input, latest version, reply list", 1, "mlp", {"x": x})
    files |= job_vector(
        "job_multi",
        "FP32/INT64/BOOL inputs, pinned version, chosen outputs, deadline, priority 5 (list suffix 3)",
        2,
        "multi",
        {
            "x": np.array([[1, 2, 3], [4, 5, 6]], np.float32),
            "ids": np.array([[1, -2], [300, -40000]], np.int64),
            "mask": np.array([True, False]),
        },
        version=1,
        outputs=["total", "half"],
        ttl=3600,
        created=1700000000.125,
        deadline=1700000030.125,
        priority=5,
    )
    files |= job_vector(
        "job_text",
        "BYTES input: 4-byte little-endian length before each element; reply_to nil (a job that is "
        "waited for by pub/sub only, as a stock Celery client sends it: nil optional fields are written as nil)",
        3,
        "text",
        {"x": np.array(["hello", "", "héllo wörld"], dtype=object)},
        reply_to=None,  # nil as a pub/sub-only client writes it; ICOW's clients always set it
    )
    files |= job_vector(
        "job_all_datatypes",
        "one input of every numeric datatype (FP16 as raw IEEE half bits); reply_to nil as in job_text",
        4,
        "any",
        {
            "b": np.array([True, False, True]),
            "u8": np.array([0, 255], np.uint8),
            "u16": np.array([1, 65535], np.uint16),
            "u32": np.array([1, 4294967295], np.uint32),
            "u64": np.array([1, 2**53], np.uint64),
            "i8": np.array([-128, 127], np.int8),
            "i16": np.array([-32768, 32767], np.int16),
            "i32": np.array([-(2**31), 2**31 - 1], np.int32),
            "i64": np.array([-(2**53), 2**53], np.int64),
            "f16": np.array([1.0, -2.5, 0.0], np.float16),
            "f32": np.array([[1.5], [-0.0]], np.float32),
            "f64": np.array([3.141592653589793], np.float64),
            "empty": np.zeros((0, 3), np.float32),
        },
        reply_to=None,
    )
    files |= job_vector(
        "job_claim_check",
        "a tensor over the inline limit travels under an icow:in:<nonce> key (limit lowered to 16 bytes here)",
        5,
        "ident",
        {"x": np.arange(8, dtype=np.float32)},
        inline_max_bytes=16,
    )
    files |= json_form(
        "job_json_form",
        "the JSON form a JSON-only Celery client sends: an example to compare parsed, not bytes to reproduce "
        "(any JSON spelling, key order or spacing is accepted)",
        6,
    )
    files |= success(
        "result_mlp", "SUCCESS with one FP32 output", 1, "mlp", 1, {"y": np.array([[0.5, -1.25, 2.0]], np.float32)}
    )
    files |= success(
        "result_multi",
        "SUCCESS with FP32, INT64, BOOL and FP16 outputs",
        2,
        "multi",
        1,
        {
            "total": np.array([6, 15], np.float32),
            "doubled": np.array([[2, -4], [600, -80000]], np.int64),
            "flipped": np.array([False, True]),
            "half": np.array([[0.5, 1, 1.5], [2, 2.5, 3]], np.float16),
        },
    )
    files |= success(
        "result_text", "SUCCESS with a BYTES output", 3, "text", 1, {"y": np.array([b"hello", b"", "héllo".encode()])}
    )
    files |= success(
        "result_claim_check",
        "an output over the inline limit comes back as a ref to icow:out:<id>:<n> (limit lowered here)",
        5,
        "ident",
        1,
        {"y": np.arange(8, dtype=np.float32)},
        inline_max_bytes=16,
    )
    files |= failure(
        "result_invalid_job",
        "FAILURE: the worker refused the job",
        7,
        "InvalidJob",
        "input 'x' must be FP32, got FP64",
        "mlp",
    )
    files |= failure(
        "result_model_not_found",
        "FAILURE: no such version",
        8,
        "ModelNotFound",
        "model 'scale' has no version 7",
        "scale",
    )
    files |= failure(
        "result_job_expired", "FAILURE: deadline passed", 9, "JobExpired", "the job's deadline passed", "mlp"
    )
    files |= failure(
        "result_cancelled",
        "FAILURE: cancelled before it ran (the same bytes are pushed to icow:bell:<id>)",
        10,
        "JobCancelled",
        "the job was cancelled before it ran",
        None,
    )
    files |= model_metadata("model_multi", "the icow:model:multi hash value of version 1")
    files |= model_zipmap("model_zipmap", "the icow:model:classifier hash value of version 1 (a ZipMap output)")
    files |= submit_vector("submit_claim_check", "one job, latest version, one input key", "job_claim_check", files)
    files |= submit_vector("submit_pinned", "one job pinned to version 1, priority 5 (step 3)", "job_multi", files)
    files |= cancel_vectors(1)
    files |= bulk_record(
        "bulk_record",
        "a bulk of 300 samples in 2 jobs (256 + 44), job ids in sample order; no cancel tokens",
    )
    files |= invalid_jobs()
    files |= custom_id_vectors()
    return files


def main(argv: list[str]) -> int:
    files = vectors()
    check = "--check" in argv
    stale = []
    for name, data in sorted(files.items()):
        path = HERE / name
        if path.exists() and path.read_bytes() == data:
            continue
        stale.append(name)
        if not check:
            path.write_bytes(data)
    if check and stale:
        print("golden files out of date: " + ", ".join(stale))
        return 1
    print(f"{len(files)} golden files, {len(stale)} {'stale' if check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
