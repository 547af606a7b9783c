"""Regenerate the gateway's gRPC modules from icow/gateway/proto/grpc_service.proto.

    python -m icow.gateway.regen           # rewrite grpc_service_pb2.py, _pb2.pyi, _pb2_grpc.py
    python -m icow.gateway.regen --check   # exit 1 if the checked-in files differ (CI)

Needs grpcio-tools at the version the dev extra pins (the generated files name it).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "proto"
NAMES = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def generate() -> dict[str, str]:
    """The generated files' text, by name (nothing written)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / "grpc_service.proto"),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        texts = {name: (Path(out) / name).read_text() for name in NAMES}
    # protoc writes a top-level import; the modules live in the icow.gateway.proto package.
    texts["grpc_service_pb2_grpc.py"] = re.sub(
        r"^import grpc_service_pb2 as",
        "from icow.gateway.proto import grpc_service_pb2 as",
        texts["grpc_service_pb2_grpc.py"],
        flags=re.M,
    )
    return texts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    texts = generate()
    if "--check" in argv:
        stale = [n for n, t in texts.items() if not (PROTO_DIR / n).exists() or (PROTO_DIR / n).read_text() != t]
        if stale:
            print(f"stale generated gRPC code: {', '.join(stale)}; run python -m icow.gateway.regen", file=sys.stderr)
            return 1
        return 0
    for name, text in texts.items():
        (PROTO_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
