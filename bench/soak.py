#!/usr/bin/env python3
"""Soak: N jobs from several client processes to two workers while one worker is SIGKILLed and
restarted a few times; then every job must have exactly one correct result and none may be lost.

    .venv/bin/python bench/soak.py --jobs 5000 --clients 4 --kills 5 --lease 4
    .venv/bin/python bench/soak.py --jobs 300 --json      # what tests/test_soak.py runs

The model (``scale``: y = 2x after ``--work`` matmuls, about 40 ms a job) gets a distinct x per
job, so a result given to the wrong job shows.
Reports N, kills survived, redelivered jobs (``icow:tries:<id>`` > 1: claimed again after a
worker died holding them), duplicate runs (a worker ran a job whose result already existed;
its result was dropped, counted from the workers' logs), wrong or failed results, and lost jobs
(must be 0). tests/test_chaos.py kills at random instants, 200 times.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

from icow import keys, result
from icow.cli.fleet import LocalRedis
from icow.client import Client, _core
from icow.result import failure_of, parse_meta
from icow.workers import samples
from icow.workers.heartbeat import live_workers

DUPLICATE_LOG = "already had a result"


@dataclass
class Report:
    jobs: int
    clients: int
    kills: int
    lease_s: int
    submitted: int = 0
    succeeded: int = 0
    wrong: int = 0
    failed: int = 0
    lost: int = 0
    redelivered: int = 0
    duplicate_runs: int = 0
    max_latency_s: float = 0.0
    elapsed_s: float = 0.0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.submitted == self.jobs and self.succeeded == self.jobs and not (self.lost or self.wrong)


def busy_model(path: Path, matmuls: int) -> Path:
    """FP32 ``x`` [N, 2] -> ``y`` = 2x, after ``matmuls`` [N, 1024] x [1024, 1024] products that
    depend on x (so onnxruntime cannot fold them away): a model that takes a while per job."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.eye(1024, dtype=np.float32), "eye"),
        numpy_helper.from_array(np.array([1, 512], dtype=np.int64), "reps"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [helper.make_node("Tile", ["x", "reps"], ["h0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"h{matmuls}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "busy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", samples.OPSET)], producer_name="icow")
    model.ir_version = 8
    return samples._save(model, path)


def client_main(url: str, first: int, count: int, duration_s: float, out: str) -> None:
    """One client process: submit jobs first..first+count-1 evenly over ``duration_s``."""
    chunk = 10
    sent: list[tuple[str, int, float]] = []
    t0 = time.monotonic()
    with Client(url) as c:
        for start in range(first, first + count, chunk):
            xs = list(range(start, min(start + chunk, first + count)))
            now = time.time()
            jobs = c.submit_many("scale", [{"x": np.full((1, 2), x, np.float32)} for x in xs])
            sent += [(j.id, x, now) for j, x in zip(jobs, xs)]
            target = t0 + duration_s * (start + chunk - first) / count
            time.sleep(max(0.0, target - time.monotonic()))
    Path(out).write_text(json.dumps(sent))


class Workers:
    def __init__(self, repo: Path, url: str, lease_s: int, logs: Path):
        self.repo, self.url, self.lease_s, self.logs = repo, url, lease_s, logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def start(self, slot: int) -> None:
        self.starts += 1
        log = (self.logs / f"worker{slot}-{self.starts}.log").open("wb")
        args = [sys.executable, "-m", "icow.cli", "worker", "--repo", str(self.repo), "--redis", self.url]
        args += ["--name", f"soak{slot}-{self.starts}@local", "--threads", "1", "--loglevel", "WARNING"]
        args += ["--lease", str(self.lease_s)]
        self.procs[slot] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready(f"soak{slot}-{self.starts}@local")

    def _wait_ready(self, name: str, timeout_s: float = 120) -> None:
        r = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if any(w["name"] == name and w.get("ready") for w in live_workers(r)):
                    return
                time.sleep(0.05)
        finally:
            r.close()
        raise TimeoutError(f"worker {name} not ready")

    def kill(self, slot: int) -> None:
        p = self.procs[slot]
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def duplicate_runs(self) -> int:
        return sum(f.read_text(errors="replace").count(DUPLICATE_LOG) for f in self.logs.glob("worker*.log"))


def collect(url: str, sent: list[tuple[str, int, float]], report: Report, timeout_s: float) -> None:
    r = redis.Redis.from_url(url)
    metas: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(metas) < len(sent):
        missing = [job_id for job_id, _, _ in sent if job_id not in metas]
        for i in range(0, len(missing), 1000):
            part = missing[i : i + 1000]
            for job_id, data in zip(part, r.mget([keys.result(j) for j in part])):
                if data is not None:
                    metas[job_id] = parse_meta(data)
        if len(metas) < len(sent):
            time.sleep(0.25)
    ids = [job_id for job_id, _, _ in sent]
    report.redelivered = sum(
        sum(1 for t in r.mget([keys.tries(j) for j in ids[i : i + 1000]]) if t is not None and int(t) > 1)
        for i in range(0, len(ids), 1000)
    )
    lost = [job_id for job_id in ids if job_id not in metas]
    report.examples += [where(r, job_id) for job_id in lost[:5]]
    r.close()
    with Client(url) as c:
        for job_id, x, submitted_at in sent:
            meta = metas.get(job_id)
            if meta is None:
                report.lost += 1
                report.examples.append(f"lost {job_id} (x={x})")
                continue
            done = datetime.fromisoformat(meta["date_done"]).timestamp()
            report.max_latency_s = max(report.max_latency_s, done - submitted_at)
            if meta["status"] != "SUCCESS":
                report.failed += 1
                report.examples.append(f"failed {job_id}: {failure_of(meta)}")
                continue
            answer = result.of(meta)
            refs = _core.output_refs(answer)  # outputs stored under their own keys, if any
            y = _core.decode_result(answer, dict(zip(refs, c._r.mget(refs))) if refs else {})["y"]
            if y.shape == (1, 2) and float(y[0, 0]) == float(y[0, 1]) == 2.0 * x:
                report.succeeded += 1
            else:
                report.wrong += 1
                report.examples.append(f"wrong {job_id}: x={x} y={y.tolist()}")
    report.examples = report.examples[:10]


def where(r: redis.Redis, job_id: str) -> str:
    """Where a lost job's message is: a queue list, a worker's in-flight list, or nowhere."""
    found = []
    for q in keys.queue_lists(keys.queue("scale")):
        if any(job_id.encode() in m for m in r.lrange(q, 0, -1)):
            found.append(f"queued in {q!r}")
    for runs in r.scan_iter(match=keys.runs("*")):
        for run in r.hkeys(runs):
            if any(job_id.encode() in m for m in r.lrange(run, 0, -1)):
                found.append(f"in flight in {run.decode()!r}")
    state, tries = r.get(keys.state(job_id)), r.get(keys.tries(job_id))
    return f"where is {job_id}: state={state!r} tries={tries!r} " + (", ".join(found) or "message nowhere")


def soak(
    jobs: int, clients: int, kills: int, lease_s: int, kill_every_s: float, timeout_s: float, work: int = 1000
) -> Report:
    report = Report(jobs=jobs, clients=clients, kills=kills, lease_s=lease_s)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="icow-soak-") as tmp:
        root = Path(tmp)
        busy_model(root / "repo" / "scale" / "1" / "model.onnx", work)
        (root / "logs").mkdir()
        server = LocalRedis()
        workers = Workers(root / "repo", server.url, lease_s, root / "logs")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            workers.start(0)
            workers.start(1)
            duration = max(2.0, kills * (kill_every_s + 1.5) + 1.0)  # a restart takes about 1.5 s
            per = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
            first = 0
            for i, count in enumerate(per):
                out = root / f"client{i}.json"
                args = [sys.executable, __file__, "client", server.url, str(first), str(count), str(duration), str(out)]
                procs.append(subprocess.Popen(args))
                first += count
            for _ in range(kills):
                time.sleep(kill_every_s)  # after its restart, worker 0 takes its share of jobs
                workers.kill(0)  # SIGKILL: whatever it holds is in flight
                workers.start(0)
            for p in procs:
                if p.wait() != 0:
                    raise RuntimeError(f"a client process failed with {p.returncode}")
            sent: list[tuple[str, int, float]] = []
            for i in range(clients):
                sent += [tuple(s) for s in json.loads((root / f"client{i}.json").read_text())]  # type: ignore[misc]
            report.submitted = len(sent)
            collect(server.url, sent, report, timeout_s)
            report.duplicate_runs = workers.duplicate_runs()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            workers.stop()
            server.stop()
    report.elapsed_s = round(time.monotonic() - t0, 1)
    report.max_latency_s = round(report.max_latency_s, 2)
    return report


def main(argv: list[str]) -> int:
    if argv[:1] == ["client"]:
        url, first, count, duration, out = argv[1:6]
        client_main(url, int(first), int(count), float(duration), out)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=int(os.environ.get("ICOW_SOAK_JOBS", "2000")))
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--kill-every", type=float, default=2.0, help="seconds between SIGKILLs")
    p.add_argument("--lease", type=int, default=int(os.environ.get("ICOW_SOAK_LEASE_S", "4")))
    p.add_argument("--timeout", type=float, default=float(os.environ.get("ICOW_SOAK_TIMEOUT_S", "180")))
    p.add_argument("--work", type=int, default=1000, help="matmuls per job (1000: about 40 ms on one core)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = p.parse_args(argv)
    report = soak(args.jobs, args.clients, args.kills, args.lease, args.kill_every, args.timeout, args.work)
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}))
    else:
        print(
            f"jobs {report.jobs} from {report.clients} clients, {report.kills} SIGKILLs survived "
            f"(lease {report.lease_s} s): {report.succeeded} correct, {report.lost} lost, {report.wrong} wrong, "
            f"{report.failed} failed; {report.redelivered} redelivered, {report.duplicate_runs} duplicate runs "
            f"(results written once); max latency {report.max_latency_s} s; {report.elapsed_s} s in all"
        )
        for e in report.examples:
            print("  " + e)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
