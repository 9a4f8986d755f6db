"""A shortcut for the hot routes (the inference POSTs) past FastAPI's middleware, routing and
dependencies.

At 64 connections on mlp, FastAPI and Starlette's per-request machinery (exception and
exit-stack middleware, the route scan, dependency solving) took about half of the HTTP
process's CPU, and that process was the bottleneck. The hot routes stay registered in
FastAPI, so /docs and /openapi.json describe them and every other method, path or version
goes the usual way; this ASGI layer answers exactly the routes the table marks hot, for the
served model versions, with the same handlers, the same error mapping and the same gzip
response compression. A middleware added to the FastAPI app does not see these requests:
add it around this one (app.py) instead.
"""

from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import Request, Response
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import to_response
from .routes import MODEL_ROUTES
from .spec import KServeSpec

Handler = Callable[[Request], Awaitable[Response]]


class InferenceFastPath:
    """ASGI middleware: the hot routes' exact paths go straight to the model's KServeSpec
    handler; anything else to `app`."""

    def __init__(self, app: ASGIApp, specs: list[KServeSpec]) -> None:
        self.app = app
        self.handlers: dict[tuple[str, str], Handler] = {}
        for spec in specs:
            for route in filter(lambda r: r.hot, MODEL_ROUTES):
                handler = getattr(spec, route.handler)
                if "{version}" not in route.path:
                    self.handlers[(route.method, route.concrete(spec.name, 0))] = handler
                    continue
                for version in spec.versions:  # every served version's own path
                    path = route.concrete(spec.name, version)
                    self.handlers[(route.method, path)] = partial(handler, version=str(version))
        self.answer = GZipMiddleware(self._answer, minimum_size=1000)  # as LitServe's default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.handlers:
            # GZipMiddleware only when the client takes gzip: its wrapping costs every request
            gzip = any(k == b"accept-encoding" and b"gzip" in v for k, v in scope["headers"])
            await (self.answer if gzip else self._answer)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.handlers[(scope["method"], scope["path"])](request)
        except Exception as e:
            response = to_response(e, scope["method"], scope["path"])
        await response(scope, receive, send)
