"""The two Redis ACL users of a deployment, written out for an operator (``icow admin acl``).

The rules are :data:`icow.keys.CLIENT_ACL_RULES` and :data:`icow.keys.WORKER_ACL_RULES`; they
need nothing newer than Redis 7.0. On a server that knows ``CLIENT SETINFO`` (Redis >= 7.2,
Valkey) the client user also gets :data:`icow.keys.CLIENT_INFO_RULES`, so the drivers' greeting
is not refused (and logged in ``ACL LOG``) on every connection.

Two forms, both tested against Redis 7.0 and Valkey 8:

``redis-cli``
    one ``ACL SETUSER`` command a line, selectors in double quotes: paste the lines into
    ``redis-cli`` or feed the file to it (``redis-cli -u URL < acl.txt``). Not for a shell
    prompt: ``>``, ``~``, ``&`` and ``|`` mean something there.
``aclfile``
    ``user <name> <rules>`` lines for the file named by ``aclfile`` in redis.conf (load it
    with ``ACL LOAD`` or a restart; Redis reads ``( ... )`` selectors with spaces there).
"""

from __future__ import annotations

from typing import Any

import redis

from icow import keys

USERS = ("icow-client", "icow-worker")
FORMATS = ("redis-cli", "aclfile")


def knows_client_setinfo(r: Any) -> bool:
    """Whether the server has ``CLIENT SETINFO`` (Redis >= 7.2, Valkey): ask it on the admin's
    own connection; Redis 7.0 answers "unknown subcommand"."""
    try:
        r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "icow-admin")
    except redis.exceptions.ResponseError as exc:
        if "unknown subcommand" in str(exc).lower() or "unknown command" in str(exc).lower():
            return False
        raise
    return True


def rules(user: str, *, client_setinfo: bool = False) -> tuple[str, ...]:
    """The ACL rules of ``user`` (one of :data:`USERS`), after ``reset on ><password>``."""
    if user == "icow-client":
        return keys.CLIENT_ACL_RULES + (keys.CLIENT_INFO_RULES if client_setinfo else ())
    if user == "icow-worker":
        return keys.WORKER_ACL_RULES
    raise ValueError(f"unknown ICOW user {user!r}: {', '.join(USERS)}")


def password_placeholder(user: str) -> str:
    return user.removeprefix("icow-").upper() + "_PASSWORD"


def lines(fmt: str = "redis-cli", *, client_setinfo: bool = False) -> list[str]:
    """One line per user, in ``fmt`` (:data:`FORMATS`), with ``>CLIENT_PASSWORD`` /
    ``>WORKER_PASSWORD`` where the passwords go (replace them; ``#<sha256 hex>`` in place of
    ``><password>`` stores only the hash)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: {', '.join(FORMATS)}")
    out = []
    for user in USERS:
        words = ["reset", "on", ">" + password_placeholder(user)]
        for rule in rules(user, client_setinfo=client_setinfo):
            words.append(f'"{rule}"' if fmt == "redis-cli" and " " in rule else rule)
        head = f"ACL SETUSER {user}" if fmt == "redis-cli" else f"user {user}"
        out.append(" ".join([head, *words]))
    return out
