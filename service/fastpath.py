"""A shortcut for the inference POSTs past FastAPI's middleware, routing and dependencies.

At 64 connections on mlp, FastAPI and Starlette's per-request machinery (exception and
exit-stack middleware, the route scan, dependency solving) took about half of the HTTP
process's CPU, and that process was the bottleneck. The inference routes stay registered in
FastAPI, so /docs and /openapi.json describe them and every other method or path goes the
usual way; this ASGI layer answers exactly these POSTs first, with the same handlers, the
same `{"error": ...}` format and the same gzip response compression. A middleware added
to the FastAPI app does not see these requests: add it around this one (app.py) instead.
"""

import logging
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Response
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response
from .spec import KServeSpec

logger = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


class InferenceFastPath:
    """ASGI middleware: `POST /v1/models/{m}:predict` and `POST /v2/models/{m}/infer`
    go straight to the model's KServeSpec handler; anything else to `app`."""

    def __init__(self, app: ASGIApp, specs: list[KServeSpec]) -> None:
        self.app = app
        self.handlers: dict[str, Handler] = {}
        for spec in specs:
            self.handlers[f"/v1/models/{spec.model.name}:predict"] = spec.v1_predict
            self.handlers[f"/v2/models/{spec.model.name}/infer"] = spec.v2_infer
        self.answer = GZipMiddleware(self._answer, minimum_size=1000)  # as LitServe's default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.handlers:
            # GZipMiddleware only when the client takes gzip: its wrapping costs every request
            gzip = any(k == b"accept-encoding" and b"gzip" in v for k, v in scope["headers"])
            await (self.answer if gzip else self._answer)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.handlers[scope["path"]](request)
        except HTTPException as e:
            response = error_response(e.status_code, str(e.detail), e.headers)
        except Exception:
            logger.exception("unhandled error on POST %s", scope["path"])
            response = error_response(500, "internal server error; the server logged the details")
        await response(scope, receive, send)
