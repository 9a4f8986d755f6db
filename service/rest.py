"""The HTTP adapter of every model route (routes.py), as a LitSpec: decode, call the data
plane, encode. Also how any error becomes an HTTP answer, here and for the fast path and
FastAPI's handlers.

A route's handler reads the body under its size limit (after the version is resolved, so an
unknown one answers 404 unread), parses it as V1 or V2 for the version's signature
(protocol.py) and encodes the outputs as the protocol asks. Authorisation, admission and
accounting happen in the data plane (dataplane.py).
"""

import logging
import zlib
from collections.abc import Callable
from dataclasses import replace

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from .admission import NOTHING_ASKED, from_headers
from .dataplane import DataPlane, Inference, Transport
from .engine import LitSpec
from .errors import BadRequest, ClientGone, PayloadTooLarge, ServiceError, UnsupportedMedia
from .protocol import BINARY_HEADER, Decoded, Signature, encode_v1, encode_v2, parse_v1, parse_v2
from .repository import ServedModel
from .routes import MODEL_ROUTES
from .served import ModelVersions

logger = logging.getLogger(__name__)
Parse = Callable[[bytes, Signature], Decoded]  # a protocol's parser of a body


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def to_response(exc: Exception, method: str, path: str) -> JSONResponse:
    """What the client gets for an exception, everywhere (FastAPI's handlers, the fast path):
    a ServiceError's status, message and headers; Starlette's own HTTP errors as they are;
    400 for FastAPI's validation; else a logged 500 that names no internals."""
    if isinstance(exc, ServiceError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, str(exc.detail), exc.headers)
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )  # pydantic's own entries also carry its documentation's URL
        return error_response(BadRequest.status, f"invalid request: {problems}")
    logger.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(500, "internal server error; the server logged the details")


async def read_body(
    request: Request, limit: int, named: str = "TENSORGATE_MAX_BODY_BYTES"
) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (compressed or not);
    `named` says where the limit comes from."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit ({named})")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"body is over the {limit}-byte limit ({named})")
    except ClientDisconnect:
        raise ClientGone("the client disconnected while sending its body") from None
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


def client_gone(receive: Receive):
    """Returns once the client has disconnected (ASGI's `http.disconnect`)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


def api_path(model: ServedModel) -> str:
    """LitServe's name for a version's LitAPI; its last part is LitServe's status key."""
    return f"/{model.key}"


class VersionSpec(LitSpec):
    """The LitSpec of a model's other served versions: no routes of its own, since the
    model's ModelRoutes answers every version."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__()
        self.api_path = api_path(model)


class ModelRoutes(LitSpec):
    """Every route of one model, for each of its versions (a LitSpec, so that LitServe
    registers them for the model's LitAPI)."""

    def __init__(self, model: ModelVersions, plane: DataPlane) -> None:
        super().__init__()
        self.name, self.plane = model.name, plane
        self.api_path = api_path(model.at_start)
        for route in MODEL_ROUTES:  # {version} stays a FastAPI path parameter
            path = route.path.format(model=self.name, version="{version}")
            self.add_endpoint(path, getattr(self, route.handler), [route.method])

    async def _infer(
        self, request: Request, transport: Transport, version: str | None, parse: Parse
    ) -> Inference:
        """The data plane's inference, the body read once (a retry on a new version parses
        it again for that version's signature)."""
        body: bytes | None = None

        async def decode(sig: Signature) -> Decoded:
            nonlocal body
            if body is None:
                body = await read_body(request, self.plane.settings.max_body_bytes)
            decoded = parse(body, sig)
            asked = from_headers(request.headers)  # Request-Timeout, Inference-Priority
            if asked == NOTHING_ASKED:
                return decoded
            return replace(decoded, asked=decoded.asked.tighter(asked))

        return await self.plane.infer(
            self.name, version, transport, request.headers, decode, client_gone(request.receive)
        )

    async def v1_predict(self, request: Request) -> Response:
        done = await self._infer(
            request, "v1", None, lambda body, sig: Decoded(parse_v1(body, sig))
        )
        return Response(encode_v1(done.outputs, done.signature), media_type="application/json")

    async def v2_infer(self, request: Request, version: str | None = None) -> Response:
        header = request.headers.get(BINARY_HEADER)
        done = await self._infer(request, "v2", version, lambda b, sig: parse_v2(b, header, sig))
        content, headers = encode_v2(done.outputs, done.signature, done.request)
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def v1_status(self, request: Request) -> dict:
        return await self.plane.model_status(self.name)

    async def v2_metadata(self, request: Request, version: str | None = None) -> dict:
        return self.plane.model_metadata(self.name, version, request.headers)

    async def v2_config(self, request: Request, version: str | None = None) -> dict:
        return self.plane.model_config(self.name, version, request.headers)

    async def v2_stats(self, request: Request, version: str | None = None) -> dict:
        return {"model_stats": self.plane.statistics(self.name, version, request.headers)}

    async def v2_ready(self, request: Request, version: str | None = None) -> Response:
        """Open like the health endpoints (probes carry no key): 200 ready, 503 not yet."""
        ready, why = await self.plane.model_ready(self.name, version)
        if not ready:
            return error_response(503, why)
        return JSONResponse({"name": self.name, "ready": True})
