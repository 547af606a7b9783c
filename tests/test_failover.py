"""The primary Redis dies under load (SIGKILL) and Sentinel promotes the replica: workers and
clients carry on through the same ``redis+sentinel://`` URL, and with durable submits no
acknowledged job is lost.

Several client processes submit jobs, each with a distinct input, to two workers; once every
client has had jobs acknowledged, the primary is SIGKILLed. A submit that raises is not
acknowledged (the client goes on with its next job). Afterwards every acknowledged job is
awaited: answered (and correct: ``scale`` doubles its input), or lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from icow import connection
from icow.cli.fleet import start_worker, stop_process
from icow.workers import samples
from icow.workers.heartbeat import live_workers
from tests.sentinel import SentinelSet

CLIENTS = int(os.environ.get("ICOW_FAILOVER_CLIENTS", "3"))
JOBS_PER_CLIENT = int(os.environ.get("ICOW_FAILOVER_JOBS", "150"))

# One client process: submits JOBS jobs (input: its number), prints "started" once a third
# are acknowledged, writes {acked: [[id, n]], refused, not_durable: [[id, n]]} to OUT. A refused
# submit is retried as a new job after a short pause (what a caller does with BrokerUnavailable);
# a NotDurable one was queued: its job is kept to re-attach to, and the next number goes on.
CLIENT = r"""
import json, sys, time
import numpy as np
from icow.client import Client
from icow.errors import BrokerUnavailable, ModelNotFound, NotDurable

url, first, jobs, durable, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
acked, refused, not_durable = [], [], []
with Client(url, connect_timeout_s=1.0, timeout_s=3.0, **({"durable": True} if durable else {})) as c:
    for n in range(first, first + jobs):
        try:
            job = c.submit("scale", {"x": np.full((1, 2), n, np.float32)})
        except (BrokerUnavailable, ModelNotFound) as exc:
            refused.append([n, type(exc).__name__, str(exc)[:200]])
            if isinstance(exc, NotDurable):
                not_durable += [[j.id, n] for j in exc.jobs]
            time.sleep(0.05)
            continue
        acked.append([job.id, n])
        if len(acked) == jobs // 3:
            print("started", flush=True)
        time.sleep(0.005)
json.dump({"acked": acked, "refused": refused, "not_durable": not_durable}, open(out, "w"))
print("done", flush=True)
"""


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    s = SentinelSet()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def scale_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("failover-repo")
    samples.scale(root / "scale" / "1" / "model.onnx", 2.0)
    return root


def _wait_workers(url: str, names: set[str], procs: list[subprocess.Popen[bytes]], timeout_s: float = 90) -> None:
    r = connection.connect(url, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for p in procs:
                assert p.poll() is None, f"a worker exited with {p.returncode}"
            if names <= {w["name"] for w in live_workers(r) if w.get("ready")}:
                return
            time.sleep(0.1)
    finally:
        r.close()
    raise TimeoutError(f"workers {names} not ready")


def run_failover(s: SentinelSet, repo: Path, tmp: Path, *, durable: bool) -> dict[str, Any]:
    """Clients x 2 workers, SIGKILL of the primary mid-load; counts of what happened."""
    names = {f"failover-{i}-{os.getpid()}@local" for i in range(2)}
    quiet = not os.environ.get("ICOW_TEST_VERBOSE")
    workers = [
        start_worker(repo, s.url, quiet=quiet, extra=["--name", n, "--threads", "1", "--lease", "4"]) for n in names
    ]
    clients: list[subprocess.Popen[str]] = []
    try:
        _wait_workers(s.url, names, workers)
        for i in range(CLIENTS):
            args = [s.url, str(i * JOBS_PER_CLIENT), str(JOBS_PER_CLIENT), "1" if durable else "0"]
            clients.append(
                subprocess.Popen(
                    [sys.executable, "-c", CLIENT, *args, str(tmp / f"client{i}.json")],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for c in clients:  # every client has jobs acknowledged before the primary dies
            assert c.stdout is not None and c.stdout.readline().strip() == "started"
        promoted_s = s.fail_primary()
        revived_s = time.monotonic()
        s.revive(s.replica)  # the crashed node returns, as a replica of the new primary
        revived_s = time.monotonic() - revived_s
        for c in clients:
            assert c.wait(180) == 0
            assert c.stdout is not None
            c.stdout.close()
        acked: dict[str, int] = {}
        refused: list[Any] = []
        not_durable: dict[str, int] = {}
        for i in range(CLIENTS):
            report = json.loads((tmp / f"client{i}.json").read_text())
            acked.update({job_id: n for job_id, n in report["acked"]})
            refused += report["refused"]
            not_durable.update({job_id: n for job_id, n in report["not_durable"]})
        answered, wrong, lost = _collect(s.url, acked, timeout_s=30)
        # Jobs a NotDurable named: queued, so re-attached (they may also be lost with the primary).
        nd_answered, nd_wrong, _ = _collect(s.url, not_durable, timeout_s=10)
        where = _whereabouts(s.url, lost)
        alive = [w.poll() is None for w in workers]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
            if c.stdout is not None and not c.stdout.closed:
                c.stdout.close()
        for w in workers:
            stop_process(w)
    return {
        "durable": durable,
        "clients": CLIENTS,
        "submitted": CLIENTS * JOBS_PER_CLIENT,
        "acknowledged": len(acked),
        "refused": len(refused),
        "refused_why": dict(Counter(f"{kind}: {message[:70]}" for _, kind, message in refused).most_common(4)),
        "answered": answered,
        "wrong": wrong + nd_wrong,
        "not_durable": len(not_durable),
        "not_durable_answered": nd_answered,
        "lost": lost,
        "lost_where": where,
        "promotion_s": round(promoted_s, 2),
        "replica_back_s": round(revived_s, 2),
        "workers_alive": alive,
    }


def _collect(url: str, acked: dict[str, int], timeout_s: float) -> tuple[int, int, list[str]]:
    """Wait for every acknowledged job: (answered correctly, answered wrongly, ids lost)."""
    from icow.client import Client
    from icow.errors import IcowError

    answered = wrong = 0
    lost: list[str] = []
    deadline = time.monotonic() + timeout_s
    with Client(url, connect_timeout_s=1.0) as c:
        for job_id, n in acked.items():
            try:
                y = c.job(job_id).result(timeout_s=max(0.5, deadline - time.monotonic()))["y"]
            except IcowError:
                lost.append(job_id)
                continue
            if np.array_equal(y, np.full((1, 2), 2 * n, np.float32)):
                answered += 1
            else:
                wrong += 1
    return answered, wrong, lost


def _whereabouts(url: str, lost: list[str]) -> dict[str, str]:
    """Where each lost job is on the new primary: a queue, a worker's in-flight list, its state."""
    from icow import keys

    r = connection.connect(url, socket_connect_timeout=1)
    try:
        lists = {k.decode(): r.lrange(k, 0, -1) for k in r.scan_iter(match=f"{keys.PREFIX}*", _type="list")}
        out = {}
        for job_id in lost:
            holders = [name for name, items in lists.items() if any(job_id.encode() in m for m in items)]
            state = r.get(keys.state(job_id))
            out[job_id] = f"lists={holders} state={state!r} result={bool(r.exists(keys.result(job_id)))}"
        return out
    finally:
        r.close()


def _report(stats: dict[str, Any], tmp: Path) -> None:
    line = json.dumps({k: v for k, v in stats.items() if k != "lost"} | {"lost": len(stats["lost"])}, default=str)
    print(f"\nfailover: {line}")
    out = os.environ.get("ICOW_FAILOVER_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def test_failover_with_durable_submits_loses_no_acknowledged_job(
    sentinel_set: SentinelSet, scale_repo: Path, tmp_path: Path
) -> None:
    from icow.client import _core

    if "durable" not in getattr(getattr(_core, "Options", None), "__dataclass_fields__", {}):
        pytest.skip("the client has no durable option yet (pending the client rewrite)")
    stats = run_failover(sentinel_set, scale_repo, tmp_path, durable=True)
    _report(stats, tmp_path)
    assert stats["acknowledged"] > 0 and all(stats["workers_alive"])
    assert stats["wrong"] == 0
    # Every acknowledged job survived the primary's death: answered, or still in Redis.
    assert all("icow:run:" in where for where in stats["lost_where"].values()), stats["lost_where"]
    if stats["lost"]:
        # Known gap of the worker intake: a take replicated before the primary died, its answer
        # not; the message sits in the in-flight list of a live worker, which renews its lease
        # and no longer holds the message, so nothing puts it back (docs/RELIABILITY.md §6).
        pytest.xfail(f"{len(stats['lost'])} job(s) stranded in a live worker's in-flight list")
    assert stats["answered"] == stats["acknowledged"]


def test_failover_without_durable_submits_reports_what_is_lost(
    sentinel_set: SentinelSet, scale_repo: Path, tmp_path: Path
) -> None:
    """No assertion on the count lost: asynchronous replication may drop the last writes
    acknowledged by the dead primary. The figures go to README and docs/RELIABILITY.md."""
    stats = run_failover(sentinel_set, scale_repo, tmp_path, durable=False)
    _report(stats, tmp_path)
    assert stats["acknowledged"] > 0 and all(stats["workers_alive"])
    assert stats["wrong"] == 0
    assert stats["answered"] + len(stats["lost"]) == stats["acknowledged"]
