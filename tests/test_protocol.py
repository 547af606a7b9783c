"""The wire format, pinned: golden bytes for a job, its Celery message, and parse errors."""

import base64
import json

import msgpack
import numpy as np
import pytest

from icow import keys, tensor
from icow.celery_message import celery_message
from icow.codec import packb, unpackb
from icow.envelope import job_envelope, parse_job
from icow.errors import InvalidInput
from icow.result import failure_meta, failure_of, parse_meta, success_meta

JOB_ID = "00000000-0000-4000-8000-000000000001"
GOLDEN_JOB_HEX = (
    "8aa17601a26964d92430303030303030302d303030302d343030302d383030302d303030303030303030303031"
    "a56d6f64656ca36d6c70a776657273696f6ec0a763726561746564cb41d954fc40000000a6696e707574739184"
    "a46e616d65a178a86461746174797065a446503332a57368617065920102a464617461c4080000803f00000040"
    "a76f757470757473c0a374746c3ca87265706c795f746fd92b69636f773a7265706c793a636363636363636363"
    "6363636363636363636363636363636363636363636363a8646561646c696e65c0"
)


def golden_job() -> dict:
    return job_envelope(
        job_id=JOB_ID,
        model="mlp",
        version=None,
        inputs=[tensor.encode("x", np.array([[1.0, 2.0]], np.float32))],
        result_ttl_s=60,
        reply_to="icow:reply:" + "c" * 32,
        created=1700000000.0,
    )


def test_job_envelope_golden_bytes() -> None:
    assert packb(golden_job()).hex() == GOLDEN_JOB_HEX


def test_celery_message_is_what_a_celery_worker_consumes() -> None:
    raw = celery_message(golden_job(), queue="icow:q:mlp", delivery_tag="tag-1")
    env = json.loads(raw)
    assert env["content-type"] == "application/x-msgpack"
    assert env["content-encoding"] == "binary"
    assert env["headers"]["task"] == "icow.infer"
    assert env["headers"]["id"] == env["headers"]["root_id"] == JOB_ID
    assert env["properties"]["correlation_id"] == JOB_ID
    assert env["properties"]["delivery_info"] == {"exchange": "", "routing_key": "icow:q:mlp"}
    assert env["properties"]["body_encoding"] == "base64"
    assert env["properties"]["delivery_tag"] == "tag-1"
    args, kwargs, embed = msgpack.unpackb(base64.b64decode(env["body"]), raw=False)
    assert kwargs == {} and embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert packb(args[0]).hex() == GOLDEN_JOB_HEX


def test_parse_job_accepts_the_golden_job() -> None:
    job = unpackb(bytes.fromhex(GOLDEN_JOB_HEX))
    parsed = parse_job(job, task_id=JOB_ID)
    assert parsed["model"] == "mlp" and parsed["ttl"] == 60 and parsed["version"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "protocol version"),
        ({"model": "../etc"}, "invalid model name"),
        ({"model": None}, "invalid model name"),
        ({"version": 0}, "positive integer"),
        ({"version": "1"}, "positive integer"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": 1234}]}, "raw bytes"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "ref": "icow:out:other:0"}]}, "claim-check"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": "AACAPw=="}]}, "msgpack str"),
        ({"reply_to": "icow:reply:c1"}, "reply_to"),
        ({"outputs": []}, "non-empty"),
        ({"ttl": 0}, "ttl"),
        ({"reply_to": "celery"}, "reply_to"),
        ({"id": "other"}, "does not match"),
        ({"created": "yesterday"}, "created"),
        ({"outputs": "y"}, "outputs"),
    ],
)
def test_parse_job_rejects_malformed_envelopes(change: dict, message: str) -> None:
    job = {**unpackb(bytes.fromhex(GOLDEN_JOB_HEX)), **change}
    with pytest.raises(InvalidInput, match=message):
        parse_job(job, task_id=JOB_ID)


def test_result_meta_is_celery_compatible() -> None:
    ok = success_meta(JOB_ID, model="mlp", version=1, outputs=[], worker="w", timing={})
    assert set(ok) == {"status", "result", "traceback", "children", "date_done", "task_id"}
    bad = failure_meta(JOB_ID, error_type="InvalidJob", message="bad shape")
    assert bad["status"] == "FAILURE"
    assert bad["result"]["exc_type"] == "InvalidJob" and bad["result"]["exc_message"] == ["bad shape"]
    assert failure_of(parse_meta(packb(bad))) == ("InvalidJob", "bad shape")


def test_key_schema() -> None:
    assert keys.queue("mlp") == "icow:q:mlp"
    assert keys.queue("mlp", 2) == "icow:q:mlp@2"
    assert keys.queue_list("icow:q:mlp", 0) == "icow:q:mlp"
    assert keys.queue_list("icow:q:mlp", 5) == "icow:q:mlp\x06\x163"
    assert keys.queue_list("icow:q:mlp@2", 9) == "icow:q:mlp@2\x06\x169"
    assert keys.parse_queue("icow:q:mlp@2\x06\x169") == ("mlp", 2, 9)
    assert keys.parse_queue("icow:q:mlp") == ("mlp", None, 0)
    assert keys.result(JOB_ID) == f"celery-task-meta-{JOB_ID}"


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "-x", "x" * 129, "näme", "a b", 3])
def test_model_names_are_strict(name: object) -> None:
    with pytest.raises(InvalidInput):
        keys.check_model_name(name)


@pytest.mark.parametrize("name", ["mlp", "resnet-18", "bert_base.v2", "A1"])
def test_good_model_names(name: str) -> None:
    assert keys.check_model_name(name) == name
