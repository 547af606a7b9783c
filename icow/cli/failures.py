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
import time
from typing import Any

import redis

from icow import keys, protocol, settings
from icow.errors import IcowError, JobNotFound
from icow.workers import tls


def _redis(args: argparse.Namespace) -> redis.Redis:
    url = args.redis or settings.from_env().redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    return redis.Redis.from_url(url, socket_connect_timeout=5, **tls.redis_options(url))


def dead_letters(r: redis.Redis, limit: int) -> list[dict[str, Any]]:
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in r.lrange(keys.DEAD, 0, max(0, limit - 1))]
    if not ids:
        return []
    raws = r.mget([keys.dead(i) for i in ids])
    return [protocol.unpackb(raw) for raw in raws if raw is not None]


def cmd_failures(args: argparse.Namespace) -> int:
    r = _redis(args)
    try:
        if args.action == "show":
            if not args.job_id:
                raise IcowError("icow failures show JOB_ID")
            keys.check_job_id(args.job_id)
            raw, result = r.mget([keys.dead(args.job_id), keys.result(args.job_id)])
            if raw is None:
                raise JobNotFound(f"no dead-letter record for job {args.job_id} (unknown, succeeded, or expired)")
            record = protocol.unpackb(raw)
            if result is not None:
                record["result"] = protocol.failure_of(protocol.parse_meta(result))
            if args.json:
                print(json.dumps(record, indent=2, default=str))
            else:
                for k, v in record.items():
                    print(f"{k:>10}: {v}")
            return 0
        records = dead_letters(r, args.limit)
        if args.json:
            print(json.dumps(records, indent=2, default=str))
            return 0
        if not records:
            print("no dead-lettered jobs")
        for rec in records:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("time", 0)))
            print(
                f"{when}  {rec['id']}  {rec.get('model')} v{rec.get('version')}  {rec['error']}: "
                f"{str(rec.get('message'))[:100]}  (deliveries {rec.get('deliveries')})"
            )
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
