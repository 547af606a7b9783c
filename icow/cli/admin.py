"""`icow admin`: the operator's one-off steps.

icow admin install --redis URL   load ICOW's Redis Functions (workers do it at start too)
icow admin acl                   print the ACL SETUSER lines of the client and worker users
"""

from __future__ import annotations

import argparse
from typing import Any

from icow import connection, functions, keys, settings
from icow.errors import IcowError


def cmd_admin(args: argparse.Namespace) -> int:
    if args.action == "acl":
        for user, rules in (("icow-client", keys.CLIENT_ACL_RULES), ("icow-worker", keys.WORKER_ACL_RULES)):
            print(f"ACL SETUSER {user} reset on ><password> {' '.join(rules)}")
        return 0
    s = settings.from_env()
    url = args.redis or s.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    r: Any = connection.connect(url, socket_connect_timeout=5, socket_timeout=10, **settings.tls_files(url, s))
    try:
        loaded = functions.install(r)
    finally:
        r.close()
    print(f"ICOW's Redis Functions {'installed' if loaded else 'already installed'} (library {functions.LIBRARY_NAME})")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("admin", help="operator steps: install ICOW's Redis Functions, print the ACL users")
    p.add_argument("action", choices=["install", "acl"])
    p.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL)")
    p.set_defaults(func=cmd_admin)
