"""A shortcut for the hot routes (the inference POSTs) past FastAPI: its middleware stack,
routing and dependencies, which cost a large share of the HTTP process's CPU per small request
(docs/engine.md has the measurements). The hot routes stay registered in FastAPI, so /docs and
/openapi.json describe them and every other method or path goes the usual way; this ASGI
layer sits in front of FastAPI's whole middleware stack (EngineServer's `front`) and answers
exactly the routes the table marks hot, for any version number (versions come and go while
the server runs; the handler answers 404 for one not served, as through FastAPI), with the
same handlers, the same error mapping and the same gzip response compression. A middleware
added to the FastAPI app does not see these requests.
"""

from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import Request, Response
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .rest import ModelRoutes, to_response
from .routes import MODEL_ROUTES

Handler = Callable[[Request], Awaitable[Response]]
HANDLER = "tensorgate.handler"  # the scope key that carries the handler past GZipMiddleware


class InferenceFastPath:
    """ASGI middleware: the hot routes' exact paths go straight to the model's ModelRoutes
    handler; anything else to `app`."""

    def __init__(self, app: ASGIApp, specs: list[ModelRoutes]) -> None:
        """`specs`: every model's routes; a model added while serving is appended to it."""
        self.app = app
        self.specs, self.taken = specs, 0
        self.handlers: dict[tuple[str, str], Handler] = {}
        # method -> (path before the version, path after it, handler): versions come and go
        self.versioned: dict[str, list[tuple[str, str, Handler]]] = {}
        self.answer = GZipMiddleware(self._answer, minimum_size=1000)  # as LitServe's default

    def _take(self, spec: ModelRoutes) -> None:
        for route in filter(lambda r: r.hot, MODEL_ROUTES):
            handler = getattr(spec, route.handler)
            if "{version}" not in route.path:
                self.handlers[(route.method, route.concrete(spec.name, 0))] = handler
                continue
            before, after = route.path.format(model=spec.name, version="\0").split("\0")
            self.versioned.setdefault(route.method, []).append((before, after, handler))

    def find(self, method: str, path: str) -> Handler | None:
        """The hot route's handler for this method and path, if it is one."""
        while self.taken < len(self.specs):
            self._take(self.specs[self.taken])
            self.taken += 1
        handler = self.handlers.get((method, path))
        if handler is not None:
            return handler
        for before, after, handler in self.versioned.get(method, ()):
            if path.startswith(before) and path.endswith(after):
                version = path[len(before) : len(path) - len(after)]
                if version.isdigit():
                    return partial(handler, version=version)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.find(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        # GZipMiddleware only when the client takes gzip: its wrapping costs every request
        gzip = any(k == b"accept-encoding" and b"gzip" in v for k, v in scope["headers"])
        scope[HANDLER] = handler
        await (self.answer if gzip else self._answer)(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await scope[HANDLER](request)
        except Exception as e:
            response = to_response(e, scope["method"], scope["path"])
        await response(scope, receive, send)
