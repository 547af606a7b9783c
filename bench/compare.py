#!/usr/bin/env python3
"""ICOW against what a user would otherwise run, in one go on one machine.

    python3 dev.py bench                 # 3 interleaved rounds, medians (about 10 minutes)
    python3 dev.py bench --rounds 1      # one round
    python3 dev.py bench --json out.json # also write every figure as JSON
    python3 dev.py bench --provider cuda # every onnxruntime session (direct, naive, ICOW) on CUDA

Compared, on the same models, built here with onnx.helper:
  * direct onnxruntime, in process (the floor);
  * raw Redis moving the same bytes between two processes (the transport's floor);
  * a naive Celery task per request: tensor as JSON lists, and as msgpack bytes;
  * ICOW: a real embedded Redis, a real `icow worker` process, the real client.
Models: an MLP (FP32 [N,256] -> 1024 -> 1024 -> [N,10]) and a ResNet-18-shaped CNN
(FP32 [N,3,224,224]). The figures are those the targets in ../shared/PRODUCT.md name; ratios
are taken within one run because this machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from icow.cli.fleet import LocalRedis, start_worker, stop_process  # noqa: E402
from icow.workers import samples  # noqa: E402

MLP_SIZES = (256, 1024, 1024, 10)
MB64 = 64 * 1024 * 1024
# --provider: the providers of every session (ICOW's config.toml names, then onnxruntime's names)
PROVIDERS = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def window(submit: Callable[[], Any], wait: Callable[[Any], Any], n: int, depth: int = 100) -> float:
    """Jobs/s with ``depth`` jobs in flight from one client thread."""
    t = time.perf_counter()
    q: deque[Any] = deque()
    sent = done = 0
    while done < n:
        while len(q) < depth and sent < n:
            q.append(submit())
            sent += 1
        wait(q.popleft())
        done += 1
    return n / (time.perf_counter() - t)


# ---------------------------------------------------------------------------- set-up


def build_repo(root: Path, provider: str = "cuda") -> Path:
    names = PROVIDERS[provider]
    samples.mlp(root / "mlp" / "1" / "model.onnx", MLP_SIZES)
    (root / "mlp" / "config.toml").write_text(f"max_batch = 32\nproviders = {names}\n")
    samples.mlp(root / "mlp2" / "1" / "model.onnx", MLP_SIZES, seed=1)  # another model's backlog
    (root / "mlp2" / "config.toml").write_text(f"max_batch = 32\nproviders = {names}\n")
    samples.resnet18(root / "cnn" / "1" / "model.onnx")
    (root / "cnn" / "config.toml").write_text(f"max_batch = 8\nproviders = {names}\n")
    samples.identity(root / "ident" / "1" / "model.onnx", rank=1)
    (root / "ident" / "config.toml").write_text("max_batch = 1\nproviders = ['cpu']\n")
    return root


ECHO = r"""
import sys, redis
r = redis.Redis.from_url(sys.argv[1], socket_timeout=None)
while True:
    got = r.brpop(["echo:req"], timeout=1)
    if got is None:
        continue
    _, m = got
    if m == b"stop":
        break
    if m.startswith(b"big:"):
        data = r.get("echo:in")
        r.set("echo:out", data)
        r.lpush("echo:resp", b"ok")
    else:
        r.lpush("echo:resp", m)
"""


class Bench:
    def __init__(self, workdir: Path, rounds: int, provider: str = "cuda"):
        self.rounds = rounds
        self.repo = build_repo(workdir / "repo", provider)
        ort_names = [ORT_NAMES[p] for p in PROVIDERS[provider]]
        self.redis = LocalRedis()
        self.url = self.redis.url
        self.r = redis.Redis.from_url(self.url)
        threads = str(os.cpu_count() or 1)
        self.icow = start_worker(self.repo, self.url, extra=["--threads", threads, "--name", "bench@local"], quiet=True)
        env = {
            **os.environ,
            "NAIVE_REDIS_URL": self.url,
            "NAIVE_MODELS": str(self.repo),
            "PYTHONPATH": str(ROOT / "bench"),
            "NAIVE_PROVIDERS": ",".join(ort_names),
        }
        self.naive = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "naive_celery",
                "worker",
                "-P",
                "solo",
                "-c",
                "1",
                "-Q",
                "naive",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.echo = subprocess.Popen([sys.executable, "-c", ECHO, self.url])
        os.environ["NAIVE_REDIS_URL"] = self.url
        os.environ["NAIVE_MODELS"] = str(self.repo)
        import naive_celery

        self.naive_app = naive_celery
        import onnxruntime as ort

        ort.set_default_logger_severity(4)
        self.direct = {
            m: ort.InferenceSession(str(self.repo / m / "1" / "model.onnx"), providers=ort_names)
            for m in ("mlp", "cnn")
        }
        from icow.client import Client

        self.client = Client(self.url)
        self._wait_ready()

    def _wait_ready(self) -> None:
        from icow.workers.heartbeat import live_workers

        deadline = time.monotonic() + 120
        while not any(w.get("ready") for w in live_workers(self.r)):
            assert time.monotonic() < deadline, "ICOW worker not ready"
            time.sleep(0.1)
        self.naive_app.infer_msgpack.delay("mlp", np.zeros((1, 256), np.float32).tobytes(), [1, 256]).get(timeout=120)

    def close(self) -> None:
        self.client.close()
        self.r.lpush("echo:req", b"stop")
        self.echo.wait(10)
        stop_process(self.icow)
        stop_process(self.naive)
        self.redis.stop()

    # ------------------------------------------------------------------------ one round

    def round(self, quick: bool) -> dict[str, float]:
        f: dict[str, float] = {}
        n = 300 if quick else 1000
        x1 = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
        x32 = np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32)
        img = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
        big = np.random.default_rng(3).standard_normal(MB64 // 4).astype(np.float32)
        mlp, cnn = self.direct["mlp"], self.direct["cnn"]
        c, r = self.client, self.r
        na = self.naive_app

        # direct onnxruntime
        f["direct.mlp.p50_ms"] = p50(timed(lambda: mlp.run(None, {"x": x1}), n)) * 1e3
        t = time.perf_counter()
        for _ in range(n):
            mlp.run(None, {"x": x1})
        f["direct.mlp.jobs_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n // 4):
            mlp.run(None, {"x": x32})
        f["direct.mlp.b32_samples_s"] = 32 * (n // 4) / (time.perf_counter() - t)
        cnn_n = 20 if quick else 60
        lat = timed(lambda: cnn.run(None, {"x": img}), cnn_n)
        f["direct.cnn.p50_ms"] = p50(lat) * 1e3
        f["direct.cnn.img_s"] = cnn_n / sum(lat)

        # raw Redis: the same bytes, one process to another and back
        payload = x1.tobytes()
        f["raw.1kb.p50_ms"] = p50(timed(lambda: (r.lpush("echo:req", payload), r.brpop(["echo:resp"])), n)) * 1e3
        raw64 = timed(
            lambda: (
                r.set("echo:in", big.tobytes()),
                r.lpush("echo:req", b"big:"),
                r.brpop(["echo:resp"]),
                r.get("echo:out"),
            ),
            3,
        )
        f["raw.64mb.s"] = p50(raw64)
        r.delete("echo:in", "echo:out")

        # naive Celery (one task per request; JSON lists or msgpack bytes)
        def naive_json(x: np.ndarray, model: str = "mlp") -> Any:
            return na.infer_json.delay(model, x.tolist())

        def naive_mp(x: np.ndarray, model: str = "mlp") -> Any:
            return na.infer_msgpack.delay(model, x.tobytes(), list(x.shape))

        nn = 100 if quick else 300
        f["naive_json.mlp.p50_ms"] = p50(timed(lambda: naive_json(x1).get(timeout=60), nn)) * 1e3
        f["naive_mp.mlp.p50_ms"] = p50(timed(lambda: naive_mp(x1).get(timeout=60), nn)) * 1e3
        f["naive_json.mlp.jobs_s"] = window(lambda: naive_json(x1), lambda a: a.get(timeout=60), nn)
        f["naive_mp.mlp.jobs_s"] = window(lambda: naive_mp(x1), lambda a: a.get(timeout=60), nn)
        cn = 10 if quick else 30
        f["naive_json.cnn.img_s"] = window(lambda: naive_json(img, "cnn"), lambda a: a.get(timeout=120), cn // 3 or 3)
        f["naive_mp.cnn.img_s"] = window(lambda: naive_mp(img, "cnn"), lambda a: a.get(timeout=120), cn)
        f["naive_mp.cnn.p50_ms"] = p50(timed(lambda: naive_mp(img, "cnn").get(timeout=60), cn)) * 1e3
        f["naive_mp.64mb.s"] = p50(
            timed(lambda: na.infer_msgpack.delay("ident", big.tobytes(), list(big.shape)).get(timeout=300), 2)
        )

        # ICOW
        idle = timed(lambda: c.infer("mlp", {"x": x1}), n)
        f["icow.mlp.p50_ms"] = p50(idle) * 1e3
        f["icow.mlp.p90_ms"] = p90(idle) * 1e3
        f["icow.mlp.mean_ms"] = statistics.fmean(idle) * 1e3
        f["icow.mlp.jobs_s"] = window(lambda: c.submit("mlp", {"x": x1}), lambda j: j.result(60), 3 * n)
        f["icow.mlp.jobs_s_async"] = asyncio.run(self._async_jobs_s(x1, 3 * n))
        bulk_n = 20_000 if quick else 100_000
        xs = np.random.default_rng(4).standard_normal((bulk_n, 256)).astype(np.float32)
        t = time.perf_counter()
        c.submit_bulk("mlp", {"x": xs}).result(timeout_s=600)  # the default chunking
        f["icow.mlp.bulk_samples_s"] = bulk_n / (time.perf_counter() - t)
        f["icow.cnn.img_s"] = window(
            lambda: c.submit("cnn", {"x": img}), lambda j: j.result(120), 40 if quick else 120, depth=32
        )
        f["icow.cnn.p50_ms"] = p50(timed(lambda: c.infer("cnn", {"x": img}), cn)) * 1e3
        f["icow.64mb.s"] = p50(timed(lambda: c.infer("ident", {"x": big}, timeout_s=300), 3))
        # interactive calls while a bulk backlog drains: of the same model, and of another one
        for name, bulk_model in (("same", "mlp"), ("other", "mlp2")):
            backlog = c.submit_bulk(bulk_model, {"x": xs[: min(bulk_n, 100_000)]})
            lat: list[float] = []
            done, total = backlog.progress()
            while len(lat) < 300 and done < total:
                lat += timed(lambda: c.infer("mlp", {"x": x1}), 20)
                done, total = backlog.progress()
            f[f"icow.backlog_{name}.p50_ms"] = p50(lat) * 1e3
            f[f"icow.backlog_{name}.p90_ms"] = p90(lat) * 1e3
            f[f"icow.backlog_{name}.mean_ms"] = statistics.fmean(lat) * 1e3
            f[f"icow.backlog_{name}.calls"] = len(lat)
            f[f"icow.backlog_{name}.left_jobs"] = total - done  # still queued when the measurement ended
            backlog.result(timeout_s=600)
        return f

    async def _async_jobs_s(self, x: np.ndarray, n: int) -> float:
        from icow.client import AsyncClient

        async with AsyncClient(self.url) as c:
            sem = asyncio.Semaphore(100)

            async def one() -> None:
                async with sem:
                    await c.infer("mlp", {"x": x})

            t = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            return n / (time.perf_counter() - t)


def import_time_ms() -> tuple[float, list[str]]:
    code = (
        "import time, sys; t = time.perf_counter(); import icow.client; d = time.perf_counter() - t; "
        "print(d * 1000); print(','.join(m for m in ('celery', 'kombu', 'onnxruntime') if m in sys.modules))"
    )
    times, heavy = [], []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(
            "\n"
        )
        times.append(float(out[0]))
        heavy = [m for m in out[1].split(",") if m]
    return p50(times), heavy


def targets(m: dict[str, float]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, reference, met) rows for PRODUCT.md's ICOW targets."""
    best_jobs = max(m["icow.mlp.jobs_s"], m["icow.mlp.jobs_s_async"])
    bulk_x = m["icow.mlp.bulk_samples_s"] / m["direct.mlp.b32_samples_s"]
    cnn_x = m["icow.cnn.img_s"] / m["direct.cnn.img_s"]
    naive_cnn = f"naive msgpack {m['naive_mp.cnn.img_s'] / m['direct.cnn.img_s']:.2f}x"
    rows = [
        (
            "MLP sync round trip p50 <= 1 ms",
            f"{m['icow.mlp.p50_ms']:.2f} ms",
            f"naive Celery {m['naive_mp.mlp.p50_ms']:.1f} ms, raw Redis {m['raw.1kb.p50_ms']:.2f} ms",
            m["icow.mlp.p50_ms"] <= 1.0,
        ),
        (
            "MLP jobs/s, 100 in flight >= 5,000",
            f"{best_jobs:,.0f}/s",
            f"naive Celery {m['naive_mp.mlp.jobs_s']:,.0f}/s (msgpack), {m['naive_json.mlp.jobs_s']:,.0f}/s (JSON)",
            best_jobs >= 5000,
        ),
        (
            "Bulk MLP samples >= 0.5x direct batch-32",
            f"{m['icow.mlp.bulk_samples_s']:,.0f}/s = {bulk_x:.2f}x",
            f"direct batch 32: {m['direct.mlp.b32_samples_s']:,.0f} samples/s",
            m["icow.mlp.bulk_samples_s"] >= 0.5 * m["direct.mlp.b32_samples_s"],
        ),
        (
            "CNN throughput >= 1.0x direct batch 1",
            f"{m['icow.cnn.img_s']:.1f} img/s = {cnn_x:.2f}x",
            f"direct {m['direct.cnn.img_s']:.1f} img/s; {naive_cnn},"
            f" JSON {m['naive_json.cnn.img_s'] / m['direct.cnn.img_s']:.2f}x",
            m["icow.cnn.img_s"] >= m["direct.cnn.img_s"],
        ),
        (
            "CNN sync overhead <= 2 ms over direct",
            f"+{m['icow.cnn.p50_ms'] - m['direct.cnn.p50_ms']:.1f} ms",
            f"naive msgpack +{m['naive_mp.cnn.p50_ms'] - m['direct.cnn.p50_ms']:.1f} ms",
            m["icow.cnn.p50_ms"] - m["direct.cnn.p50_ms"] <= 2.0,
        ),
        (
            "64 MB round trip <= 1.5x raw Redis",
            f"{m['icow.64mb.s']:.2f} s = {m['icow.64mb.s'] / m['raw.64mb.s']:.2f}x",
            f"raw Redis {m['raw.64mb.s']:.2f} s; naive msgpack {m['naive_mp.64mb.s'] / m['raw.64mb.s']:.1f}x",
            m["icow.64mb.s"] <= 1.5 * m["raw.64mb.s"],
        ),
        *[
            (
                f"Interactive p50 under a bulk backlog of {label} <= 2x idle",
                f"{m[f'icow.backlog_{k}.p50_ms']:.2f} ms = {m[f'icow.backlog_{k}.p50_ms'] / m['icow.mlp.p50_ms']:.2f}x"
                f" (p90 {m[f'icow.backlog_{k}.p90_ms']:.2f}, mean {m[f'icow.backlog_{k}.mean_ms']:.2f} ms)",
                f"idle p50 {m['icow.mlp.p50_ms']:.2f} ms (p90 {m['icow.mlp.p90_ms']:.2f}, mean "
                f"{m['icow.mlp.mean_ms']:.2f}); {m[f'icow.backlog_{k}.calls']:.0f} calls, "
                f"{m[f'icow.backlog_{k}.left_jobs']:.0f} bulk jobs still queued at the end",
                m[f"icow.backlog_{k}.p50_ms"] <= 2 * m["icow.mlp.p50_ms"],
            )
            for k, label in (("same", "the same model"), ("other", "another model"))
        ],
        (
            "Client import < 100 ms, no celery/onnxruntime",
            f"{m['client.import_ms']:.0f} ms",
            "heavy modules: " + (m.get("client.heavy") or "none"),  # type: ignore[operator]
            m["client.import_ms"] < 100 and not m.get("client.heavy"),
        ),
    ]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (for a smoke run)")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cuda",
        help="where every session runs: cuda (default: ICOW on CUDA where there is one, direct and naive on "
        "CUDA too), tensorrt, cpu",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="icow-bench-") as tmp:
        bench = Bench(Path(tmp), args.rounds, args.provider)
        try:
            rounds = []
            for i in range(args.rounds):
                print(f"round {i + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                rounds.append(bench.round(args.quick))
            providers = [
                w.get("providers") for w in __import__("icow.workers.heartbeat", fromlist=["x"]).live_workers(bench.r)
            ]
        finally:
            bench.close()
    m: dict[str, Any] = {k: p50([rd[k] for rd in rounds]) for k in rounds[0]}
    m["client.import_ms"], heavy = import_time_ms()
    m["client.heavy"] = ",".join(heavy)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(
        f"\nICOW comparison benchmark, {time.strftime('%Y-%m-%d')}, {machine}; medians of {args.rounds} "
        f"interleaved round(s); ICOW worker providers: {providers}\n"
    )
    print("| figure | direct onnxruntime | raw Redis | naive Celery JSON | naive Celery msgpack | ICOW |")
    print("|---|---|---|---|---|---|")
    print(
        f"| MLP p50 sync | {m['direct.mlp.p50_ms']:.3f} ms | {m['raw.1kb.p50_ms']:.2f} ms (1 KB there and back) | "
        f"{m['naive_json.mlp.p50_ms']:.2f} ms | {m['naive_mp.mlp.p50_ms']:.2f} ms | {m['icow.mlp.p50_ms']:.2f} ms |"
    )
    print(
        f"| MLP jobs/s, 100 in flight | {m['direct.mlp.jobs_s']:,.0f} (batch 1, serial) | | "
        f"{m['naive_json.mlp.jobs_s']:,.0f} | {m['naive_mp.mlp.jobs_s']:,.0f} | "
        f"{m['icow.mlp.jobs_s']:,.0f} (sync client), {m['icow.mlp.jobs_s_async']:,.0f} (asyncio client) |"
    )
    print(
        f"| MLP samples/s | {m['direct.mlp.b32_samples_s']:,.0f} (batch 32) | | | | "
        f"{m['icow.mlp.bulk_samples_s']:,.0f} (submit_bulk) |"
    )
    print(
        f"| CNN images/s | {m['direct.cnn.img_s']:.1f} (batch 1) | | {m['naive_json.cnn.img_s']:.1f} | "
        f"{m['naive_mp.cnn.img_s']:.1f} | {m['icow.cnn.img_s']:.1f} (32 in flight) |"
    )
    print(
        f"| CNN p50 sync | {m['direct.cnn.p50_ms']:.1f} ms | | | {m['naive_mp.cnn.p50_ms']:.1f} ms | "
        f"{m['icow.cnn.p50_ms']:.1f} ms |"
    )
    print(
        f"| 64 MB round trip | | {m['raw.64mb.s']:.2f} s | | {m['naive_mp.64mb.s']:.2f} s | {m['icow.64mb.s']:.2f} s |"
    )
    for k, label in (("same", "the same model"), ("other", "another model")):
        print(
            f"| MLP p50 / p90 under a 100k-sample backlog of {label} | | | | | "
            f"{m[f'icow.backlog_{k}.p50_ms']:.2f} / {m[f'icow.backlog_{k}.p90_ms']:.2f} ms |"
        )
    print("\n| ICOW target | measured | compared with | met |")
    print("|---|---|---|---|")
    met_all = True
    for name, measured, ref, met in targets(m):
        met_all &= met
        print(f"| {name} | {measured} | {ref} | {'yes' if met else 'NO'} |")
    if args.json:
        doc = {"machine": machine, "rounds": args.rounds, "provider": args.provider, "providers": providers}
        doc["figures"] = m
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
