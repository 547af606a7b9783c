"""The KServe v2 gRPC front: ``inference.GRPCInferenceService`` on grpc.aio.

Inputs come as ``raw_input_contents`` (one entry per input, in order) or typed ``contents``;
outputs always go back as ``raw_output_contents``. Errors are gRPC status codes: NOT_FOUND,
INVALID_ARGUMENT, UNAVAILABLE, DEADLINE_EXCEEDED (see :func:`icow.gateway.service.classify`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from icow import tensor
from icow.errors import IcowError, NotFound
from icow.gateway import tensors
from icow.gateway.metrics import Metrics
from icow.gateway.proto import grpc_service_pb2 as pb
from icow.gateway.proto import grpc_service_pb2_grpc as pb_grpc
from icow.gateway.service import Gateway, classify
from icow.gateway.tensors import BadRequest, Request

log = logging.getLogger("icow.gateway")

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = frozenset({f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady"})  # no bearer token needed

# datatype -> the InferTensorContents field that carries it typed (FP16 has none: raw only)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _params(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in m.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def request_of(msg: pb.ModelInferRequest, max_tensor_bytes: int) -> Request:
    """Decode a ModelInferRequest; BadRequest for anything malformed."""
    req = Request(inputs={}, request_id=msg.id)
    tensors.apply_parameters(req, _params(msg.parameters))
    if not msg.inputs:
        raise BadRequest("the request has no inputs")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs: give one per input")
    for i, t in enumerate(msg.inputs):
        name, datatype, shape = t.name, t.datatype, list(t.shape)
        if not name:
            raise BadRequest("each input needs a name")
        if name in req.inputs:
            raise BadRequest(f"input {name!r} is given twice")
        if datatype not in tensor.ALL_DATATYPES:
            raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(tensor.ALL_DATATYPES)}")
        if any(d < 0 for d in shape) or len(shape) > tensor.MAX_RANK:
            raise BadRequest(f"input {name!r}: shape {shape} must be at most {tensor.MAX_RANK} non-negative dims")
        if raw:
            req.inputs[name] = tensors.from_raw(name, datatype, shape, raw[i], max_tensor_bytes)
            continue
        if datatype == "FP16":
            raise BadRequest(f"input {name!r}: FP16 travels only in raw_input_contents")
        values = list(getattr(t.contents, CONTENTS[datatype]))
        count = int(np.prod(shape)) if shape else 1
        if len(values) != count:
            raise BadRequest(f"input {name!r}: {len(values)} elements given, shape {shape} needs {count}")
        if datatype == tensor.BYTES:
            arr = np.empty(count, dtype=object)
            arr[:] = values
        else:
            try:
                arr = np.array(values, dtype=tensor.DATATYPES[datatype])
            except OverflowError as exc:
                raise BadRequest(f"input {name!r}: a value does not fit {datatype}") from exc
        req.inputs[name] = arr.reshape(shape)
    if msg.outputs:
        req.outputs = [o.name for o in msg.outputs]
    return req


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gw: Gateway, metrics: Metrics):
        self.gw = gw
        self.metrics = metrics
        self.max_tensor = gw.client.options.max_tensor_bytes

    async def _serve(
        self, endpoint: str, model: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Any]]
    ) -> Any:
        with self.metrics.track("grpc", endpoint, model) as code:
            try:
                reply = await work()
                code[0] = "OK"
                return reply
            except IcowError as exc:
                _, name = classify(exc)
                code[0] = name
                status, message = grpc.StatusCode[name], str(exc)
            except Exception as exc:  # never a crashed gateway
                log.exception("unexpected failure serving %s", endpoint)
                status, message = grpc.StatusCode.INTERNAL, f"internal gateway error: {type(exc).__name__}: {exc}"
            await context.abort(status, message)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=await self.gw.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.gw.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            doc = await self.gw.model_metadata(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=doc["name"],
                versions=doc["versions"],
                platform=doc["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]],
            )

        return await self._serve("model_metadata", request.name, context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            doc = await self.gw.model_config(request.name, request.version)
            config = pb.ModelConfig(
                name=doc["name"], platform=doc["platform"], backend=doc["backend"], max_batch_size=0
            )
            for t in doc["input"]:
                config.input.add(name=t["name"], data_type=pb.DataType.Value(t["data_type"]), dims=t["dims"])
            for t in doc["output"]:
                config.output.add(name=t["name"], data_type=pb.DataType.Value(t["data_type"]), dims=t["dims"])
            return pb.ModelConfigResponse(config=config)

        return await self._serve("model_config", request.name, context, work)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            try:
                ready = await self.gw.model_ready(request.name, request.version)
            except NotFound:  # as Triton answers: not ready (a version that is not a number stays an error)
                ready = False
            return pb.ModelReadyResponse(ready=ready)

        return await self._serve("model_ready", request.name, context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            req = request_of(request, self.max_tensor)
            answer = await self.gw.infer(request.model_name, request.model_version, req)
            reply = pb.ModelInferResponse(
                model_name=answer.model,
                model_version="" if answer.version is None else str(answer.version),
                id=req.request_id,
            )
            reply.parameters["icow_job_id"].string_param = answer.job_id
            names = req.outputs if req.outputs is not None else list(answer.outputs)
            for name in names:
                if name not in answer.outputs:
                    continue
                array = answer.outputs[name]
                datatype, raw = tensors.raw_of(name, array)
                reply.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
                reply.raw_output_contents.append(raw)
            return reply

        return await self._serve("infer", request.model_name, context, work)


class BearerToken(grpc.aio.ServerInterceptor):
    """Refuse calls (UNAUTHENTICATED) without ``authorization: Bearer <token>`` metadata."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method in OPEN_METHODS:
            return await continuation(details)
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        got_b = got.encode() if isinstance(got, str) else bytes(got)
        if hmac.compare_digest(got_b, self.expected):
            return await continuation(details)
        return self._deny


def make_server(
    gw: Gateway,
    metrics: Metrics,
    *,
    token: str | None = None,
    max_message_bytes: int,
) -> grpc.aio.Server:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.aio.server(interceptors=[BearerToken(token)] if token else [], options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(gw, metrics), server)
    return server
