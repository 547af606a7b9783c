#!/usr/bin/env python3
"""Triton's perf_analyzer against the ICOW gateway and against PyTriton, on the same MLP.

    python bench/gateway.py --pytriton-python VENV/bin/python --perf-analyzer PATH/perf_analyzer

VENV holds nvidia-pytriton and onnxruntime (PyTriton runs in its own venv: it pins its own
tritonclient and protobuf). perf_analyzer is the binary that the tritonclient 2.41 wheel for
Linux x86_64 installs (it needs libb64 (apt libb64-0d) and libcudart.so.12 on LD_LIBRARY_PATH,
e.g. from pip's nvidia-cuda-runtime-cu12); the PyPI name perf-analyzer is only a placeholder
on some indexes. PyTriton's Python backend stub loads the libpython3.11 it finds first: with a
pyenv Python put its lib/ on LD_LIBRARY_PATH too, or the stub mixes two patch releases.

Both servers run the same ONNX file (bench/compare.py's MLP, FP32 [N,256] ->
1024 -> 1024 -> [N,10]) with onnxruntime on the CPU, the same number of threads; ICOW with a
real Redis and one real worker process, PyTriton with its dynamic batcher. For each server,
protocol (HTTP, gRPC) and concurrency (1, 8, 32) perf_analyzer measures inferences/s and the
p50/p99 latency of batch-1 requests. One run, interleaved; this machine is shared, so ratios
within the run matter more than the absolute figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from icow.cli.fleet import LocalRedis, start_worker, stop_process  # noqa: E402
from icow.workers import samples  # noqa: E402

MLP_SIZES = (256, 1024, 1024, 10)

PYTRITON_SERVER = r"""
import sys
import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

model_path, http_port, grpc_port, metrics_port, threads = sys.argv[1], *map(int, sys.argv[2:6])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


@batch
def infer(x):
    return {"y": session.run(["y"], {"x": x})[0]}


config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
# perf_analyzer reads the statistics endpoint, which PyTriton restricts to a token by default
with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
    triton.bind(
        model_name="mlp",
        infer_func=infer,
        inputs=[Tensor(name="x", dtype=np.float32, shape=(256,))],
        outputs=[Tensor(name="y", dtype=np.float32, shape=(10,))],
        config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
        strict=True,
    )
    print("pytriton ready", flush=True)
    triton.serve()
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_line(proc: subprocess.Popen[str], marker: str, timeout_s: float = 180) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited ({proc.wait()}) before {marker!r}")
        if marker in line:
            return
    raise RuntimeError(f"no {marker!r} in {timeout_s} s")


def perf(binary: str, url: str, protocol: str, concurrency: int, shape: bool, interval_ms: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [binary, "-m", "mlp", "-u", url, "-i", protocol, "-b", "1"]
        cmd += ["--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms)]
        # stable: 3 windows within --stability-percentage of each other (this shared machine is noisy)
        cmd += ["--stability-percentage", "25", "--max-trials", "8", "-f", out.name]
        if shape:
            cmd += ["--shape", "x:1,256"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        [row] = list(csv.DictReader(open(out.name)))
    return {
        "inferences_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pytriton-python", help="python of a venv with nvidia-pytriton and onnxruntime")
    ap.add_argument("--perf-analyzer", default="perf_analyzer")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads of each server")
    ap.add_argument("--interval-ms", type=int, default=3000)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="icow-gw-bench-"))
    repo = work / "repo"
    samples.mlp(repo / "mlp" / "1" / "model.onnx", MLP_SIZES)
    (repo / "mlp" / "config.toml").write_text("max_batch = 32\nproviders = ['cpu']\n")
    procs: list[subprocess.Popen[Any]] = []
    redis_server = LocalRedis()
    results: dict[str, Any] = {"machine": os.uname().machine, "cpus": os.cpu_count(), "threads": args.threads}
    try:
        worker = start_worker(repo, redis_server.url, extra=["--threads", str(args.threads)], quiet=True)
        procs.append(worker)
        http_port, grpc_port = free_port(), free_port()
        gateway = subprocess.Popen(
            [
                *(sys.executable, "-m", "icow.cli", "gateway", "--redis", redis_server.url, "--host", "127.0.0.1"),
                *("--http-port", str(http_port), "--grpc-port", str(grpc_port)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        procs.append(gateway)
        wait_line(gateway, "icow gateway ready")
        servers = {"icow": (http_port, grpc_port, True)}
        if args.pytriton_python:
            ports = [free_port() for _ in range(3)]
            pyt = subprocess.Popen(
                [
                    *(args.pytriton_python, "-c", PYTRITON_SERVER, str(repo / "mlp" / "1" / "model.onnx")),
                    *(str(p) for p in ports),
                    str(args.threads),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(pyt)
            wait_line(pyt, "pytriton ready")
            servers["pytriton"] = (ports[0], ports[1], False)
        # readiness of the ICOW worker: the gateway answers an infer
        from icow.client import Client

        with Client(redis_server.url) as c:
            import numpy as np

            c.infer("mlp", {"x": np.zeros((1, 256), np.float32)}, timeout_s=120)
        for protocol in ("http", "grpc"):
            for level in levels:
                for name, (hp, gp, shape) in servers.items():  # interleaved: the same load on both in turn
                    port = hp if protocol == "http" else gp
                    got = perf(args.perf_analyzer, f"127.0.0.1:{port}", protocol, level, shape, args.interval_ms)
                    results.setdefault(name, {}).setdefault(protocol, {})[str(level)] = got
                    print(
                        f"{name:8s} {protocol:4s} c={level:2d}: {got['inferences_s']:8.0f} inf/s "
                        f"p50 {got['p50_ms']:7.2f} ms  p99 {got['p99_ms']:7.2f} ms",
                        flush=True,
                    )
    finally:
        for p in reversed(procs):
            stop_process(p)
        redis_server.stop()
    if "pytriton" in results:
        print("\nICOW gateway / PyTriton:")
        for protocol in ("http", "grpc"):
            for level in levels:
                a, b = results["icow"][protocol][str(level)], results["pytriton"][protocol][str(level)]
                print(
                    f"  {protocol:4s} c={level:2d}: throughput x{a['inferences_s'] / b['inferences_s']:.2f}, "
                    f"p50 x{a['p50_ms'] / b['p50_ms']:.2f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
