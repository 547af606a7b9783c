"""``icow gateway``: the Open Inference Protocol (KServe v2) front door, HTTP and gRPC."""

from __future__ import annotations

import argparse
import os
from typing import Any

from icow.errors import IcowError


def cmd_gateway(args: argparse.Namespace) -> int:
    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    try:
        from icow.gateway.server import GatewayOptions, run
    except ModuleNotFoundError as exc:
        raise IcowError(
            f"`icow gateway` needs the gateway extra (no module {exc.name!r}): pip install 'icow[gateway]'"
        ) from exc
    token = os.environ.get("ICOW_GATEWAY_TOKEN") if args.token_env else None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    if args.token_env and not token:
        raise IcowError("--token-env: ICOW_GATEWAY_TOKEN is not set")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise IcowError("give both --tls-cert and --tls-key")
    return run(
        GatewayOptions(
            redis_url=url,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            token=token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_body_bytes=args.max_body_bytes,
            timeout_s=args.timeout,
            grace_s=args.grace,
        )
    )


def add_command(sub: Any) -> None:
    g = sub.add_parser("gateway", help="serve the fleet over KServe v2 (Open Inference Protocol) HTTP and gRPC")
    g.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL)")
    g.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    g.add_argument("--http-port", type=int, default=8000, help="KServe v2 HTTP/REST port (default 8000; 0: off)")
    g.add_argument("--grpc-port", type=int, default=8001, help="KServe v2 gRPC port (default 8001; 0: off)")
    g.add_argument("--token-file", help="require 'Authorization: Bearer <token>' (the file's text) on both ports")
    g.add_argument("--token-env", action="store_true", help="the same, with the token in ICOW_GATEWAY_TOKEN")
    g.add_argument("--tls-cert", help="serve TLS on both ports with this PEM certificate (and --tls-key)")
    g.add_argument("--tls-key", help="the certificate's PEM private key")
    g.add_argument("--max-body-bytes", type=int, default=512 * 1024 * 1024, help="larger requests are refused")
    g.add_argument("--timeout", type=float, default=30.0, help="default seconds to wait for a result (default 30)")
    g.add_argument("--grace", type=float, default=30.0, help="seconds to finish requests in flight at shutdown")
    g.set_defaults(func=cmd_gateway)
