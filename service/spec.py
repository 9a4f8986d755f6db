"""The KServe V1 and V2 endpoints of one model, as a LitSpec: both protocols feed the
model's one LitServe request queue, so their requests are batched together.

Runs in LitServe's HTTP server processes: it authorises, reads the body under its size
limit, validates it into a float32 batch (protocol.py), hands it to the engine (which bounds
the queue, batches and answers) and encodes the probabilities as the protocol asks.
"""

import time
import zlib

import numpy as np
from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from artifacts.manifest import ARTIFACTS

from .auth import check_api_key
from .engine import Engine, LitSpec
from .errors import (
    BadRequest,
    ClientGone,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMedia,
    error_response,
)
from .metrics import REJECTIONS, REQUEST_DURATION, REQUESTS
from .protocol import BINARY_HEADER, Signature, encode_v1, encode_v2, parse_v1, parse_v2
from .repository import ServedModel
from .routes import MODEL_ROUTES
from .settings import Settings
from .triton import model_config


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (compressed or not)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"body of {declared} bytes is over the {limit}-byte limit (TENSORGATE_MAX_BODY_BYTES)"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(
                f"body is over the {limit}-byte limit (TENSORGATE_MAX_BODY_BYTES)"
            )
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):  # tritonclient's request compression
        inflate = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            plain = inflate.decompress(bytes(body), limit + 1)
        except zlib.error as e:
            raise BadRequest(f"body is not valid {encoding}: {e}") from None
        if len(plain) > limit:
            raise PayloadTooLarge(f"decompressed body is over the {limit}-byte limit")
        return plain
    if encoding != "identity":
        raise UnsupportedMedia(f"Content-Encoding {encoding!r}: use gzip, deflate or none")
    return bytes(body)


class KServeSpec(LitSpec):
    def __init__(self, model: ServedModel, settings: Settings, engine: Engine, device: str) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.engine = engine
        self.device = device  # "cpu" or "cuda", for Triton's model configuration
        tensor_in, tensor_out = model.manifest.inputs[0], model.manifest.outputs[0]
        self.signature = Signature(
            model=model.name,
            version=model.version,
            input_name=tensor_in.name,
            input_shape=tuple(tensor_in.shape[1:]),
            output_name=tensor_out.name,
            labels=tuple(model.manifest.labels),
            max_instances=settings.max_instances,
        )
        self.api_path = f"/v1/models/{model.name}:predict"  # LitServe names the model by it
        # prometheus_client's labels() is a lookup per call, so the children are kept, made
        # on first use in the HTTP process (they cannot be pickled into the workers)
        self._children: dict[tuple[str, int], tuple] = {}
        for route in MODEL_ROUTES:  # {version} stays a FastAPI path parameter
            path = route.path.format(model=model.name, version="{version}")
            self.add_endpoint(path, getattr(self, route.handler), [route.method])

    # -- state -------------------------------------------------------------------------

    async def ready(self) -> bool:
        """Every inference worker of this model has loaded and warmed it and is reachable."""
        return await self.engine.ready(self.model.name)

    def _check_version(self, version: str | None) -> None:
        if version is None or version == str(self.model.version):
            return
        if version.isdigit() and int(version) in self.model.available:
            raise NotFound(
                f"model '{self.model.name}' version {version} is in the repository but "
                f"not served; this server serves version {self.model.version}"
            )
        raise NotFound(
            f"model '{self.model.name}' has no version {version!r}; served: {self.model.version}"
        )

    # -- inference ---------------------------------------------------------------------

    async def _run(self, request: Request, x: np.ndarray) -> np.ndarray:
        probabilities = await self.engine.submit(self.model.name, x, request.receive)
        if not np.isfinite(probabilities).all():  # e.g. inputs near float32's limits
            raise BadRequest(
                f"model '{self.model.name}' computes non-finite probabilities for these inputs; "
                "they are far outside the range of its training data"
            )
        return probabilities

    async def _serve(
        self, request: Request, protocol: str, version: str | None, handle
    ) -> Response:
        """Auth, body, `handle(body) -> Response`, and the request's metrics, for V1 and V2."""
        name = self.model.name
        started, code = time.perf_counter(), 500
        try:
            check_api_key(request, self.settings.api_key)
            self._check_version(version)
            response = await handle(await read_body(request, self.settings.max_body_bytes))
            code = response.status_code
            return response
        except HTTPException as e:
            code = e.status_code
            if not isinstance(e, ClientGone):  # the worker counts those it did not compute
                reason = e.reason if isinstance(e, ServiceError) else "inference_error"
                REJECTIONS.labels(name, reason).inc()
            raise
        finally:
            answered, latency = self._metrics(protocol, code)
            took = time.perf_counter() - started
            answered.inc()
            latency.observe(took)
            self.engine.stats.request(name, "success" if code == 200 else "fail", took)

    def _metrics(self, protocol: str, code: int) -> tuple:
        """(requests counter, latency histogram) children for this protocol and status."""
        children = self._children.get((protocol, code))
        if children is None:
            name, version = self.model.name, str(self.model.version)
            children = (
                REQUESTS.labels(name, version, protocol, str(code)),
                REQUEST_DURATION.labels(name, protocol),
            )
            self._children[(protocol, code)] = children
        return children

    async def v1_predict(self, request: Request) -> Response:
        async def handle(body: bytes) -> Response:
            probabilities = await self._run(request, parse_v1(body, self.signature))
            return Response(encode_v1(probabilities, self.signature), media_type="application/json")

        return await self._serve(request, "v1", None, handle)

    async def v2_infer(self, request: Request, version: str | None = None) -> Response:
        async def handle(body: bytes) -> Response:
            parsed = parse_v2(body, request.headers.get(BINARY_HEADER), self.signature)
            probabilities = await self._run(request, parsed.x)
            content, headers = encode_v2(probabilities, self.signature, parsed)
            media = "application/octet-stream" if headers else "application/json"
            return Response(content, media_type=media, headers=headers)

        return await self._serve(request, "v2", version, handle)

    # -- metadata and readiness ----------------------------------------------------------

    async def v1_status(self, request: Request) -> dict:
        check_api_key(request, self.settings.api_key)
        return {"name": self.model.name, "ready": await self.ready()}

    async def v2_metadata(self, request: Request, version: str | None = None) -> dict:
        check_api_key(request, self.settings.api_key)
        self._check_version(version)
        manifest = self.model.manifest
        return {
            "name": self.model.name,
            "versions": [str(self.model.version)],
            "platform": ARTIFACTS[self.model.backend].platform,
            "inputs": [t.model_dump() for t in manifest.inputs],
            "outputs": [t.model_dump() for t in manifest.outputs],
            "labels": list(manifest.labels),
        }

    async def v2_config(self, request: Request, version: str | None = None) -> dict:
        check_api_key(request, self.settings.api_key)
        self._check_version(version)
        return model_config(self.model, self.settings, self.device)

    async def v2_stats(self, request: Request, version: str | None = None) -> dict:
        check_api_key(request, self.settings.api_key)
        self._check_version(version)
        return {"model_stats": [self.stats()]}

    def stats(self) -> dict:
        """This model's entry of Triton's statistics."""
        return self.engine.stats.triton(self.model.name, self.model.version)

    async def v2_ready(self, request: Request, version: str | None = None) -> Response:
        """Open like the health endpoints (probes carry no key): 200 ready, 503 not yet."""
        self._check_version(version)
        if not await self.ready():
            return error_response(503, f"model '{self.model.name}' is loading or restarting")
        return JSONResponse({"name": self.model.name, "ready": True})
