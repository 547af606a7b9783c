"""The client's call-site checks and what a submission writes (fakeredis: nothing blocks)."""

import json

import fakeredis
import numpy as np
import pytest

import icow.client
from icow import keys
from icow.client import Client
from icow.errors import BrokerUnavailable, InvalidInput, ModelNotFound, PayloadTooLarge

from .conftest import run_python


@pytest.fixture
def fake() -> Client:
    c = Client("redis://fake")
    c._r = fakeredis.FakeRedis()
    c._replies._r = c._r
    c._r.sadd(keys.MODELS, "mlp")
    return c


def test_public_surface_is_locked() -> None:
    assert sorted(icow.client.__all__) == [
        "AsyncClient",
        "AsyncJob",
        "Client",
        "IcowError",
        "Job",
        "JobStatus",
        "ModelInfo",
        "TensorSpec",
    ]


def test_importing_the_client_pulls_in_no_celery_and_no_onnxruntime() -> None:
    proc = run_python(
        "import sys, icow.client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'onnxruntime', 'onnx')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_submit_writes_one_celery_message_and_a_job_record(fake: Client) -> None:
    job = fake.submit("mlp", {"x": np.zeros((1, 4), np.float32)}, priority=0)
    [raw] = fake._r.lrange("icow:q:mlp", 0, -1)
    env = json.loads(raw)
    assert env["headers"]["id"] == job.id
    assert fake._r.get(keys.state(job.id)) == b"queued"
    assert 0 < fake._r.ttl(keys.state(job.id)) <= keys.DEFAULT_RESULT_TTL_S
    assert job.status() == "queued"


def test_large_tensors_travel_under_their_own_key(fake: Client) -> None:
    big = np.arange(300_000, dtype=np.float32)  # 1.2 MB > the 256 KiB inline limit
    job = fake.submit("mlp", {"x": big})
    assert fake._r.get(keys.blob(job.id, "in", 0)) == big.tobytes()
    assert len(fake._r.lindex("icow:q:mlp", 0)) < 2000


def test_priority_selects_the_kombu_priority_list(fake: Client) -> None:
    fake.submit("mlp", {"x": np.zeros((1, 4), np.float32)}, priority=9)
    assert fake._r.llen("icow:q:mlp\x06\x169") == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "../../etc/passwd"}, InvalidInput, "invalid model name"),
        ({"inputs": {"x": [1.0, 2.0]}}, InvalidInput, "numpy.ndarray"),
        ({"inputs": {"x": np.array([object()])}}, InvalidInput, "object arrays"),
        ({"inputs": {"x": np.array([1j])}}, InvalidInput, "not supported"),
        ({"inputs": {}}, InvalidInput, "non-empty mapping"),
        ({"inputs": {"x": np.zeros(100_000, np.float64)}, "max": 1000}, PayloadTooLarge, "limit"),
        ({"version": 0}, InvalidInput, "version"),
        ({"priority": 11}, InvalidInput, "priority"),
        ({"model": "unpublished"}, ModelNotFound, "no worker has published"),
    ],
)
def test_bad_input_is_refused_before_anything_reaches_redis(
    fake: Client, kwargs: dict, error: type, message: str
) -> None:
    args = {"model": "mlp", "inputs": {"x": np.zeros((1, 4), np.float32)}}
    if "max" in kwargs:
        fake.max_tensor_bytes = kwargs.pop("max")
    args.update(kwargs)
    before = set(fake._r.keys("*"))
    with pytest.raises(error, match=message):
        fake.submit(**args)
    assert set(fake._r.keys("*")) == before


def test_unreachable_redis_is_a_clear_error_not_a_hang() -> None:
    with Client("redis://127.0.0.1:1/0", connect_timeout_s=0.5) as c, pytest.raises(BrokerUnavailable):
        c.infer("mlp", {"x": np.zeros((1, 4), np.float32)}, timeout_s=2)


def test_invalid_input_is_also_a_value_error() -> None:
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(BrokerUnavailable, ConnectionError)
