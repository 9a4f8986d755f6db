"""The KServe V1 and V2 endpoints of one model, as a LitSpec: both protocols feed the
model's one LitServe request queue, so their requests are batched together.

Runs in LitServe's HTTP server processes: it authorises, reads the body under its size
limit, validates it into one array per input (protocol.py), hands it to the engine (which
bounds the queue, batches and answers) and encodes the outputs as the protocol asks.
"""

import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from artifacts.manifest import ARTIFACTS, TensorSpec, versions

from .auth import check_api_key
from .engine import Engine, LitSpec, State
from .engine.client import Receive
from .errors import (
    BadRequest,
    ClientGone,
    NotFound,
    PayloadTooLarge,
    Retired,
    ServiceError,
    Unavailable,
    UnsupportedMedia,
    error_response,
)
from .metrics import REJECTIONS, REQUEST_DURATION, REQUESTS
from .protocol import (
    BINARY_HEADER,
    Signature,
    Tensor,
    Tensors,
    encode_v1,
    encode_v2,
    parse_v1,
    parse_v2,
)
from .repository import ServedModel, describe
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


T = TypeVar("T")


@dataclass
class Call:
    """One inference request being answered: the version it runs on, and its status."""

    model: ServedModel | None
    code: int = 500


def api_path(model: ServedModel) -> str:
    """LitServe's name for a version's LitAPI; its last part is LitServe's status key."""
    return f"/{model.key}"


def signature(model: ServedModel, max_instances: int) -> Signature:
    manifest = model.manifest

    def tensors(specs: list[TensorSpec]) -> tuple[Tensor, ...]:
        return tuple(Tensor(t.name, t.datatype, tuple(t.shape[1:])) for t in specs)

    return Signature(
        model=model.name,
        version=model.version,
        inputs=tensors(manifest.inputs),
        outputs=tensors(manifest.outputs),
        labels=tuple(manifest.labels),
        max_instances=max_instances if manifest.batched else 1,
    )


class VersionSpec(LitSpec):
    """The LitSpec of a model's other served versions: no routes of its own, since the
    model's KServeSpec answers every version."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__()
        self.api_path = api_path(model)


class KServeSpec(LitSpec):
    """Every route of one model, for each of its served versions: the unversioned and V1
    routes go to the highest.

    Which versions are served changes while the server runs (lifecycle.py): each HTTP
    process reads the engine's version table again when it has changed, and reads the
    manifest of a version it has not seen."""

    def __init__(
        self, versions: list[ServedModel], settings: Settings, engine: Engine, device: str
    ) -> None:
        super().__init__()
        highest = max(versions, key=lambda m: m.version)
        self.name = highest.name
        self.policy = highest.policy
        self.settings = settings
        self.engine = engine
        self.device = device  # "cpu" or "cuda", for Triton's model configuration
        self.api_path = api_path(highest)
        self.known = {m.version: m for m in versions}  # every version read, served or not
        self.signatures = {m.version: signature(m, settings.max_instances) for m in versions}
        self.signature = self.signatures[highest.version]  # the OpenAPI document's
        self.versions: dict[int, ServedModel] = {}  # the serving ones, ascending
        self.model: ServedModel | None = None  # the highest serving one
        self._generation = -1
        # prometheus_client's labels() is a lookup per call, so the children are kept, made
        # on first use in the HTTP process (they cannot be pickled into the workers)
        self._children: dict[tuple[str, int, int], tuple] = {}
        for route in MODEL_ROUTES:  # {version} stays a FastAPI path parameter
            path = route.path.format(model=self.name, version="{version}")
            self.add_endpoint(path, getattr(self, route.handler), [route.method])

    # -- state -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Serve what the version table says, once per change of the table."""
        table = self.engine.table
        if table.generation.value == self._generation:
            return
        self._generation = table.generation.value
        serving = sorted(
            slot.version
            for slot in table.slots()
            if slot.model == self.name and slot.state == State.SERVING
        )
        for version in serving:
            if version not in self.known:  # loaded since start: verified by the main process
                model = describe(self.settings, self.name, version, self.policy, verify=False)
                self.known[version] = model
                self.signatures[version] = signature(model, self.settings.max_instances)
        self.versions = {v: self.known[v] for v in serving}
        self.model = self.versions[serving[-1]] if serving else None

    async def ready(self, version: int | None = None) -> bool:
        """Every inference worker of the version (when None: of every serving version) has
        loaded and warmed it and is reachable."""
        self.refresh()
        if version is not None:
            return version in self.versions and await self.engine.ready(f"{self.name}:{version}")
        return all([await self.engine.ready(m.key) for m in self.versions.values()])

    def served(self, version: str | None) -> ServedModel:
        """The version a request names (None: the highest serving), or 404 or 503."""
        self.refresh()
        if version is None:
            if self.model is None:
                raise Unavailable(self._none_serving())
            return self.model
        if version.isdigit() and int(version) in self.versions:
            return self.versions[int(version)]
        served = ", ".join(map(str, self.versions)) or "none"
        if version.isdigit() and int(version) in versions(self.settings.repository / self.name):
            raise NotFound(
                f"model '{self.name}' version {version} is in the repository but not served "
                f"(the repository index says why); served: {served}"
            )
        raise NotFound(f"model '{self.name}' has no version {version!r}; served: {served}")

    def _none_serving(self) -> str:
        if self.engine.table.is_unloaded(self.name):
            return (
                f"model '{self.name}' is unloaded; "
                f"POST /v2/repository/models/{self.name}/load serves it again"
            )
        folder = self.settings.repository / self.name
        if not versions(folder):
            return f"model '{self.name}' has no version in {folder} any more"
        return f"model '{self.name}' has no version serving yet (the repository index says why)"

    # -- inference ---------------------------------------------------------------------

    async def infer(
        self, model: ServedModel, inputs: Tensors, receive: Receive | None = None
    ) -> Tensors:
        """The version's outputs; `receive` (ASGI's) lets a client's disconnect cancel it."""
        outputs = await self.engine.submit(model.key, inputs, receive)
        for out in outputs:  # non-finite floats: e.g. inputs near the limits of float32
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                raise BadRequest(
                    f"model '{self.name}' computes non-finite outputs for these inputs; "
                    "they are far outside the range of its training data"
                )
        return outputs

    @asynccontextmanager
    async def accounted(self, protocol: str) -> AsyncIterator[Call]:
        """Count one inference request in the metrics and Triton's statistics, whatever its
        outcome: the caller sets the call's version and, on success, its status."""
        self.refresh()
        call, started = Call(self.model), time.perf_counter()
        try:
            yield call
        except HTTPException as e:
            call.code = e.status_code
            if not isinstance(e, ClientGone):  # the worker counts those it did not compute
                reason = e.reason if isinstance(e, ServiceError) else "inference_error"
                REJECTIONS.labels(self.name, reason).inc()
            raise
        finally:
            model = call.model
            label = model.version if model is not None else 0  # 0: no version serving
            answered, latency = self._metrics(protocol, call.code, label)
            took = time.perf_counter() - started
            answered.inc()
            latency.observe(took)
            if model is not None:
                self.engine.record(model.key, "success" if call.code == 200 else "fail", took)

    async def on_version(
        self,
        call: Call,
        version: str | None,
        model: ServedModel,
        handle: Callable[[ServedModel], Awaitable[T]],
    ) -> T:
        """`handle(model)`, `model` being the version the request names (`version`; None: the
        highest serving). A request for no version in particular whose version was retired
        before it was admitted (a new version took over) runs again on the one serving now."""
        call.model = model
        try:
            return await handle(call.model)
        except Retired:
            if version is not None:
                raise
            call.model = self.served(None)
            return await handle(call.model)

    async def _serve(
        self, request: Request, protocol: str, version: str | None, handle
    ) -> Response:
        """Auth, body, `handle(body, model) -> Response`, and the request's metrics."""
        async with self.accounted(protocol) as call:
            check_api_key(request, self.settings.api_key)
            model = self.served(version)  # a 404 before the body is read
            body = await read_body(request, self.settings.max_body_bytes)
            response = await self.on_version(call, version, model, lambda m: handle(body, m))
            call.code = response.status_code
            return response

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
            outputs = await self.infer(model, parse_v1(body, sig), request.receive)
            return Response(encode_v1(outputs, sig), media_type="application/json")

        return await self._serve(request, "v1", None, handle)

    async def v2_infer(self, request: Request, version: str | None = None) -> Response:
        async def handle(body: bytes, model: ServedModel) -> Response:
            sig = self.signatures[model.version]
            parsed = parse_v2(body, request.headers.get(BINARY_HEADER), sig)
            outputs = await self.infer(model, parsed.inputs, request.receive)
            content, headers = encode_v2(outputs, sig, parsed)
            media = "application/octet-stream" if headers else "application/json"
            return Response(content, media_type=media, headers=headers)

        return await self._serve(request, "v2", version, handle)

    # -- metadata and readiness ----------------------------------------------------------

    async def v1_status(self, request: Request) -> dict:
        check_api_key(request, self.settings.api_key)
        return {"name": self.name, "ready": await self.ready(self.served(None).version)}

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
        return {"model_stats": self.version_stats(self.served(version))}

    def stats(self) -> list[dict]:
        """Every served version's entry of Triton's statistics."""
        self.refresh()
        return [entry for model in self.versions.values() for entry in self.version_stats(model)]

    def version_stats(self, model: ServedModel) -> list[dict]:
        """The version's entry; none if it was retired a moment ago."""
        slot = self.engine.slot(model.key)
        if slot is None:
            return []
        return [self.engine.stats.triton(slot.index, model.name, model.version)]

    async def v2_ready(self, request: Request, version: str | None = None) -> Response:
        """Open like the health endpoints (probes carry no key): 200 ready, 503 not yet."""
        self.refresh()
        if version is None and self.model is None:
            return error_response(503, self._none_serving())
        model = self.served(version)
        if not await self.ready(model.version):
            return error_response(503, f"model '{self.name}' is loading or restarting")
        return JSONResponse({"name": self.name, "ready": True})
