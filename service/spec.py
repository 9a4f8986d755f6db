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


def api_path(model: ServedModel) -> str:
    """LitServe's name for a version's LitAPI; its last part is LitServe's status key."""
    return f"/{model.key}"


def signature(model: ServedModel, max_instances: int) -> Signature:
    tensor_in, tensor_out = model.manifest.inputs[0], model.manifest.outputs[0]
    return Signature(
        model=model.name,
        version=model.version,
        input_name=tensor_in.name,
        input_shape=tuple(tensor_in.shape[1:]),
        output_name=tensor_out.name,
        labels=tuple(model.manifest.labels),
        max_instances=max_instances,
    )


class VersionSpec(LitSpec):
    """The LitSpec of a model's other served versions: no routes of its own, since the
    model's KServeSpec answers every version."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__()
        self.api_path = api_path(model)


class KServeSpec(LitSpec):
    """Every route of one model, for each of its served versions: the unversioned and V1
    routes go to the highest."""

    def __init__(
        self, versions: list[ServedModel], settings: Settings, engine: Engine, device: str
    ) -> None:
        super().__init__()
        self.versions = {m.version: m for m in sorted(versions, key=lambda m: m.version)}
        self.model = self.versions[max(self.versions)]
        self.name = self.model.name
        self.settings = settings
        self.engine = engine
        self.device = device  # "cpu" or "cuda", for Triton's model configuration
        self.signatures = {
            v: signature(m, settings.max_instances) for v, m in self.versions.items()
        }
        self.signature = self.signatures[self.model.version]
        self.api_path = api_path(self.model)
        # prometheus_client's labels() is a lookup per call, so the children are kept, made
        # on first use in the HTTP process (they cannot be pickled into the workers)
        self._children: dict[tuple[str, int, int], tuple] = {}
        for route in MODEL_ROUTES:  # {version} stays a FastAPI path parameter
            path = route.path.format(model=self.name, version="{version}")
            self.add_endpoint(path, getattr(self, route.handler), [route.method])

    # -- state -------------------------------------------------------------------------

    async def ready(self, version: int | None = None) -> bool:
        """Every inference worker of the version (when None: of every served version not
        unloaded) has loaded and warmed it and is reachable."""
        if version is not None:
            return await self.engine.ready(self.versions[version].key)
        keys = [m.key for m in self.versions.values() if not self.engine.is_unloaded(m.key)]
        return all([await self.engine.ready(key) for key in keys])

    def unload(self) -> None:
        for model in self.versions.values():
            self.engine.unload(model.key)

    def load(self) -> None:
        for model in self.versions.values():
            self.engine.load(model.key)

    def served(self, version: str | None) -> ServedModel:
        """The version a request names (None: the highest served), or 404."""
        if version is None:
            return self.model
        if version.isdigit() and int(version) in self.versions:
            return self.versions[int(version)]
        served = ", ".join(map(str, self.versions))
        if version.isdigit() and int(version) in self.model.available:
            raise NotFound(
                f"model '{self.name}' version {version} is in the repository but not served "
                f"(TENSORGATE_VERSION_POLICY); served: {served}"
            )
        raise NotFound(f"model '{self.name}' has no version {version!r}; served: {served}")

    # -- inference ---------------------------------------------------------------------

    async def _run(self, request: Request, model: ServedModel, x: np.ndarray) -> np.ndarray:
        probabilities = await self.engine.submit(model.key, x, request.receive)
        if not np.isfinite(probabilities).all():  # e.g. inputs near float32's limits
            raise BadRequest(
                f"model '{self.name}' computes non-finite probabilities for these inputs; "
                "they are far outside the range of its training data"
            )
        return probabilities

    async def _serve(
        self, request: Request, protocol: str, version: str | None, handle
    ) -> Response:
        """Auth, body, `handle(body, model) -> Response`, and the request's metrics."""
        started, code, model = time.perf_counter(), 500, self.model
        try:
            check_api_key(request, self.settings.api_key)
            model = self.served(version)
            body = await read_body(request, self.settings.max_body_bytes)
            response = await handle(body, model)
            code = response.status_code
            return response
        except HTTPException as e:
            code = e.status_code
            if not isinstance(e, ClientGone):  # the worker counts those it did not compute
                reason = e.reason if isinstance(e, ServiceError) else "inference_error"
                REJECTIONS.labels(self.name, reason).inc()
            raise
        finally:
            answered, latency = self._metrics(protocol, code, model.version)
            took = time.perf_counter() - started
            answered.inc()
            latency.observe(took)
            self.engine.stats.request(model.key, "success" if code == 200 else "fail", took)

    def _metrics(self, protocol: str, code: int, version: int) -> tuple:
        """(requests counter, latency histogram) children for this protocol, status, version."""
        children = self._children.get((protocol, code, version))
        if children is None:
            children = (
                REQUESTS.labels(self.name, str(version), protocol, str(code)),
                REQUEST_DURATION.labels(self.name, protocol),
            )
            self._children[(protocol, code, version)] = children
        return children

    async def v1_predict(self, request: Request) -> Response:
        async def handle(body: bytes, model: ServedModel) -> Response:
            sig = self.signatures[model.version]
            probabilities = await self._run(request, model, parse_v1(body, sig))
            return Response(encode_v1(probabilities, sig), media_type="application/json")

        return await self._serve(request, "v1", None, handle)

    async def v2_infer(self, request: Request, version: str | None = None) -> Response:
        async def handle(body: bytes, model: ServedModel) -> Response:
            sig = self.signatures[model.version]
            parsed = parse_v2(body, request.headers.get(BINARY_HEADER), sig)
            probabilities = await self._run(request, model, parsed.x)
            content, headers = encode_v2(probabilities, sig, parsed)
            media = "application/octet-stream" if headers else "application/json"
            return Response(content, media_type=media, headers=headers)

        return await self._serve(request, "v2", version, handle)

    # -- metadata and readiness ----------------------------------------------------------

    async def v1_status(self, request: Request) -> dict:
        check_api_key(request, self.settings.api_key)
        return {"name": self.name, "ready": await self.ready(self.model.version)}

    async def v2_metadata(self, request: Request, version: str | None = None) -> dict:
        check_api_key(request, self.settings.api_key)
        model = self.served(version)
        manifest = model.manifest
        return {
            "name": self.name,
            "versions": [str(v) for v in self.versions],
            "platform": ARTIFACTS[model.backend].platform,
            "inputs": [t.model_dump() for t in manifest.inputs],
            "outputs": [t.model_dump() for t in manifest.outputs],
            "labels": list(manifest.labels),
        }

    async def v2_config(self, request: Request, version: str | None = None) -> dict:
        check_api_key(request, self.settings.api_key)
        return model_config(self.served(version), self.settings, self.device)

    async def v2_stats(self, request: Request, version: str | None = None) -> dict:
        """Triton's statistics: every served version's, or the one named."""
        check_api_key(request, self.settings.api_key)
        if version is None:
            return {"model_stats": self.stats()}
        return {"model_stats": [self._stats(self.served(version))]}

    def stats(self) -> list[dict]:
        """Every served version's entry of Triton's statistics."""
        return [self._stats(model) for model in self.versions.values()]

    def _stats(self, model: ServedModel) -> dict:
        return self.engine.stats.triton(model.key, model.name, model.version)

    async def v2_ready(self, request: Request, version: str | None = None) -> Response:
        """Open like the health endpoints (probes carry no key): 200 ready, 503 not yet."""
        model = self.served(version)
        if not await self.ready(model.version):
            return error_response(503, f"model '{self.name}' is loading or restarting")
        return JSONResponse({"name": self.name, "ready": True})
