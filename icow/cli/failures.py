"""`icow failures`: the dead-letter records of jobs the fleet gave up on.

    icow failures [list] [--limit 20] [--json]    newest first
    icow failures show JOB_ID [--json]            one record, and the job's failure result

A job is dead-lettered when it fails for good: malformed, refused by the model, an internal
error that retries did not cure, or a poison job whose runs kept killing workers.
Records are kept for 7 days (icow.keys.DEAD_TTL_S).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import redis

from icow import connection, keys
from icow.errors import IcowError, JobNotFound
from icow.records import parse_record
from icow.result import read as read_result


def _redis(args: argparse.Namespace) -> redis.Redis:
    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    return connection.connect(url, socket_connect_timeout=5, **connection.tls_options(url, args.settings))


def dead_letters(r: redis.Redis, limit: int) -> list[dict[str, Any]]:
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in r.lrange(keys.DEAD, 0, max(0, limit - 1))]
    if not ids:
        return []
    raws = r.mget([keys.dead(i) for i in ids])
    return [rec for rec in map(parse_record, raws) if rec is not None]


def utc(epoch_s: Any) -> str:
    """``2026-11-26 13:47:44 UTC`` for an epoch in seconds ("-" when absent or unreadable)."""
    try:
        return datetime.fromtimestamp(float(epoch_s), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def model_label(rec: dict[str, Any]) -> str:
    """``mlp v2``, ``mlp`` (no version known), or ``-`` (the job named no usable model)."""
    model, version = rec.get("model"), rec.get("version")
    if not model:
        return "-"
    return f"{model} v{version}" if version is not None else str(model)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bytes):  # e.g. the start of a message that could not be parsed
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


def summary_line(rec: dict[str, Any]) -> str:
    """One dead letter on one line, for `icow failures`."""
    message = _text(rec.get("message"))[:100]
    return (
        f"{utc(rec.get('time'))}  {_text(rec.get('id'))}  {model_label(rec)}  {_text(rec.get('error'))}: "
        f"{message}  (deliveries {_text(rec.get('deliveries'))})"
    )


def detail_lines(rec: dict[str, Any], failure: tuple[str, str] | None) -> list[str]:
    """One dead letter, a field per line, for `icow failures show`; ``failure`` is the job's
    failure result (type, message) when it is still stored."""
    rows = [
        ("job", _text(rec.get("id"))),
        ("model", model_label(rec)),
        ("error", _text(rec.get("error"))),
        ("message", _text(rec.get("message"))),
        ("time", utc(rec.get("time"))),
        ("deliveries", _text(rec.get("deliveries"))),
    ]
    known = {"id", "model", "version", "error", "message", "time", "deliveries"}
    rows += [(k, _text(v)) for k, v in rec.items() if k not in known]
    if failure is not None:
        rows.append(("result", f"{failure[0]}: {failure[1]}"))
    return [f"{k:>10}: {v}" for k, v in rows]


def cmd_failures(args: argparse.Namespace) -> int:
    r = _redis(args)
    try:
        if args.action == "show":
            if not args.job_id:
                raise IcowError("icow failures show JOB_ID")
            keys.check_job_id(args.job_id)
            raw, raw_result = r.mget([keys.dead(args.job_id), keys.result(args.job_id)])
            record = parse_record(raw)
            if record is None:
                raise JobNotFound(f"no dead-letter record for job {args.job_id} (unknown, succeeded, or expired)")
            failure = read_result(raw_result).error if raw_result is not None else None
            if args.json:
                if failure is not None:
                    record["result"] = {"error": failure[0], "message": failure[1]}
                print(json.dumps(record, indent=2, default=_text))
            else:
                print("\n".join(detail_lines(record, failure)))
            return 0
        records = dead_letters(r, args.limit)
        if args.json:
            print(json.dumps(records, indent=2, default=_text))
            return 0
        if not records:
            print("no dead-lettered jobs")
        for rec in records:
            print(summary_line(rec))
        return 0
    finally:
        r.close()


def add_command(sub: Any) -> None:
    f = sub.add_parser("failures", help="list or show dead-lettered jobs")
    f.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    f.add_argument("job_id", nargs="?")
    f.add_argument("--limit", type=int, default=20)
    f.add_argument("--json", action="store_true")
    f.add_argument("--redis")
    f.set_defaults(func=cmd_failures)
