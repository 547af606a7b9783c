"""`icow admin`: the operator's one-off steps.

icow admin install --redis URL   load ICOW's Redis Functions (workers do it at start too)
icow admin acl [--redis URL] [--format redis-cli|aclfile]
                                 print the client and worker users (icow/acl.py): rules that
                                 work on any Redis >= 7.0; with --redis, fitted to that server
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import redis

from icow import acl, connection, functions, settings
from icow.errors import IcowError


def _connect(url: str, s: settings.Settings) -> Any:
    return connection.connect(url, socket_connect_timeout=5, socket_timeout=10, **connection.tls_options(url, s))


def cmd_acl(args: argparse.Namespace) -> int:
    """Print the two users (stdout: only the lines, so it can be fed to redis-cli); where they
    go and how to apply them on stderr."""
    setinfo = False
    if args.redis:  # fit the rules to that server (CLIENT SETINFO is Redis >= 7.2 / Valkey)
        r = _connect(args.redis, args.settings)
        try:
            setinfo = acl.knows_client_setinfo(r)
        except redis.exceptions.RedisError as exc:
            raise connection.redis_failure(exc, "cannot ask the server which commands it knows") from exc
        finally:
            r.close()
    for line in acl.lines(args.format, client_setinfo=setinfo):
        print(line)
    how = (
        "feed these lines to redis-cli as an admin (redis-cli -u URL < acl.txt) or paste them at its prompt"
        if args.format == "redis-cli"
        else "add these lines to the file redis.conf names with `aclfile`, then ACL LOAD (or restart)"
    )
    fitted = "fitted to that server" if args.redis else "for any Redis >= 7.0 (--redis URL fits them to a server)"
    print(f"# {how}; replace CLIENT_PASSWORD / WORKER_PASSWORD first; rules {fitted}", file=sys.stderr)
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    if args.action == "acl":
        return cmd_acl(args)
    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    r = _connect(url, args.settings)
    try:
        loaded = functions.install(r)
    finally:
        r.close()
    print(f"ICOW's Redis Functions {'installed' if loaded else 'already installed'} (library {functions.LIBRARY_NAME})")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("admin", help="operator steps: install ICOW's Redis Functions, print the ACL users")
    p.add_argument("action", choices=["install", "acl"])
    p.add_argument("--redis", help="Redis URL (install: ICOW_REDIS_URL; acl: fit the rules to this server)")
    p.add_argument(
        "--format",
        choices=acl.FORMATS,
        default="redis-cli",
        help="acl: ACL SETUSER lines for redis-cli (default), or user lines for an aclfile",
    )
    p.set_defaults(func=cmd_admin)
