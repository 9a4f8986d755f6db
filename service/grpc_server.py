"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), so that
tritonclient.grpc works unchanged.

It runs in each HTTP server process, on that process's event loop, on TENSORGATE_GRPC_PORT:
every process binds it with SO_REUSEPORT and the kernel spreads connections among them, as
it does for the HTTP port. A request takes the same path as an HTTP one: the API key (as
`authorization: Bearer` or `x-api-key` metadata), the same validation (protocol.Inputs), the
engine's queues (so gRPC and HTTP requests batch together), the metrics with
`protocol="grpc"`, and the same errors, as gRPC status codes. On a drain the server stops
taking calls and lets the ones in flight finish, within TENSORGATE_DRAIN_TIMEOUT.

The messages and the servicer base class are tritonclient's generated code
(`tritonclient.grpc.service_pb2`): Triton's proto is a superset of the OIP's.
"""

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import wraps

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from artifacts.manifest import ARTIFACTS
from artifacts.runtimes import Tensors

from . import control
from .auth import check_key
from .engine import Action, Engine
from .errors import BadRequest, NotFound, ServiceError, Unavailable
from .protocol import Inputs, Signature, nbytes, select_outputs
from .repository import ServedModel
from .settings import Settings
from .spec import KServeSpec
from .triton import model_config

logger = logging.getLogger(__name__)

STATUS = {  # HTTP status -> gRPC status code
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
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
    """A ServiceError becomes the matching gRPC status with its message."""

    @wraps(handler)
    async def call(self: "Servicer", request, context: grpc.aio.ServicerContext):
        try:
            return await handler(self, request, context)
        except ServiceError as e:
            await context.abort(STATUS.get(e.status_code, grpc.StatusCode.UNKNOWN), e.detail)
        except Exception:  # as HTTP's 500: logged here, no internals in the answer
            logger.exception("unhandled error in gRPC %s", handler.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal server error; the server logged the details"
            )

    return call


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, specs: list[KServeSpec], settings: Settings, engine: Engine, server: dict
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.settings, self.engine, self.server = settings, engine, server

    def _spec(self, name: str) -> KServeSpec:
        if name not in self.specs:
            raise NotFound(f"unknown model {name!r}; served: {', '.join(sorted(self.specs))}")
        return self.specs[name]

    def _authorised(self, context: grpc.aio.ServicerContext) -> None:
        check_key(dict(context.invocation_metadata() or ()), self.settings.api_key)

    # -- health and metadata (health is open, like HTTP's) -------------------------------

    @answers
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @answers
    async def ServerReady(self, request, context):
        ready = not self.engine.draining and all(
            [await spec.ready() for spec in self.specs.values()]
        )
        return service_pb2.ServerReadyResponse(ready=ready)

    @answers
    async def ModelReady(self, request, context):
        spec = self._spec(request.name)
        try:
            model = spec.served(request.version or None)
        except Unavailable:  # no version serving (unloaded): not ready, as Triton says it
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=await spec.ready(model.version))

    @answers
    async def ServerMetadata(self, request, context):
        self._authorised(context)
        return service_pb2.ServerMetadataResponse(
            name=self.server["name"],
            version=self.server["version"],
            extensions=self.server["extensions"],
        )

    @answers
    async def ModelMetadata(self, request, context):
        self._authorised(context)
        spec = self._spec(request.name)
        model = spec.served(request.version or None)

        def tensors(specs: list) -> list:
            return [
                service_pb2.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=t.shape
                )
                for t in specs
            ]

        return service_pb2.ModelMetadataResponse(
            name=spec.name,
            versions=[str(v) for v in spec.versions],
            platform=ARTIFACTS[model.backend].platform,
            inputs=tensors(model.manifest.inputs),
            outputs=tensors(model.manifest.outputs),
        )

    @answers
    async def ModelConfig(self, request, context):
        self._authorised(context)
        spec = self._spec(request.name)
        config = model_config(spec.served(request.version or None), self.settings, spec.device)
        # the HTTP config gives each output a "format" too, which the proto has for inputs only
        parsed = json_format.ParseDict(
            config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return service_pb2.ModelConfigResponse(config=parsed)

    @answers
    async def ModelStatistics(self, request, context):
        self._authorised(context)
        if request.name:
            spec = self._spec(request.name)
            version = request.version
            entries = spec.version_stats(spec.served(version)) if version else spec.stats()
        else:
            entries = [e for spec in self.specs.values() for e in spec.stats()]
        return json_format.ParseDict(
            {"model_stats": entries}, service_pb2.ModelStatisticsResponse()
        )

    # -- the repository extension --------------------------------------------------------

    @answers
    async def RepositoryIndex(self, request, context):
        self._authorised(context)
        entries = await control.index(list(self.specs.values()), self.settings, request.ready)
        return json_format.ParseDict({"models": entries}, service_pb2.RepositoryIndexResponse())

    @answers
    async def RepositoryModelLoad(self, request, context):
        await self._control(request.model_name, Action.LOAD, context)
        return service_pb2.RepositoryModelLoadResponse()

    @answers
    async def RepositoryModelUnload(self, request, context):
        await self._control(request.model_name, Action.UNLOAD, context)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _control(self, model: str, action: Action, context) -> None:
        self._authorised(context)
        specs = list(self.specs.values())
        await control.load_or_unload(specs, self.settings, self.engine, model, action)

    # -- inference -----------------------------------------------------------------------

    @answers
    async def ModelInfer(self, request, context):
        spec = self._spec(request.model_name)
        async with spec.accounted("grpc") as call:
            self._authorised(context)

            async def run(model: ServedModel) -> service_pb2.ModelInferResponse:
                sig = spec.signatures[model.version]
                outputs = await spec.infer(model, parse(request, sig))
                return encode(outputs, sig, request)

            version = request.model_version or None
            response = await spec.on_version(call, version, spec.served(version), run)
            call.code = 200
            return response


def parse(request: service_pb2.ModelInferRequest, sig: Signature) -> Tensors:
    """The request's inputs, raw (`raw_input_contents`, one per input in order, as
    tritonclient sends them) or typed (`contents`), validated as an HTTP request's are."""
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
        shape = list(tensor.shape)
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
    return inputs.done()


def encode(
    outputs: Tensors, sig: Signature, request: service_pb2.ModelInferRequest
) -> service_pb2.ModelInferResponse:
    """The requested outputs (all when none is named), each in raw_output_contents."""
    chosen = select_outputs([o.name for o in request.outputs] or None, sig)
    response = service_pb2.ModelInferResponse(
        model_name=sig.model, model_version=str(sig.version), id=request.id
    )
    for index in chosen:
        t = sig.outputs[index]
        values = np.ascontiguousarray(outputs[index], dtype=t.dtype.newbyteorder("<"))
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
            raise RuntimeError(f"gRPC port {port} (TENSORGATE_GRPC_PORT) is taken: {e}") from None


@asynccontextmanager
async def grpc_server(
    specs: list[KServeSpec], settings: Settings, engine: Engine, server: dict
) -> AsyncIterator[None]:
    """The gRPC server for one HTTP process's lifetime."""
    limit = settings.max_body_bytes
    options = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
    ]
    aio = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        Servicer(specs, settings, engine, server), aio
    )
    aio.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await aio.start()
    try:
        yield
    finally:
        # uvicorn has answered its HTTP requests; calls still running get the drain deadline
        await aio.stop(grace=settings.drain_timeout)
