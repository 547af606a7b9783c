"""A real ``icow gateway`` process for the gateway tests (free ports, ready when it says so)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``python -m icow.cli gateway`` on loopback; started() returns once it prints ready."""

    def __init__(self, redis_url: str, *extra: str):
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.http = f"127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.signalled = False
        args = ["--redis", redis_url, "--host", "127.0.0.1"]
        args += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icow.cli", "gateway", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("ICOW_TEST_VERBOSE") else subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the gateway says it is ready (or exits)
        if "icow gateway ready" not in line:
            self.proc.kill()
            raise RuntimeError(f"gateway did not start: {line!r}, exit {self.proc.wait()}")

    def terminate(self) -> None:
        """SIGTERM once: the gateway finishes what is in flight, then exits 0."""
        if not self.signalled:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.terminate()
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
