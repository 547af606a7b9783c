"""Operating commands: `icow health` (also `icow worker --check`), `icow exporter`, and
`icow models push` (add a model version to a repository, served without restarts)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from icow import connection, keys
from icow.errors import BrokerUnavailable, IcowError, InvalidInput


def _url(args: argparse.Namespace) -> str:
    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    return str(url)


def check_worker(r: Any, name: str | None = None, host: str | None = None) -> tuple[bool, str]:
    """(healthy, reason) of the worker called ``name``, or of every worker on ``host``.

    Alive: its heartbeat key exists (it expires ``ttl_s`` after the last beat). Ready: its
    preloaded models are warm and its Celery consumer has started.
    """
    from icow.workers.heartbeat import live_workers

    workers = live_workers(r)
    if name:
        mine = [w for w in workers if w.get("name") == name]
        who = f"worker {name}"
    else:
        host = host or socket.gethostname()
        mine = [w for w in workers if w.get("host") == host]
        who = f"workers on host {host}"
    if not mine:
        return False, f"{who}: no live heartbeat"
    starting = [str(w.get("name")) for w in mine if not w.get("ready")]
    if starting:
        return False, f"{who}: alive but not ready yet (loading models): {', '.join(starting)}"
    return True, f"{who}: ready ({', '.join(str(w.get('name')) for w in mine)})"


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the worker is alive and ready, 1 when not (for container healthchecks)."""
    import redis

    url = _url(args)
    r = connection.connect(
        url, socket_connect_timeout=3, socket_timeout=5, **connection.tls_options(url, args.settings)
    )
    try:
        ok, reason = check_worker(r, args.worker, args.host)
    except redis.exceptions.RedisError as exc:
        raise BrokerUnavailable(f"health check: Redis unreachable: {exc}") from exc
    finally:
        r.close()
    if not args.quiet:
        print(("ok: " if ok else "unhealthy: ") + reason)
    return 0 if ok else 1


def cmd_exporter(args: argparse.Namespace) -> int:
    import logging

    from icow.workers.exporter import run_exporter

    logging.getLogger("icow").setLevel(logging.INFO)
    return run_exporter(_url(args), args.port, args.addr, s=args.settings)


def _check_push(file: str | Path, name: str) -> Path:
    """The file to push, once it is a valid ONNX model and the name a valid model name."""
    keys.check_model_name(name)
    src = Path(file)
    if not src.is_file():
        raise InvalidInput(f"{src} is not a file")
    import onnx

    try:
        onnx.checker.check_model(str(src))
    except Exception as exc:
        raise InvalidInput(f"{src} is not a valid ONNX model: {exc}") from exc
    return src


def push_model(file: str | Path, repo: str | Path, name: str, version: int | None = None) -> Path:
    """Copy an ONNX file into ``<repo>/<name>/<version>/model.onnx`` atomically (workers that
    rescan never see a half-written file), with its ``manifest.json`` (so the folder can be
    copied to an S3 repository as it is); version defaults to the latest + 1."""
    from icow.workers.store import MANIFEST_FILE, MODEL_FILE, VERSION_RE, Manifest

    src = _check_push(file, name)
    root = Path(repo)
    if not root.is_dir():
        raise InvalidInput(f"model repository {root} is not a folder")
    model_dir = root / name
    model_dir.mkdir(exist_ok=True)
    if version is None:
        present = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        version = max(present, default=0) + 1
    if version < 1:
        raise InvalidInput("version must be a positive integer")
    final = model_dir / str(version)
    if final.exists():
        raise InvalidInput(f"{final} exists: versions are immutable, push a new version number")
    staging = Path(tempfile.mkdtemp(prefix=".push-", dir=model_dir))  # not a digit: never scanned
    try:
        shutil.copyfile(src, staging / MODEL_FILE)
        (staging / MANIFEST_FILE).write_bytes(Manifest.of_file(staging / MODEL_FILE).to_bytes())
        os.rename(staging, final)  # atomic on one filesystem
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final / MODEL_FILE


def push_model_s3(
    file: str | Path, repo: str, name: str, version: int | None = None, *, cache_dir: str | None = None
) -> str:
    """Upload an ONNX file as a new version of an ``s3://bucket/prefix`` repository (model
    first, its manifest last; see workers/s3store.py). Returns the object's URL."""
    from icow.workers.s3store import S3Store

    src = _check_push(file, name)
    return S3Store(repo, cache_dir=cache_dir).push(src, name, version)


def cmd_models_push(args: argparse.Namespace) -> int:
    from icow.workers.store import is_s3_url

    repo = args.repo or args.settings.repo
    if not repo:
        raise IcowError("give --repo DIR or s3://bucket/prefix (or set ICOW_REPO)")
    if is_s3_url(repo):
        where: str | Path = push_model_s3(args.file, repo, args.name, args.version, cache_dir=args.settings.cache_dir)
    else:
        where = push_model(args.file, repo, args.name, args.version)
    print(f"pushed {where}; workers serving {repo} pick it up at their next rescan")
    return 0


def add_commands(sub: Any) -> None:
    h = sub.add_parser("health", help="exit 0 if a worker is alive and ready (container healthchecks)")
    h.add_argument("--worker", help="worker name (default: the workers on this host)")
    h.add_argument("--host", help="check the workers of this host (default: this host)")
    h.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL)")
    h.add_argument("--quiet", "-q", action="store_true")
    h.set_defaults(func=cmd_health)

    e = sub.add_parser("exporter", help="serve fleet-wide Prometheus metrics (queue depth, oldest job age)")
    e.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL)")
    e.add_argument("--port", type=int, default=9808)
    e.add_argument("--addr", default="0.0.0.0")
    e.set_defaults(func=cmd_exporter)
