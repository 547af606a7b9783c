"""Models from an S3-compatible store: ``icow models push --repo s3://...`` uploads a version
(model, then its manifest), workers list the bucket, download into a local cache, verify each
file's SHA-256 against its manifest, and pick up new versions at rescan.

The store is moto's S3 server: a real HTTP server on a free loopback port, started by a
fixture, reached by boto3 through ``AWS_ENDPOINT_URL`` exactly as MinIO would be; never the
internet. These tests drive the Repository, ModelManager and RepositoryWatcher that a worker
runs; the ``icow`` CLI runs as a real process for pushes and for the start-up error.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import redis
import yaml
from moto.server import ThreadedMotoServer

from icow import keys
from icow.cli import build_parser
from icow.errors import InvalidInput, StoreUnavailable
from icow.workers import samples
from icow.workers.models import ModelManager
from icow.workers.reload import RepositoryWatcher
from icow.workers.repository import Repository
from icow.workers.s3store import S3Store, parse_s3_url
from icow.workers.store import Manifest, sha256_file

ONE = {"x": np.ones((1, 2), np.float32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server in this process, on a loopback port (stop and start it again to
    simulate an outage: the objects live in moto's process-wide backend and survive)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None
        self.start()

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def aws_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The standard AWS variables pointing at the loopback server (no ~/.aws files, no IMDS);
    subprocesses inherit them."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "icow-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "icow-test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("ICOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # in-process stores without a cache_dir
    return s3_server


@pytest.fixture
def bucket(aws_env: S3Server) -> str:
    name = f"icow-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def icow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icow.cli", *args], capture_output=True, text=True, timeout=120)


def objects(bucket: str) -> dict[str, str]:
    """Every key in the bucket -> its ETag."""
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed}


def wait_for(pred: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_push_uploads_the_model_then_its_manifest_and_a_worker_repository_serves_it(
    bucket: str, tmp_path: Path
) -> None:
    src = samples.scale(tmp_path / "scale.onnx", 2.0)
    proc = icow("models", "push", str(src), "--name", "scale", "--repo", f"s3://{bucket}/models")
    assert proc.returncode == 0, proc.stderr
    assert f"s3://{bucket}/models/scale/1/model.onnx" in proc.stdout
    assert set(objects(bucket)) == {"models/scale/1/model.onnx", "models/scale/1/manifest.json"}
    body = boto3.client("s3").get_object(Bucket=bucket, Key="models/scale/1/manifest.json")["Body"].read()
    assert Manifest.parse(body, "manifest") == Manifest.of_file(src)
    boto3.client("s3").put_object(Bucket=bucket, Key="models/scale/config.toml", Body=b"providers = ['cpu']\n")

    repo = Repository(f"s3://{bucket}/models", cache_dir=tmp_path / "cache")
    entries = repo.scan()
    assert list(entries) == ["scale"] and entries["scale"].versions == (1,)
    assert entries["scale"].config.providers == ("cpu",)
    local = entries["scale"].file(1)
    assert local.is_relative_to(tmp_path / "cache") and sha256_file(local) == sha256_file(src)
    manager = ModelManager(repo, threads=1)
    manager.start()
    assert manager.get("scale").run(ONE)["y"][0, 0] == 2.0


def test_a_version_is_visible_only_once_its_manifest_is_written(bucket: str, tmp_path: Path) -> None:
    store = S3Store(f"s3://{bucket}/repo")
    store.push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    repo = Repository(f"s3://{bucket}/repo")
    assert repo.scan()["m"].versions == (1,)
    s3 = boto3.client("s3")
    v2 = samples.scale(tmp_path / "v2.onnx", 3.0)
    s3.put_object(Bucket=bucket, Key="repo/m/2/model.onnx", Body=v2.read_bytes())  # an upload in progress
    assert repo.scan()["m"].versions == (1,)
    s3.put_object(Bucket=bucket, Key="repo/m/2/manifest.json", Body=Manifest.of_file(v2).to_bytes())
    assert repo.scan()["m"].versions == (1, 2)
    for odd in ("02", "0", "²", "x"):  # not version folders: ignored
        s3.put_object(Bucket=bucket, Key=f"repo/m/{odd}/model.onnx", Body=v2.read_bytes())
        s3.put_object(Bucket=bucket, Key=f"repo/m/{odd}/manifest.json", Body=Manifest.of_file(v2).to_bytes())
    assert repo.scan()["m"].versions == (1, 2) and not repo.failed


def test_a_version_pushed_while_the_watcher_runs_is_served(bucket: str, tmp_path: Path, r: redis.Redis) -> None:
    model = f"s3m{uuid.uuid4().hex[:6]}"
    url = f"s3://{bucket}/models"
    S3Store(url).push(samples.scale(tmp_path / "v1.onnx", 2.0), model)
    manager = ModelManager(Repository(url), threads=1)
    manager.start()
    manager.publish(r)
    watcher = RepositoryWatcher(manager, r, interval_s=0.1)
    watcher.start()
    try:
        proc = icow("models", "push", str(samples.scale(tmp_path / "v2.onnx", 3.0)), "--name", model, "--repo", url)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: manager.entries[model].versions == (1, 2))
        assert manager.get(model).run(ONE)["y"][0, 0] == 3.0  # latest is now 2
        assert manager.get(model, 1).run(ONE)["y"][0, 0] == 2.0
        assert set(r.hkeys(keys.model(model))) >= {b"1", b"2"}
    finally:
        watcher.stop()
        r.delete(keys.model(model))
        r.srem(keys.MODELS, model)


def test_a_corrupted_upload_is_refused_by_its_checksum_and_the_other_versions_stay_served(
    bucket: str, tmp_path: Path, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"s3://{bucket}/models"
    store = S3Store(url)
    store.push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    manager = ModelManager(Repository(url, cache_dir=tmp_path / "cache"), threads=1)
    manager.start()
    watcher = RepositoryWatcher(manager, r, interval_s=0)

    # v2's object is replaced after its push by another valid model of the same size.
    store.push(samples.scale(tmp_path / "v2.onnx", 3.0), "m")
    evil = samples.scale(tmp_path / "evil.onnx", 9.0).read_bytes()
    assert len(evil) == (tmp_path / "v2.onnx").stat().st_size
    boto3.client("s3").put_object(Bucket=bucket, Key="models/m/2/model.onnx", Body=evil)
    with caplog.at_level(logging.ERROR, logger="icow.repository"):
        assert not watcher.refresh()
    assert "checksum mismatch" in manager.repo.failed[("m", 2)]
    assert "model m v2 is refused" in caplog.text
    assert manager.entries["m"].versions == (1,)
    assert manager.get("m").run(ONE)["y"][0, 0] == 2.0  # still served, by v1
    v2_dir = tmp_path / "cache" / manager.repo.root.relative_to(tmp_path / "cache") / "m" / "2"
    assert not list(v2_dir.iterdir()) or [p.name for p in v2_dir.iterdir()] == [".lock"]  # nothing half-written

    # A truncated upload is refused by its size, without downloading it.
    store.push(samples.scale(tmp_path / "v3.onnx", 4.0), "m")
    boto3.client("s3").put_object(Bucket=bucket, Key="models/m/3/model.onnx", Body=b"trunc")
    assert not watcher.refresh()
    assert "manifest says" in manager.repo.failed[("m", 3)]

    # Versions are immutable, so a fix is a new version: it is served at the next rescan.
    store.push(samples.scale(tmp_path / "v4.onnx", 5.0), "m")
    assert watcher.refresh().added == [("m", 4)]
    assert manager.get("m").run(ONE)["y"][0, 0] == 5.0


def test_with_versions_latest_a_refused_newest_version_falls_back_to_the_previous_one(
    bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/p"
    store = S3Store(url)
    store.push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    store.push(samples.scale(tmp_path / "v2.onnx", 3.0), "m")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="p/m/config.toml", Body=b'versions = "latest"\n')
    s3.put_object(Bucket=bucket, Key="p/m/2/model.onnx", Body=samples.scale(tmp_path / "x.onnx", 9.0).read_bytes())
    repo = Repository(url)
    assert repo.scan()["m"].versions == (1,)
    assert set(repo.failed) == {("m", 2)}


def test_a_damaged_cache_file_is_fetched_again_and_deleted_versions_leave_the_cache(
    bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/models"
    store = S3Store(url)
    store.push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    store.push(samples.scale(tmp_path / "v2.onnx", 3.0), "m")
    cached = Repository(url, cache_dir=tmp_path / "cache").scan()["m"].file(1)
    cached.write_bytes(b"bit rot")
    entry = Repository(url, cache_dir=tmp_path / "cache").scan()["m"]  # a new worker process
    assert entry.file(1) == cached and sha256_file(cached) == sha256_file(tmp_path / "v1.onnx")

    boto3.client("s3").delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "models/m/1/model.onnx"}, {"Key": "models/m/1/manifest.json"}]}
    )
    repo = Repository(url, cache_dir=tmp_path / "cache")
    assert repo.scan()["m"].versions == (2,)
    assert not cached.parent.exists()


def test_push_refuses_to_overwrite_a_version(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/models"
    store = S3Store(url)
    v1 = samples.scale(tmp_path / "v1.onnx", 2.0)
    assert store.push(v1, "m") == f"{url}/m/1/model.onnx"
    before = objects(bucket)
    other = samples.scale(tmp_path / "other.onnx", 7.0)
    with pytest.raises(InvalidInput, match="immutable"):
        store.push(other, "m", 1)
    proc = icow("models", "push", str(other), "--name", "m", "--version", "1", "--repo", url)
    assert proc.returncode == 2 and "versions are immutable" in proc.stderr
    assert objects(bucket) == before  # not a byte changed

    # An interrupted push (a model without its manifest) holds its number too.
    boto3.client("s3").put_object(Bucket=bucket, Key="models/m/2/model.onnx", Body=other.read_bytes())
    with pytest.raises(InvalidInput, match="immutable"):
        store.push(other, "m", 2)
    assert store.push(other, "m") == f"{url}/m/3/model.onnx"  # the default is the next free number

    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    proc = icow("models", "push", str(tmp_path / "bad.onnx"), "--name", "m", "--repo", url)
    assert proc.returncode == 2 and "not a valid ONNX model" in proc.stderr


def test_concurrent_pushes_of_the_same_version_one_wins(bucket: str, tmp_path: Path) -> None:
    """Conditional writes (If-None-Match) make the version claim atomic on the server."""
    url = f"s3://{bucket}/models"
    files = [samples.scale(tmp_path / f"c{i}.onnx", float(i)) for i in range(4)]
    results: list[object] = []

    def push(f: Path) -> None:
        try:
            results.append(S3Store(url).push(f, "m", 1))
        except InvalidInput as exc:
            results.append(exc)

    threads = [threading.Thread(target=push, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(x, str) for x in results) == 1
    assert Repository(url, cache_dir=tmp_path / "cache").scan()["m"].versions == (1,)  # and it verifies


def test_an_unreachable_store_at_start_is_a_clear_error_naming_the_endpoint(
    aws_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(StoreUnavailable, match=re.escape(f"S3 endpoint {dead} unreachable")):
        Repository("s3://models/prod")
    proc = icow("worker", "--repo", "s3://models/prod", "--redis", redis_url)
    assert proc.returncode == 2, proc.stderr
    assert f"StoreUnavailable: S3 endpoint {dead} unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = icow(
        "models", "push", str(samples.scale(tmp_path / "m.onnx", 2.0)), "--name", "m", "--repo", "s3://models/p"
    )
    assert proc.returncode == 2 and dead in proc.stderr


def test_a_missing_bucket_is_a_clear_error(aws_env: S3Server) -> None:
    with pytest.raises(StoreUnavailable, match=re.escape(f"bucket 'no-such-bucket' does not exist at {aws_env.url}")):
        Repository("s3://no-such-bucket/models")


def test_rescans_keep_serving_while_the_store_is_down_and_catch_up_after(
    bucket: str, tmp_path: Path, r: redis.Redis, aws_env: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"s3://{bucket}/models"
    S3Store(url).push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    manager = ModelManager(Repository(url), threads=1)
    manager.start()
    watcher = RepositoryWatcher(manager, r, interval_s=0)
    aws_env.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="icow.reload"):
            assert not watcher.refresh()
        assert "unreachable" in caplog.text and aws_env.url in caplog.text
        assert manager.entries["m"].versions == (1,)
        assert manager.get("m").run(ONE)["y"][0, 0] == 2.0
    finally:
        aws_env.start()
    S3Store(url).push(samples.scale(tmp_path / "v2.onnx", 3.0), "m")
    assert watcher.refresh().added == [("m", 2)]


def test_s3_urls_and_manifests_are_validated() -> None:
    assert parse_s3_url("s3://models") == ("models", "")
    assert parse_s3_url("s3://models/a/b/") == ("models", "a/b")
    for bad in ("models", "s3://", "s3://UPPER/x", "s3://b/../x", "s3://bk//x"):
        with pytest.raises(InvalidInput):
            parse_s3_url(bad)
    good = {"file": "model.onnx", "size": 3, "sha256": "a" * 64}
    assert Manifest.parse(str(good).replace("'", '"').encode(), "m") == Manifest(3, "a" * 64)
    for bad_doc in (b"{", b"{}", b'{"size": -1, "sha256": "' + b"a" * 64 + b'"}', b'{"size": 1, "sha256": "zz"}'):
        with pytest.raises(InvalidInput):
            Manifest.parse(bad_doc, "m")


def test_compose_and_kubernetes_show_the_s3_repository_as_an_option() -> None:
    """compose.yaml's `worker-s3` (profile s3, with a MinIO) and the Kubernetes example's
    commented S3 option, uncommented, are well-formed and their command lines parse."""
    root = Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    w = compose["services"]["worker-s3"]
    assert w["profiles"] == ["s3"] and compose["services"]["minio"]["profiles"] == ["s3"]
    args = build_parser().parse_args(w["command"])
    assert args.command == "worker" and args.repo.startswith("s3://")
    parse_s3_url(args.repo)
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(w["environment"])
    assert w["environment"]["ICOW_REDIS_URL"] == compose["services"]["worker"]["environment"]["ICOW_REDIS_URL"]
    assert w["volumes"] == []  # no ./models mount

    text = (root / "docs" / "deploy" / "kubernetes" / "icow.yaml").read_text()
    block = text.split("# --- S3 option\n", 1)[1].split("# --- end of the S3 option", 1)[0]
    option = yaml.safe_load("\n".join(re.sub(r"^\s*# ?", "", line) for line in block.splitlines()))
    args = build_parser().parse_args(option["args"])
    assert args.repo.startswith("s3://") and parse_s3_url(args.repo)
    env = {e["name"] for e in option["env"]}
    assert {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ICOW_CACHE_DIR"} <= env
    assert option["volumeMounts"][0]["name"] == option["volumes"][0]["name"]


def test_a_local_repository_pushed_with_icow_can_be_copied_to_s3_as_it_is(bucket: str, tmp_path: Path) -> None:
    """`icow models push --repo DIR` writes manifest.json too, so `aws s3 sync DIR s3://...`
    (here: a plain upload of every file) gives a repository that workers verify and serve."""
    from icow.cli.ops import push_model

    local = tmp_path / "models"
    local.mkdir()
    push_model(samples.scale(tmp_path / "v1.onnx", 2.0), local, "m")
    assert sorted(p.name for p in (local / "m" / "1").iterdir()) == ["manifest.json", "model.onnx"]
    s3 = boto3.client("s3")
    for f in local.rglob("*"):
        if f.is_file():
            s3.put_object(Bucket=bucket, Key=f"synced/{f.relative_to(local)}", Body=f.read_bytes())
    entry = Repository(f"s3://{bucket}/synced").scan()["m"]
    assert entry.versions == (1,) and sha256_file(entry.file(1)) == sha256_file(local / "m" / "1" / "model.onnx")


def count_calls(repo: Repository) -> dict[str, int]:
    """S3 operations the repository's store makes from now on, by name (botocore's events)."""
    calls: dict[str, int] = {}

    def seen(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    store: Any = repo.store
    store.client.meta.events.register("before-call.s3", seen)
    return calls


def test_a_rescan_is_one_listing_and_a_refused_version_is_not_downloaded_again(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/models"
    store = S3Store(url)
    store.push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    store.push(samples.scale(tmp_path / "v2.onnx", 3.0), "m")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="models/m/config.toml", Body=b"providers = ['cpu']\n")
    s3.put_object(Bucket=bucket, Key="models/m/2/model.onnx", Body=samples.scale(tmp_path / "x.onnx", 9.0).read_bytes())
    repo = Repository(url)
    calls = count_calls(repo)
    assert repo.scan()["m"].versions == (1,)
    assert calls == {"ListObjectsV2": 1, "GetObject": 5}  # config, 2 manifests, 2 models
    calls.clear()
    assert repo.scan()["m"].versions == (1,) and ("m", 2) in repo.failed
    assert calls == {"ListObjectsV2": 1}  # nothing changed: nothing read

    store.push(samples.scale(tmp_path / "v3.onnx", 4.0), "m")
    calls.clear()
    assert repo.scan()["m"].versions == (1, 3)
    assert calls == {"ListObjectsV2": 1, "GetObject": 2}  # only v3's manifest and model

    s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "models/m/2/model.onnx"}, {"Key": "models/m/2/manifest.json"}]}
    )
    assert repo.scan()["m"].versions == (1, 3) and not repo.failed  # a deleted version is no failure


def test_workers_sharing_a_cache_download_each_file_once(
    bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"s3://{bucket}/models"
    S3Store(url).push(samples.scale(tmp_path / "v1.onnx", 2.0), "m")
    repos = [Repository(url, cache_dir=tmp_path / "shared") for _ in range(4)]
    found: list[tuple[int, ...]] = []
    with caplog.at_level(logging.INFO, logger="icow.s3"):
        threads = [threading.Thread(target=lambda r=r: found.append(r.scan()["m"].versions)) for r in repos]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert found == [(1,)] * 4
    assert sum("fetched" in rec.message for rec in caplog.records) == 1


def test_non_aws_endpoints_are_addressed_path_style(monkeypatch: pytest.MonkeyPatch) -> None:
    from icow.workers.s3store import make_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    c = make_client()
    assert c.meta.endpoint_url == "http://minio:9000" and c.meta.config.s3["addressing_style"] == "path"
    assert c.meta.region_name == "eu-west-1"  # AWS_REGION, not only AWS_DEFAULT_REGION
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    c = make_client()
    assert c.meta.endpoint_url.endswith(".amazonaws.com") and c.meta.config.s3["addressing_style"] == "auto"


def test_boto3_is_imported_only_for_s3_repositories(tmp_path: Path) -> None:
    samples.scale(tmp_path / "m" / "1" / "model.onnx", 2.0)
    code = (
        "import sys; from icow.workers.repository import Repository; from icow.cli import ops; "
        f"Repository({str(tmp_path)!r}).scan(); print('boto3' in sys.modules, 'botocore' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False False", proc.stderr


def test_a_worker_process_serves_from_s3_and_picks_up_a_pushed_version(
    bucket: str, tmp_path: Path, redis_url: str
) -> None:
    """`icow worker --repo s3://...` as a real process: it serves v1 from the store, and a v2
    pushed while it runs is served after a rescan; a corrupted upload is never served."""
    from icow.cli.fleet import start_worker, stop_process
    from icow.client import Client

    from .conftest import wait_ready

    model = f"s3scale{uuid.uuid4().hex[:6]}"
    repo = f"s3://{bucket}/models"
    first = icow("models", "push", str(samples.scale(tmp_path / "v1.onnx", 2.0)), "--name", model, "--repo", repo)
    assert first.returncode == 0, first.stderr
    name = f"{model}@local"
    proc = start_worker(repo, redis_url, extra=["--name", name, "--threads", "1", "--rescan", "0.3"], quiet=True)
    try:
        wait_ready(redis_url, name, proc)
        x = np.ones((1, 2), np.float32)
        with Client(redis_url) as c:
            assert float(c.infer(model, {"x": x}, timeout_s=30)["y"][0, 0]) == 2.0
            v2 = str(samples.scale(tmp_path / "v2.onnx", 3.0))
            pushed = icow("models", "push", v2, "--name", model, "--repo", repo)
            assert pushed.returncode == 0, pushed.stderr
            wait_for(lambda: 2 in c.models().get(model, []))
            assert float(c.infer(model, {"x": x}, version=2, timeout_s=30)["y"][0, 0]) == 3.0
            s3 = boto3.client("s3")  # a v3 whose bytes do not match its manifest
            s3.put_object(Bucket=bucket, Key=f"models/{model}/3/model.onnx", Body=b"not the pushed bytes")
            good = s3.get_object(Bucket=bucket, Key=f"models/{model}/2/manifest.json")["Body"].read()
            s3.put_object(Bucket=bucket, Key=f"models/{model}/3/manifest.json", Body=good)
            wait_for(lambda: r_failed(redis_url, model))
            assert 3 not in c.models()[model]
    finally:
        stop_process(proc)


def r_failed(redis_url: str, model: str) -> bool:
    """Some worker's heartbeat reports a version of ``model`` that failed to load."""
    from icow.workers.heartbeat import live_workers

    conn = redis.Redis.from_url(redis_url)
    try:
        return any(k.startswith(f"{model}:") for w in live_workers(conn) for k in (w.get("failed") or {}))
    finally:
        conn.close()
