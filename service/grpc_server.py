"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), so that
tritonclient.grpc works unchanged.

It runs in each HTTP server process, on that process's event loop, on TENSORGATE_GRPC_PORT:
every process binds it with SO_REUSEPORT and the kernel spreads connections among them, as
it does for the HTTP port. Each call is an adapter over the data plane (dataplane.py), as an
HTTP route is: the API key comes as `authorization: Bearer` or `x-api-key` metadata, inputs
are validated as HTTP's are (protocol.Inputs), requests batch with HTTP's, the metrics say
`protocol="grpc"` with the gRPC status name as the code, and errors answer with their gRPC
status (errors.py). On a drain the server stops
taking calls and lets the ones in flight finish, within TENSORGATE_DRAIN_TIMEOUT.

The messages and the servicer base class are tritonclient's generated code
(`tritonclient.grpc.service_pb2`): Triton's proto is a superset of the OIP's.
"""

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import wraps

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .admission import Asked, from_parameters
from .dataplane import DataPlane, Inference
from .engine import Action
from .errors import BadRequest, ServiceError
from .protocol import (
    Decoded,
    Inputs,
    Requested,
    Signature,
    checked_shape,
    nbytes,
    select_outputs,
)

logger = logging.getLogger(__name__)

# Which InferTensorContents field holds each datatype's values (FP16 travels raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    **dict.fromkeys(("INT8", "INT16", "INT32"), "int_contents"),
    "INT64": "int64_contents",
    **dict.fromkeys(("UINT8", "UINT16", "UINT32"), "uint_contents"),
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
Handler = Callable[..., Awaitable]


def answers(handler: Handler) -> Handler:
    """A ServiceError becomes its gRPC status with its message."""

    @wraps(handler)
    async def call(self: "Servicer", request, context: grpc.aio.ServicerContext):
        try:
            return await handler(self, request, context)
        except ServiceError as e:
            await context.abort(grpc.StatusCode[e.grpc], e.message)
        except Exception:  # as HTTP's 500: logged here, no internals in the answer
            logger.exception("unhandled error in gRPC %s", handler.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal server error; the server logged the details"
            )

    return call


def credentials(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return dict(context.invocation_metadata() or ())


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Each method decodes the message, calls the data plane and encodes its answer."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    # -- health and metadata (health is open, like HTTP's) -------------------------------

    @answers
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @answers
    async def ServerReady(self, request, context):
        readiness = await self.plane.server_ready()
        return service_pb2.ServerReadyResponse(ready=readiness.ready)

    @answers
    async def ModelReady(self, request, context):
        readiness = await self.plane.model_ready(request.name, request.version or None)
        return service_pb2.ModelReadyResponse(ready=readiness.ready)

    @answers
    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(
            self.plane.server_metadata(credentials(context)),
            service_pb2.ServerMetadataResponse(),
        )

    @answers
    async def ModelMetadata(self, request, context):
        metadata = self.plane.model_metadata(
            request.name, request.version or None, credentials(context)
        )
        return json_format.ParseDict(
            metadata, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True
        )  # "labels" is not in the proto

    @answers
    async def ModelConfig(self, request, context):
        config = self.plane.model_config(
            request.name, request.version or None, credentials(context)
        )
        # the HTTP config gives each output a "format" too, which the proto has for inputs only
        parsed = json_format.ParseDict(
            config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return service_pb2.ModelConfigResponse(config=parsed)

    @answers
    async def ModelStatistics(self, request, context):
        entries = self.plane.statistics(
            request.name or None, request.version or None, credentials(context)
        )
        return json_format.ParseDict(
            {"model_stats": entries}, service_pb2.ModelStatisticsResponse()
        )

    # -- the repository extension --------------------------------------------------------

    @answers
    async def RepositoryIndex(self, request, context):
        entries = await self.plane.repository_index(request.ready, credentials(context))
        return json_format.ParseDict({"models": entries}, service_pb2.RepositoryIndexResponse())

    @answers
    async def RepositoryModelLoad(self, request, context):
        await self.plane.model_control(request.model_name, Action.LOAD, credentials(context))
        return service_pb2.RepositoryModelLoadResponse()

    @answers
    async def RepositoryModelUnload(self, request, context):
        await self.plane.model_control(request.model_name, Action.UNLOAD, credentials(context))
        return service_pb2.RepositoryModelUnloadResponse()

    # -- inference -----------------------------------------------------------------------

    @answers
    async def ModelInfer(self, request, context):
        async def decode(sig: Signature) -> Decoded:
            decoded = parse(request, sig)
            left = context.time_remaining()  # the call's own deadline; None: it has none
            if left is None:
                return decoded
            return replace(decoded, asked=decoded.asked.tighter(Asked(left)))

        done = await self.plane.infer(
            request.model_name,
            request.model_version or None,
            "grpc",
            credentials(context),
            decode,
        )
        return encode(done)


def parse(request: service_pb2.ModelInferRequest, sig: Signature) -> Decoded:
    """The request's inputs, raw (`raw_input_contents`, one per input in order, as
    tritonclient sends them) or typed (`contents`), validated as an HTTP request's are, and
    the outputs it asks for (all when it names none), answered raw."""
    if not request.inputs:
        raise BadRequest(f"the request has no inputs; model '{sig.model}' takes {sig.takes()}")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: "
            "give one per input, or none and typed contents"
        )
    inputs = Inputs(sig)
    for i, tensor in enumerate(request.inputs):
        t = inputs.expect(tensor.name, tensor.datatype)
        shape = checked_shape(list(tensor.shape), f"input '{t.name}'")
        if raw:
            if len(raw[i]) != nbytes(t, shape):
                raise BadRequest(
                    f"input '{t.name}': raw_input_contents has {len(raw[i])} bytes; shape "
                    f"{shape} of {t.datatype} needs {nbytes(t, shape)}"
                )
            inputs.from_bytes(t, shape, raw[i])
        elif t.datatype in CONTENTS:
            values = list(getattr(tensor.contents, CONTENTS[t.datatype]))
            inputs.from_values(t, shape, values)
        else:
            raise BadRequest(f"input '{t.name}' is {t.datatype}: send it in raw_input_contents")
    chosen = select_outputs([o.name for o in request.outputs] or None, sig)
    outputs = tuple(Requested(i, True) for i in chosen)
    return Decoded(inputs.done(), request.id, outputs, asked(request.parameters))


def asked(parameters) -> Asked:
    """Triton's `timeout` and `priority` request parameters, from their protobuf holders."""
    plain = {}
    for name in ("timeout", "priority"):
        if name in parameters:
            holder = parameters[name]
            plain[name] = getattr(holder, holder.WhichOneof("parameter_choice") or "int64_param")
    return from_parameters(plain)


def encode(done: Inference) -> service_pb2.ModelInferResponse:
    """The requested outputs, each in raw_output_contents."""
    sig = done.signature
    response = service_pb2.ModelInferResponse(
        model_name=sig.model, model_version=str(sig.version), id=done.request.id or ""
    )
    for index, _ in done.request.outputs:
        t = sig.outputs[index]
        values = np.ascontiguousarray(done.outputs[index], dtype=t.dtype.newbyteorder("<"))
        response.outputs.add(name=t.name, datatype=t.datatype, shape=values.shape)
        response.raw_output_contents.append(values.tobytes())
    return response


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on: SO_REUSEPORT would otherwise let this
    server share it silently with another one run by the same user."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise RuntimeError(
                f"gRPC port {port} (TENSORGATE_GRPC_PORT) is taken: {e}; a second instance "
                "needs its own TENSORGATE_PORT and TENSORGATE_GRPC_PORT (0: no gRPC)"
            ) from None


@asynccontextmanager
async def grpc_server(plane: DataPlane) -> AsyncIterator[None]:
    """The gRPC server for one HTTP process's lifetime."""
    settings = plane.settings
    limit = settings.max_body_bytes
    options = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
    ]
    aio = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(plane), aio)
    aio.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await aio.start()
    try:
        yield
    finally:
        # uvicorn has answered its HTTP requests; calls still running get the drain deadline
        await aio.stop(grace=settings.drain_timeout)
