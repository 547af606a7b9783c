"""The KServe v2 HTTP/REST front (aiohttp), with Triton's binary tensor data extension and
ICOW's asynchronous jobs (``/v2/models/{m}/jobs``, ``/v2/jobs/{id}``)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from icow.errors import IcowError
from icow.gateway import tensors
from icow.gateway.metrics import Metrics
from icow.gateway.service import Answer, Gateway, classify
from icow.gateway.tensors import Request

log = logging.getLogger("icow.gateway")

HEADER_LENGTH = "Inference-Header-Content-Length"
CANCEL_HEADER = "ICOW-Cancel-Token"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})  # no bearer token needed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def _error(exc: BaseException) -> web.Response:
    status, _ = classify(exc)
    return _json({"error": str(exc)}, status)


def _answer(answer: Answer, req: Request, extra: dict[str, Any], status: int = 200) -> web.Response:
    body, header_length = tensors.http_response(answer.model, answer.version, answer.outputs, req, extra)
    if header_length is None:
        return web.Response(body=body, status=status, content_type="application/json")
    return web.Response(
        body=body,
        status=status,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )


def make_app(gw: Gateway, metrics: Metrics, *, token: str | None = None, max_body_bytes: int) -> web.Application:
    max_tensor = gw.client.options.max_tensor_bytes

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        model = request.match_info.get("model", "")
        endpoint = (request.match_info.route.name or "other").removesuffix("_version")
        with metrics.track("http", endpoint, model) as code:
            try:
                if token is not None and request.path not in OPEN_PATHS:
                    got = request.headers.get("Authorization", "")
                    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                        resp: web.StreamResponse = _json({"error": "a valid bearer token is required"}, 401)
                        code[0] = "401"
                        return resp
                resp = await handler(request)
            except web.HTTPRequestEntityTooLarge:
                resp = _json(
                    {"error": f"the request body is larger than the gateway's limit, {max_body_bytes} bytes"}, 413
                )
            except web.HTTPException as exc:
                resp = _json({"error": exc.reason}, exc.status)
            except IcowError as exc:
                resp = _error(exc)
            except Exception as exc:  # never a crashed gateway: a 500 naming the failure
                log.exception("unexpected failure serving %s", request.path)
                resp = _json({"error": f"internal gateway error: {type(exc).__name__}: {exc}"}, 500)
            code[0] = str(resp.status)
            return resp

    async def live(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if await gw.ready() else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return _json(gw.server_metadata())

    async def model_metadata(request: web.Request) -> web.Response:
        return _json(await gw.model_metadata(request.match_info["model"], request.match_info.get("version")))

    async def model_config(request: web.Request) -> web.Response:
        return _json(await gw.model_config(request.match_info["model"], request.match_info.get("version")))

    async def model_ready(request: web.Request) -> web.Response:
        await gw.model_ready(request.match_info["model"], request.match_info.get("version"))
        return web.Response(status=200)

    async def parse(request: web.Request) -> Request:
        body = await request.read()
        return tensors.parse_http(body, request.headers.get(HEADER_LENGTH), max_tensor)

    async def infer(request: web.Request) -> web.Response:
        req = await parse(request)
        answer = await gw.infer(request.match_info["model"], request.match_info.get("version"), req)
        return _answer(answer, req, {"icow_job_id": answer.job_id})

    async def submit_job(request: web.Request) -> web.Response:
        req = await parse(request)
        job = await gw.submit(request.match_info["model"], request.match_info.get("version"), req)
        doc = {"id": job.id, "cancel_token": job.cancel_token, "model_name": job.model, "status": "queued"}
        return _json(doc, 202)

    async def get_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        binary = request.query.get("binary_data_output", "").lower() in ("1", "true")
        try:
            status, answer = await gw.job(job_id)
        except IcowError as exc:
            code, _ = classify(exc)
            doc = {"id": job_id, "status": "failed" if code != 404 else "unknown", "error": str(exc)}
            return _json(doc, code)
        if answer is None:
            return _json({"id": job_id, "status": status}, 202)
        return _answer(answer, Request(inputs={}, binary_all=binary), {"icow_job_id": job_id, "status": status})

    async def cancel_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        token = request.headers.get(CANCEL_HEADER) or request.query.get("cancel_token")
        cancelled = await gw.cancel(job_id, token)
        return _json({"id": job_id, "cancelled": cancelled}, 200 if cancelled else 409)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[guard], client_max_size=max_body_bytes)
    r = app.router
    r.add_get("/v2/health/live", live, name="live")
    r.add_get("/v2/health/ready", ready, name="ready")
    r.add_get("/v2", server_metadata, name="server_metadata")
    r.add_get("/metrics", prometheus, name="metrics")
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        versioned = "_version" if "version" in prefix else ""
        r.add_get(prefix, model_metadata, name=f"model_metadata{versioned}")
        r.add_get(prefix + "/ready", model_ready, name=f"model_ready{versioned}")
        r.add_get(prefix + "/config", model_config, name=f"model_config{versioned}")
        r.add_post(prefix + "/infer", infer, name=f"infer{versioned}")
        r.add_post(prefix + "/jobs", submit_job, name=f"jobs{versioned}")
    r.add_get("/v2/jobs/{job_id}", get_job, name="job")
    r.add_delete("/v2/jobs/{job_id}", cancel_job, name="cancel")
    return app
