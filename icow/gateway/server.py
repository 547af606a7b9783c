"""One gateway process: the HTTP and gRPC fronts on one event loop, one shared AsyncClient.

SIGTERM or SIGINT stops accepting new requests, lets those in flight finish (up to
``grace_s``), then closes the client.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass

from aiohttp import web

from icow.client import AsyncClient
from icow.gateway import rest, rpc
from icow.gateway.metrics import Metrics
from icow.gateway.service import DEFAULT_TIMEOUT_S, Gateway

log = logging.getLogger("icow.gateway")

DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024


@dataclass
class GatewayOptions:
    redis_url: str
    host: str = "0.0.0.0"
    http_port: int = 8000  # 0: no HTTP front
    grpc_port: int = 8001  # 0: no gRPC front
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    grace_s: float = 30.0


async def serve(opts: GatewayOptions, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT), then shut down gracefully."""
    if (opts.tls_cert is None) != (opts.tls_key is None):
        raise ValueError("TLS needs both a certificate and its key")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    client = AsyncClient(opts.redis_url)
    gw = Gateway(client, timeout_s=opts.timeout_s)
    metrics = Metrics()
    runner: web.AppRunner | None = None
    server = None
    try:
        if opts.http_port:
            app = rest.make_app(gw, metrics, token=opts.token, max_body_bytes=opts.max_body_bytes)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=opts.grace_s)
            await runner.setup()
            ssl_ctx = None
            if opts.tls_cert and opts.tls_key:
                ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ssl_ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
            await web.TCPSite(runner, opts.host, opts.http_port, ssl_context=ssl_ctx).start()
        if opts.grpc_port:
            import grpc

            server = rpc.make_server(gw, metrics, token=opts.token, max_message_bytes=opts.max_body_bytes)
            address = f"{opts.host}:{opts.grpc_port}"
            if opts.tls_cert and opts.tls_key:
                with open(opts.tls_key, "rb") as k, open(opts.tls_cert, "rb") as c:
                    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
                server.add_secure_port(address, creds)
            else:
                server.add_insecure_port(address)
            await server.start()
        log.warning("icow gateway: HTTP on %s, gRPC on %s", opts.http_port or "-", opts.grpc_port or "-")
        print(f"icow gateway ready: http={opts.http_port} grpc={opts.grpc_port}", flush=True)
        await stop.wait()
        log.warning("icow gateway: shutting down, finishing requests in flight")
    finally:
        # Both fronts stop accepting at once; each waits for its requests in flight.
        waits = []
        if server is not None:
            waits.append(server.stop(opts.grace_s))
        if runner is not None:
            waits.append(runner.cleanup())
        await asyncio.gather(*waits, return_exceptions=True)
        await client.close()


def run(opts: GatewayOptions) -> int:
    asyncio.run(serve(opts))
    return 0
