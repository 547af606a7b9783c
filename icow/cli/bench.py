"""`icow bench`: measure a deployment, like Triton's perf_analyzer, for any served model.

    icow bench MODEL [--concurrency 1,8,32,100] [--duration 5] [--batch 1] [--json]
    icow bench MODEL --mode bulk [--samples 100000] [--samples-per-job 256]

Inputs are random tensors built from the model's published metadata (dynamic dimensions
become ``--batch`` for the first and 1 for the others). Sync mode runs ``c`` concurrent callers
(asyncio client) for ``--duration`` seconds at each concurrency and reports throughput and
p50/p90/p99 latency; bulk mode times one bulk submission end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import numpy as np

from icow import tensor
from icow.errors import IcowError, InvalidInput


def random_inputs(info: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for spec in info.inputs:
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
        if spec.datatype == tensor.BYTES:
            out[spec.name] = np.full(shape, "icow", dtype=object)
        elif spec.datatype == "BOOL":
            out[spec.name] = rng.random(shape) > 0.5
        else:
            dtype = tensor.DATATYPES[spec.datatype]
            if dtype.kind == "f":
                out[spec.name] = rng.standard_normal(shape).astype(dtype)
            else:
                out[spec.name] = rng.integers(0, 8, size=shape).astype(dtype)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def sweep_one(url: str, model: str, inputs: dict[str, np.ndarray], c: int, duration_s: float) -> dict[str, Any]:
    from icow.client import AsyncClient

    lat: list[float] = []
    errors = 0
    async with AsyncClient(url) as client:
        await client.infer(model, inputs, timeout_s=60)  # warm
        end = time.perf_counter() + duration_s

        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    await client.infer(model, inputs, timeout_s=60)
                    lat.append(time.perf_counter() - t)
                except IcowError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(c)))
        elapsed = time.perf_counter() - t0
    return {
        "concurrency": c,
        "jobs": len(lat),
        "errors": errors,
        "jobs_per_s": len(lat) / elapsed,
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p90_ms": pct(lat, 0.9) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "mean_ms": (statistics.fmean(lat) * 1e3) if lat else float("nan"),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    from icow.client import Client

    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    rng = np.random.default_rng(0)
    with Client(url) as client:
        info = client.model(args.model, args.version)
        if args.mode == "bulk":
            one = random_inputs(info, 1, rng)
            data = {k: np.repeat(v, args.samples, axis=0) for k, v in one.items()}
            t = time.perf_counter()
            bulk = client.submit_bulk(args.model, data, samples_per_job=args.samples_per_job, version=args.version)
            submitted = time.perf_counter() - t
            bulk.result(timeout_s=3600)
            elapsed = time.perf_counter() - t
            rows = [
                {
                    "mode": "bulk",
                    "samples": args.samples,
                    "jobs": len(bulk.jobs),
                    "submit_s": submitted,
                    "total_s": elapsed,
                    "samples_per_s": args.samples / elapsed,
                }
            ]
        else:
            try:
                levels = [int(c) for c in args.concurrency.split(",")]
            except ValueError:
                raise InvalidInput("--concurrency takes integers, e.g. 1,8,32") from None
            inputs = random_inputs(info, args.batch, rng)
            rows = [asyncio.run(sweep_one(url, args.model, inputs, c, args.duration)) for c in levels]
    if args.json:
        print(json.dumps({"model": info.name, "version": info.version, "mode": args.mode, "results": rows}, indent=2))
        return 0
    print(f"{info.name} v{info.version}, mode {args.mode}")
    if args.mode == "bulk":
        r = rows[0]
        print(
            f"{r['samples']} samples in {r['jobs']} jobs: submitted in {r['submit_s']:.2f} s, "
            f"done in {r['total_s']:.2f} s = {r['samples_per_s']:,.0f} samples/s"
        )
        return 0
    print(f"{'concurrency':>11} {'jobs/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['jobs_per_s']:>10,.0f} {r['p50_ms']:>9.2f} {r['p90_ms']:>9.2f} "
            f"{r['p99_ms']:>9.2f} {r['errors']:>7}"
        )
    return 0


def add_command(sub: Any) -> None:
    b = sub.add_parser("bench", help="measure throughput and latency of a served model (like perf_analyzer)")
    b.add_argument("model")
    b.add_argument("--version", type=int)
    b.add_argument("--mode", choices=["sync", "bulk"], default="sync")
    b.add_argument("--concurrency", default="1,8,32,100", help="comma-separated levels (sync mode)")
    b.add_argument("--duration", type=float, default=5.0, help="seconds per level (sync mode)")
    b.add_argument("--batch", type=int, default=1, help="samples per job (sync mode)")
    b.add_argument("--samples", type=int, default=100_000, help="samples (bulk mode)")
    b.add_argument("--samples-per-job", type=int, default=256)
    b.add_argument("--json", action="store_true")
    b.add_argument("--redis")
    b.set_defaults(func=cmd_bench)
