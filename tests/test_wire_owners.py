"""One owner per wire record: the source tree itself is checked (docs/STYLE habit 2).

The job message is read in two layers, each in exactly one module: the Celery task message
(headers, properties, body) in icow/celery_message.py, the job envelope inside it (and the
claim check: tensors under their own keys) in icow/envelope.py. The result record is read in
icow/result.py alone (everyone else reads a typed ``Result``); dead letters, recent failures,
kept inputs and bulk records in icow/records.py. This test scans icow/, client/ and workers/
for reads of those records' fields outside their owner, so a second parser cannot creep back.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ("icow", "client", "workers")

# field names -> the one module allowed to read them off a decoded map
RESULT_FIELDS = {"status", "result", "traceback", "exc_type", "exc_message", "exc_module", "timing", "date_done"}
RESULT_FIELDS |= {"task_id", "children"}
MESSAGE_FIELDS = {"headers", "properties", "body", "content-type", "content-encoding", "body_encoding"}
ENVELOPE_FIELDS = {"inputs", "ttl", "reply_to", "created", "deadline"}
CLAIM_CHECK_FIELDS = {"ref"}

OWNERS = {
    "icow/result.py": RESULT_FIELDS,
    "icow/celery_message.py": MESSAGE_FIELDS,
    "icow/envelope.py": ENVELOPE_FIELDS | CLAIM_CHECK_FIELDS,
    # kept input records carry a job's ttl and inputs (validated by their own reader)
    "icow/records.py": {"inputs", "ttl"},
    # the gateway's Open Inference Protocol request (KServe v2 JSON), another wire with its own reader
    "icow/gateway/tensors.py": {"inputs"},
}

# msgpack is decoded in icow/codec.py (every record) and icow/celery_message.py (the body, and
# the streaming read of a message's first bytes); codec.unpackb is called by the owners and by
# the readers of the two records outside the wire split: model metadata and heartbeats.
MSGPACK_DECODERS = {"icow/codec.py", "icow/celery_message.py"}
UNPACKB_CALLERS = {
    "icow/codec.py",
    "icow/celery_message.py",
    "icow/result.py",
    "icow/records.py",
    "client/_core.py",  # model metadata (icow:model:<m>), not a result
    "client/_models.py",  # model metadata, where the client split moves it
    "workers/heartbeat.py",  # heartbeats (icow:worker:<w>)
}
SKIP = {"icow/protocol.py"}  # the compatibility facade: re-exports, reads nothing


def sources() -> Iterator[tuple[str, ast.Module]]:
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in SKIP or "/proto/" in rel:  # generated gRPC code
                continue
            yield rel, ast.parse(path.read_text(), rel)


def field_reads(module: ast.Module, *, subscripts: bool = True) -> Iterator[tuple[int, str]]:
    """(line, key) of every read ``x["key"]`` (unless not ``subscripts``), ``x.get("key")``,
    ``x.pop("key")`` and ``"key" in x``."""
    for node in ast.walk(module):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript):
            if subscripts and isinstance(node.ctx, ast.Load):
                key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "pop"):
                key = node.args[0]
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            yield node.lineno, key.value


def calls(module: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every call: ``msgpack.unpackb``, ``unpackb``, ``codec.unpackb``."""
    for node in ast.walk(module):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                yield node.lineno, f.id
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                yield node.lineno, f"{f.value.id}.{f.attr}"


def test_the_scan_sees_the_owners_reads() -> None:
    """The scan is not vacuous: each owner does read its own fields."""
    found = {rel: {k for _, k in field_reads(mod)} for rel, mod in sources()}
    assert {"status", "result", "task_id", "exc_type", "timing"} <= found["icow/result.py"]
    assert {"headers", "properties", "body"} <= found["icow/celery_message.py"]
    assert {"inputs", "ttl", "reply_to", "ref"} <= found["icow/envelope.py"]


def test_every_wire_field_is_read_by_its_owner_only() -> None:
    """Result, message and claim-check fields in any form; envelope fields as read off an
    untrusted map (``.get``, ``in``): a validated job is an ``envelope.Job`` (a TypedDict) whose
    fields anyone may index, but only icow/envelope.py turns a decoded map into one."""
    strays = []
    for rel, mod in sources():
        allowed = OWNERS.get(rel, set())
        guarded = RESULT_FIELDS | MESSAGE_FIELDS | CLAIM_CHECK_FIELDS
        strays += [f"{rel}:{line}: {key!r}" for line, key in field_reads(mod) if key in guarded - allowed]
        untrusted = field_reads(mod, subscripts=False)
        strays += [f"{rel}:{line}: {key!r}" for line, key in untrusted if key in ENVELOPE_FIELDS - allowed]
    assert strays == [], "wire fields read outside their owner module:\n" + "\n".join(strays)


def test_msgpack_is_decoded_in_the_codec_and_the_message_reader_only() -> None:
    strays = []
    for rel, mod in sources():
        for line, name in calls(mod):
            if name in ("msgpack.unpackb", "msgpack.Unpacker", "msgpack.loads") and rel not in MSGPACK_DECODERS:
                strays.append(f"{rel}:{line}: {name}")
            if name in ("unpackb", "codec.unpackb", "protocol.unpackb") and rel not in UNPACKB_CALLERS:
                strays.append(f"{rel}:{line}: {name}")
    assert strays == [], "records decoded outside their owner module:\n" + "\n".join(strays)


def test_no_module_imports_the_compatibility_facade() -> None:
    """icow.protocol is kept for code outside this repository; ICOW imports the owners."""
    users = []
    for rel, mod in sources():
        for node in ast.walk(mod):
            if isinstance(node, ast.ImportFrom) and node.module == "icow.protocol":
                users.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "icow":
                users += [f"{rel}:{node.lineno}" for a in node.names if a.name == "protocol"]
    assert users == []


def test_the_wire_modules_stay_small() -> None:
    for name in ("codec", "envelope", "celery_message", "result", "records", "protocol"):
        lines = (ROOT / "icow" / f"{name}.py").read_text().count("\n")
        assert lines < 400, f"icow/{name}.py has {lines} lines"
