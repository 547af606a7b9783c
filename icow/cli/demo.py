"""`icow demo` (a whole round trip on a fresh machine) and `icow up` (a local fleet)."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

from icow import ort_build


def cmd_demo(args: argparse.Namespace) -> int:
    from icow.cli.fleet import LocalFleet
    from icow.client import Client
    from icow.errors import InvalidInput, InvalidJob
    from icow.workers import samples
    from icow.workers.heartbeat import live_workers

    url = args.redis or args.settings.redis_url
    ok = True
    with tempfile.TemporaryDirectory(prefix="icow-demo-") as tmp:
        repo = samples.sample_repository(Path(tmp) / "repo")
        print(f"sample model repository: {repo} (mlp v1, scale v1 and v2)")
        if getattr(args, "providers", None):
            names = [p.strip() for p in args.providers.split(",") if p.strip()]
            if not names or set(names) - {"cuda", "tensorrt", "cpu"}:
                raise InvalidInput(f"--providers: a list of cuda, tensorrt, cpu; got {args.providers!r}")
            for model in ("mlp", "scale"):
                (repo / model / "config.toml").write_text(f"providers = {names}\n")
            print(f"providers requested: {', '.join(names)}")
        t0 = time.perf_counter()
        # a throwaway folder, but with the append-only file on, as `icow up` runs it
        with LocalFleet(repo, url, workers=1, persist=True) as fleet:
            where = "embedded valkey-server (AOF on)" if fleet.embedded else "configured Redis"
            print(f"fleet up in {time.perf_counter() - t0:.1f} s: 1 worker, {where} at {fleet.url}")
            with Client(fleet.url) as client:
                import redis

                r = redis.Redis.from_url(fleet.url)
                builds = ort_build.installed()
                print(f"onnxruntime build: {ort_build.describe(builds)}")
                for w in live_workers(r):
                    running = sorted(set((w.get("providers") or {}).values()))
                    print(f"worker {w['name']}: execution provider really running: {', '.join(running)}")
                    if w.get("cpu_fallback"):
                        why = (
                            "this onnxruntime is the CPU-only build"
                            if set(builds) == {ort_build.CPU_DIST}
                            else "no usable GPU here"
                        )
                        print(
                            f"  (CUDA was requested for {', '.join(w['cpu_fallback'])}; {why}, "
                            "so onnxruntime fell back to the CPU)"
                        )
                r.close()
                print(f"models: {client.models()}")
                info = client.model("mlp")
                print(
                    f"mlp v{info.version}: inputs {[(t.name, t.datatype, t.shape) for t in info.inputs]}"
                    f" outputs {[(t.name, t.datatype, t.shape) for t in info.outputs]}"
                )

                x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
                t = time.perf_counter()
                y = client.infer("mlp", {"x": x}, timeout_s=30)["y"]
                match = bool(np.allclose(y, samples.mlp_reference(x), atol=1e-5))
                ok &= match
                print(
                    f"1) wait: infer('mlp') -> y {y.dtype} {list(y.shape)} in "
                    f"{(time.perf_counter() - t) * 1000:.1f} ms, matches numpy: {match}"
                )
                print(y)

                batch = [{"x": np.full((1, 2), i, dtype=np.float32)} for i in range(5)]
                jobs = client.submit_many("scale", batch)
                print(f"2) fire-and-forget: submitted {len(jobs)} jobs, ids {[j.id[:8] for j in jobs]}...")
                ids = [j.id for j in jobs]
                with Client(fleet.url) as other:  # collect by id, as another process would
                    got = [float(other.job(i).result(timeout_s=30)["y"][0, 0]) for i in ids]
                want = [3.0 * i for i in range(5)]
                match = got == want
                ok &= match
                print(f"   collected by id: {got} (latest version, x*3) correct: {match}")

                v1 = client.infer("scale", {"x": np.ones((1, 2), np.float32)}, version=1)["y"]
                ok &= bool((v1 == 2).all())
                print(f"3) pinned version: scale v1 -> {v1.tolist()}")

                try:
                    client.infer("mlp", {"x": np.ones((1, 5), np.float32)}, timeout_s=30)
                    ok = False
                except InvalidJob as exc:
                    print(f"4) a bad job gets a typed failure: {type(exc).__name__}: {exc.message}")
        print("fleet shut down")
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    from icow.cli.fleet import LocalFleet
    from icow.workers import samples

    url = args.redis or args.settings.redis_url
    data_dir = None if args.ephemeral else Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="icow-up-") as tmp:
        repo = args.repo or str(samples.sample_repository(Path(tmp) / "repo"))
        fleet = LocalFleet(
            repo, url, workers=args.workers, quiet=False, port=args.port, persist=not args.ephemeral, data_dir=data_dir
        )
        with fleet:
            print(f"ICOW fleet up: {args.workers} worker(s) serving {repo}")
            if fleet.embedded is not None:
                kept = "nothing kept (--ephemeral)" if data_dir is None else f"append-only file in {fleet.embedded.dir}"
                print(f"embedded Redis: {kept}")
            print(f"ICOW_REDIS_URL={fleet.url}")
            print("Press Ctrl-C to stop.", flush=True)
            stop = False

            def _stop(*_: object) -> None:
                nonlocal stop
                stop = True

            signal.signal(signal.SIGTERM, _stop)
            try:
                while not stop:
                    if any(p.poll() is not None for p in fleet.procs):
                        print("a worker exited; shutting down")
                        return 1
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    return 0
