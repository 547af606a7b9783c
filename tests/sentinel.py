"""A throwaway Redis under Sentinel for tests: one primary, one replica (``--replicaof``) and
three sentinels on free loopback ports, all run by the embedded valkey-server (or Debian's
redis-server / redis-sentinel: whatever ``find_redis_server`` finds first; a sentinel is the
same binary started with ``--sentinel``).

Failover is quick: ``down-after-milliseconds`` 1000 and ``failover-timeout`` 5000 (quorum 2).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from icow.cli.fleet import find_redis_server, free_port

SERVICE = "icow"


def _wait(what: str, check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.exceptions.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


class Node:
    """One valkey/redis-server process (data node or sentinel)."""

    def __init__(self, exe: str, args: list[str], port: int, log: Path):
        self.port = port
        self.log = log
        self._argv = [exe, *args]
        self.start()

    def start(self, extra: list[str] | None = None) -> None:
        """Start (again, after :meth:`kill`: same port, same data folder); ``extra``: more
        server arguments for this start only."""
        self._log_file = self.log.open("ab")
        argv = self._argv + (extra or [])
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT)
        _wait(f"server on port {self.port}", self.ping, 10)

    def conn(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def ping(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server on port {self.port} exited: {self.log.read_text()[-2000:]}")
        with self.conn() as c:
            return bool(c.ping())

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log_file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class SentinelSet:
    """Primary + replica + three sentinels. ``url`` is the ``redis+sentinel://`` URL of the set;
    ``primary_url`` / ``replica_url`` reach one node directly."""

    def __init__(self, *, sentinels: int = 3, down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        exe = find_redis_server()
        if exe is None:
            raise RuntimeError("no valkey-server / redis-server >= 7 found")
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="icow-sentinel-"))
        self.nodes: list[Node] = []
        try:
            self.primary = self._data_node("a")
            self.replica = self._data_node("b", replica_of=self.primary.port)
            _wait("replica in sync", self._replica_synced, 20)
            self.sentinels = [
                self._sentinel(i, down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)
                for i in range(sentinels)
            ]
            # Failover needs every sentinel to know its peers (quorum) and the replica.
            _wait("sentinels know each other and the replica", self._sentinels_settled, 30)
        except BaseException:
            self.stop()
            raise
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _data_node(self, name: str, replica_of: int | None = None) -> Node:
        port = free_port()
        folder = self.dir / name
        folder.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--maxmemory-policy", "noeviction", "--loglevel", "notice"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        node = Node(self.exe, args, port, self.dir / f"{name}.log")
        self.nodes.append(node)
        return node

    def _sentinel(self, i: int, *, down_after_ms: int, failover_timeout_ms: int) -> Node:
        port = free_port()
        conf = self.dir / f"sentinel{i}.conf"  # sentinels rewrite their file: one each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        node = Node(self.exe, [str(conf), "--sentinel"], port, self.dir / f"sentinel{i}.log")
        self.nodes.append(node)
        return node

    def _replica_synced(self) -> bool:
        with self.replica.conn() as c:
            info = c.info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_settled(self) -> bool:
        for s in self.sentinels:
            with s.conn() as c:
                state = c.sentinel_master(SERVICE)
            if state["num-other-sentinels"] < len(self.sentinels) - 1 or state["num-slaves"] < 1:
                return False
        return True

    @property
    def primary_url(self) -> str:
        return f"redis://127.0.0.1:{self.primary.port}/0"

    @property
    def replica_url(self) -> str:
        return f"redis://127.0.0.1:{self.replica.port}/0"

    def primary_addr(self) -> set[tuple[str, int]]:
        """What every live sentinel says the primary is (one entry when they agree)."""
        out: set[tuple[str, int]] = set()
        for s in self.sentinels:
            if s.proc.poll() is not None:
                continue
            with s.conn() as c:
                host, port = c.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
            out.add((host.decode(), int(port)))
        return out

    def wait_promoted(self, node: Node, timeout_s: float = 60) -> None:
        """Until every sentinel names ``node`` the primary and it serves writes as one."""

        def promoted() -> bool:
            with node.conn() as c:
                role = c.execute_command("ROLE")[0]
            return self.primary_addr() == {("127.0.0.1", node.port)} and role == b"master"

        _wait(f"promotion of the node on port {node.port}", promoted, timeout_s)

    def fail_primary(self, timeout_s: float = 60) -> float:
        """SIGKILL the primary; return once the replica is promoted (seconds it took)."""
        start = time.monotonic()
        self.primary.kill()
        self.wait_promoted(self.replica, timeout_s)
        self.primary, self.replica = self.replica, self.primary
        return time.monotonic() - start

    def revive(self, node: Node, timeout_s: float = 60, *, as_replica: bool = True) -> None:
        """Restart a killed data node (same port, empty). With ``as_replica`` (the default) the
        test makes it a replica of the current primary at once (REPLICAOF, what an operator
        would do) and returns once it is in sync: the test, not the sentinels' timing, decides
        when a returning old primary stops being one (the sentinels' own conversion waits 8 s
        at the least and took over 60 s under load).

        ``as_replica=False``: it comes back a primary and stays one: REPLICAOF and SLAVEOF are
        renamed away on it, so neither the sentinels nor anyone else can convert it (a stale
        primary, for tests of who writes to it)."""
        if node is self.primary:
            raise ValueError("revive: that node is the primary")
        if not as_replica:
            node.start(["--rename-command", "REPLICAOF", "", "--rename-command", "SLAVEOF", ""])
            return
        node.start()
        self.demote(node, timeout_s)

    def demote(self, node: Node, timeout_s: float = 60) -> None:
        """Make a live node (an old primary) a replica of the current primary now (REPLICAOF);
        return once it replicates, in sync."""
        with node.conn() as c:
            c.execute_command("REPLICAOF", "127.0.0.1", str(self.primary.port))

        def synced() -> bool:
            with node.conn() as c:
                info = c.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        _wait(f"node on port {node.port} back as a replica", synced, timeout_s)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
