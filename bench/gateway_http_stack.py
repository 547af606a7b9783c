"""Which HTTP stack for the gateway: aiohttp's server vs Starlette on uvicorn (httptools, uvloop).

Each serves one POST route that reads the body and answers 64 bytes of JSON; an aiohttp client
sends requests at a fixed concurrency for a few seconds; requests/s is printed. This measures
the HTTP stacks alone (no Redis, no model): what the gateway adds per request on top of ICOW.

    python bench/gateway_http_stack.py            # needs aiohttp, starlette, uvicorn[standard]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sys
import time

BODY = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
ANSWER = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1]}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"])])
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools", loop="uvloop"
    )


async def load(port: int, concurrency: int, seconds: float) -> float:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        for _ in range(200):  # wait for the server, then warm up
            try:
                async with s.post(url, data=BODY) as resp:
                    await resp.read()
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        done = 0
        end = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with s.post(url, data=BODY) as resp:
                    await resp.read()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    for name, target in (("aiohttp", serve_aiohttp), ("starlette+uvicorn", serve_starlette)):
        port = free_port()
        proc = multiprocessing.Process(target=target, args=(port,), daemon=True)
        proc.start()
        try:
            for c in (1, 32):
                print(f"{name:18s} concurrency {c:2d}: {asyncio.run(load(port, c, seconds)):8.0f} requests/s")
        finally:
            proc.terminate()
            proc.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
