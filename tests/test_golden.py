"""The golden wire vectors (tests/golden, docs/PROTOCOL.md): our encoder reproduces their bytes,
our decoder reads them. clients/node/test/golden.test.js checks the same files from Node.js."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from icow import keys, tensor
from icow.celery_message import celery_message
from icow.client import _core
from icow.codec import packb, unpackb
from icow.envelope import job_envelope, job_id_for_token, parse_job
from icow.errors import REMOTE_ERRORS, InvalidInput
from icow.result import cancel_outcome, failure_meta, parse_meta, success_meta
from icow.result import read as read_result

GOLDEN = Path(__file__).resolve().parent / "golden"


def _load(kind: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(GOLDEN.glob("*.json")):
        if path.name.endswith(".message.json"):
            continue
        meaning = json.loads(path.read_text())
        if meaning["kind"] == kind:
            out.append((path.stem, meaning))
    return out


def _ids(vectors: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in vectors]


JOBS = _load("job")
RESULTS = _load("result")


def _array(t: dict[str, Any]) -> np.ndarray:
    """A tensor's values as numpy, from its JSON meaning alone."""
    if t["datatype"] == tensor.BYTES:
        arr = np.empty(len(t["values"]), dtype=object)
        arr[:] = [v.encode() for v in t["values"]]
        return arr.reshape(t["shape"])
    return np.array(t["values"], dtype=tensor.DATATYPES[t["datatype"]]).reshape(t["shape"])


def _file(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def test_the_generator_reproduces_every_committed_file() -> None:
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.vectors()
    committed = {p.name for p in GOLDEN.iterdir() if p.is_file() and p.name != "make_golden.py"}
    assert committed == set(files)
    for name, data in files.items():
        assert _file(name) == data, f"{name} differs: run tests/golden/make_golden.py and review the diff"


def test_there_are_vectors_of_every_kind() -> None:
    assert len(JOBS) >= 5 and len(RESULTS) >= 6
    assert {m["meta"]["status"] for _, m in RESULTS} == {"SUCCESS", "FAILURE"}
    datatypes = {t["datatype"] for _, m in JOBS for t in m["job"]["inputs"]}
    assert datatypes == set(tensor.ALL_DATATYPES)


@pytest.mark.parametrize(("name", "meaning"), JOBS, ids=_ids(JOBS))
def test_our_encoder_reproduces_the_job_bytes(name: str, meaning: dict[str, Any]) -> None:
    job = meaning["job"]
    assert job_id_for_token(meaning["token"]) == job["id"]
    wire, blobs = [], {}
    for t in job["inputs"]:
        encoded = tensor.encode(t["name"], _array(t))
        encoded["data"] = bytes(encoded["data"])
        if len(encoded["data"]) > meaning["inline_max_bytes"]:
            assert keys.is_input_blob(t["ref"])  # a random icow:in:<nonce> key; the vector fixes one
            blobs[t["ref"]] = encoded.pop("data")
            encoded["ref"] = t["ref"]
        else:
            assert encoded["data"].hex() == t["data_hex"]
        wire.append(encoded)
    envelope = job_envelope(
        job_id=job["id"],
        model=job["model"],
        version=job["version"],
        inputs=wire,
        outputs=job["outputs"],
        result_ttl_s=job["ttl"],
        reply_to=job["reply_to"],
        deadline=job["deadline"],
        created=job["created"],
    )
    assert packb(envelope) == _file(meaning["files"]["job"])
    assert meaning["queue"] == keys.queue(job["model"], job["version"])  # pinned: icow:q:<m>@<v>
    message = celery_message(
        envelope, queue=meaning["queue"], priority=meaning["priority"], delivery_tag=meaning["delivery_tag"]
    )
    assert message == _file(meaning["files"]["message"])
    assert keys.queue_list(meaning["queue"], meaning["priority"]) == meaning["queue_list"]
    assert {ref: _file(f) for ref, f in meaning["blobs"].items()} == blobs


@pytest.mark.parametrize(("name", "meaning"), JOBS, ids=_ids(JOBS))
def test_our_decoder_reads_the_job_bytes(name: str, meaning: dict[str, Any]) -> None:
    message = json.loads(_file(meaning["files"]["message"]))
    assert message["headers"]["task"] == "icow.infer"
    assert message["properties"]["delivery_info"]["routing_key"] == meaning["queue"]
    args, kwargs, _embed = unpackb(base64.b64decode(message["body"]))
    assert kwargs == {} and packb(args[0]) == _file(meaning["files"]["job"])
    parsed = parse_job(args[0], task_id=message["headers"]["id"])
    blobs = {ref: _file(f) for ref, f in meaning["blobs"].items()}
    for t, want in zip(parsed["inputs"], meaning["job"]["inputs"]):
        data = blobs[t["ref"]] if "ref" in t else t["data"]
        arr = tensor.decode({**t, "data": data})
        expected = _array(want)
        assert arr.shape == expected.shape
        np.testing.assert_array_equal(arr, expected)
    for field in ("id", "model", "version", "outputs", "ttl", "reply_to", "deadline", "created"):
        assert parsed[field] == meaning["job"][field]


@pytest.mark.parametrize(("name", "meaning"), RESULTS, ids=_ids(RESULTS))
def test_our_decoder_reads_the_result_bytes(name: str, meaning: dict[str, Any]) -> None:
    meta = parse_meta(_file(meaning["files"]["result"]))
    assert meta["task_id"] == meaning["meta"]["task_id"] and keys.result(meta["task_id"]) == meaning["key"]
    res = read_result(_file(meaning["files"]["result"]))
    assert res.job_id == meta["task_id"] and res.model == meaning["meta"]["result"]["model"]
    if res.ok:
        blobs = {ref: _file(f) for ref, f in meaning["blobs"].items()}
        assert _core.output_refs(res) == list(blobs)
        outputs = _core.decode_result(res, blobs)
        for want in meaning["meta"]["result"]["outputs"]:
            np.testing.assert_array_equal(outputs[want["name"]], _array(want))
            assert outputs[want["name"]].shape == tuple(want["shape"])
        assert meta["result"]["model"] == meaning["meta"]["result"]["model"]
    else:
        err = meaning["error"]
        with pytest.raises(REMOTE_ERRORS[err["type"]]) as info:
            _core.decode_result(res)
        assert info.value.message == err["message"] and info.value.job_id == meta["task_id"]


@pytest.mark.parametrize(("name", "meaning"), RESULTS, ids=_ids(RESULTS))
def test_our_encoder_reproduces_the_result_bytes(name: str, meaning: dict[str, Any]) -> None:
    want = meaning["meta"]
    res = want["result"]
    if want["status"] == "SUCCESS":
        wire = []
        for i, t in enumerate(res["outputs"]):
            encoded = tensor.encode(t["name"], _array(t))
            encoded["data"] = bytes(encoded["data"])
            if "ref" in t:
                assert _file(meaning["blobs"][t["ref"]]) == encoded.pop("data")
                encoded["ref"] = keys.output_blob(want["task_id"], i)
            wire.append(encoded)
        meta = success_meta(
            want["task_id"],
            model=res["model"],
            version=res["version"],
            outputs=wire,
            worker=res["worker"],
            timing=res["timing"],
        )
    else:
        meta = failure_meta(
            want["task_id"],
            error_type=res["exc_type"],
            message=res["exc_message"][0],
            model=res["model"],
            version=res["version"],
            worker=res["worker"],
        )
    meta["date_done"] = want["date_done"]
    assert packb(meta) == _file(meaning["files"]["result"])


def test_the_json_form_decodes_to_the_same_job() -> None:
    (_, meaning), *_ = _load("json_job")
    message = json.loads(_file(meaning["files"]["message"]))
    assert message["content-type"] == "application/json"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    parsed = parse_job(args[0], task_id=message["headers"]["id"], json_form=True)
    (want,) = meaning["inputs"]
    assert parsed["inputs"][0]["data"] == bytes.fromhex(want["data_hex"])
    np.testing.assert_array_equal(tensor.decode(parsed["inputs"][0]), _array(want))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("AACAPw==!", "not valid base64"),
        ("AACA", "3 bytes of data"),
        ("AACAPwAAgD8=", "8 bytes of data but shape \\[1\\] x FP32 needs 4"),
        (None, "raw bytes"),
    ],
)
def test_the_json_form_refuses_bad_base64_and_wrong_sizes(data: object, message: str) -> None:
    job = {
        "v": 1,
        "id": "j1",
        "model": "m",
        "created": 1.0,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
    }
    job["inputs"][0]["data"] = data  # type: ignore[index]
    with pytest.raises(InvalidInput, match=message):
        parse_job(job, task_id="j1", json_form=True)


def test_model_metadata_value() -> None:
    (_, meaning), *_ = _load("model")
    raw = {meaning["field"].encode(): _file(meaning["files"]["model"])}
    info = _core.model_info("multi", raw, None)
    assert info.version == 1 and [t.datatype for t in info.outputs] == ["FP32", "INT64", "BOOL", "FP16"]
    assert unpackb(raw[b"1"]) == meaning["meta"]


def test_model_metadata_lists_outputs_that_are_not_tensors_apart() -> None:
    meaning = json.loads(_file("model_zipmap.json"))
    raw = {meaning["field"].encode(): _file(meaning["files"]["model"])}
    info = _core.model_info("classifier", raw, None)
    assert [(t.name, t.datatype) for t in info.outputs] == [("label", "INT64")]
    meta = unpackb(raw[b"1"])
    assert meta == meaning["meta"] and meta["unsupported_outputs"][0]["name"] == "probabilities"


# -- what a client sends to Redis's functions, and reads back besides results


@pytest.mark.parametrize("name", ["submit_claim_check", "submit_pinned"])
def test_the_submit_call_reproduces_the_vector(name: str) -> None:
    vector = json.loads(_file(f"{name}.json"))
    job = json.loads(_file(f"{vector['job']}.json"))
    prepared = _core.PreparedJob(
        job_id=job["job"]["id"],
        cancel_token=job["token"],
        message=_file(job["files"]["message"]),
        inputs={ref: _file(f) for ref, f in job["blobs"].items()},
        ttl_s=job["job"]["ttl"],
    )
    target = _core.Target(vector["model"], vector["version"], vector["priority"])
    fkeys, args = _core.submit_call(target, [prepared], vector["require_published"])
    assert fkeys == vector["keys"]
    assert all(isinstance(a, str) for a in vector["args"] if not isinstance(a, dict))  # bulk strings
    assert args == [_file(a["file"]) if isinstance(a, dict) else a for a in vector["args"]]
    reply = vector["reply"]
    outcome = _core.submit_outcome(target, [reply["queued"], reply["depth"], reply["limit"], reply["served"]])
    assert outcome == (reply["queued"], reply["depth"], reply["limit"])


def test_the_cancel_request_and_the_fleets_answer() -> None:
    request = json.loads(_file("cancel_request.json"))
    assert job_id_for_token(request["token"]) == request["job_id"]
    assert list(_core.cancel_request(request["job_id"], request["token"], request["args"][1])) == [
        request["keys"],
        request["args"],
    ]
    with_ttl = request["with_ttl"]
    assert _core.cancel_request(request["job_id"], request["token"], request["args"][1], with_ttl["ttl"]) == (
        request["keys"],
        with_ttl["args"],
    )
    for case in request["refused"][:2]:  # a malformed token never leaves the client
        with pytest.raises(InvalidInput, match="cancel token"):
            _core.cancel_request(request["job_id"], case["args"][0], case["args"][1])
    outcome = json.loads(_file("reply_cancel_outcome.json"))
    raw = _file(outcome["files"]["entry"])
    assert cancel_outcome(request["job_id"], 1) == raw
    assert outcome["entry"]["task_id"] == "cancel:" + request["job_id"]
    entry = _core.parse_entry(raw)
    assert entry is not None and entry[0] == _core.cancel_key(request["job_id"])  # routed by status CANCEL
    assert _core.cancel_outcome(entry[1]) is True


def test_a_result_whose_custom_id_reads_like_a_cancel_answer_goes_to_its_own_waiter() -> None:
    """docs/PROTOCOL.md §12: entries are routed by status, so a custom id ``cancel:<id>`` never
    meets the cancel answer of job ``<id>``."""
    request = json.loads(_file("cancel_request.json"))
    meta = json.loads(_file("result_mlp.json"))["meta"]
    custom = "cancel:" + request["job_id"]
    raw = packb({**meta, "task_id": custom, "result": {**meta["result"], "id": custom, "outputs": []}})
    entry = _core.parse_entry(raw)
    assert entry is not None and entry[0] == custom != _core.cancel_key(request["job_id"])


def test_the_bulk_record_is_what_the_client_writes_and_reads() -> None:
    from icow.client import bulk

    (_, meaning), *_ = _load("bulk_record")
    rec = meaning["record"]
    raw = _file(meaning["files"]["record"])
    plan = bulk.Plan(rec["id"], [], rec["samples"], meaning["ttl"])
    assert plan.record(rec["model"], [type("J", (), {"id": j})() for j in rec["jobs"]]) == raw
    assert bulk.parse_record(rec["id"], raw) == (rec["model"], rec["jobs"], rec["samples"])
    assert keys.bulk(rec["id"]) == meaning["key"]


@pytest.mark.parametrize("case", json.loads(_file("invalid_jobs.json"))["cases"], ids=lambda c: c["doc"][:40])
def test_workers_refuse_the_invalid_jobs(case: dict[str, Any]) -> None:
    job = unpackb(bytes.fromhex(case["job_hex"]))
    with pytest.raises(InvalidInput, match=case["error"]):
        parse_job(job, task_id=job["id"])
