"""Wires the LitServer: one ModelAPI per model, then the server-wide routes and error format."""

import logging
import multiprocessing as mp

import litserve as ls
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import ModelAPI
from .auth import check_api_key
from .backends import resolve_device
from .errors import BadRequest, NotFound, error_response
from .fastpath import InferenceFastPath
from .metrics import render
from .repository import ServedModel
from .schemas import document
from .settings import Settings
from .spec import KServeSpec
from .transport import PipeTransport

logger = logging.getLogger(__name__)
SERVER = {"name": "tensorgate", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers {"error": "..."} (the V2 convention), never FastAPI's {"detail"}."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(BadRequest.status, f"invalid request: {exc.errors()}")

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the server logged the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)


def add_server_routes(app: FastAPI, specs: list[KServeSpec], settings: Settings) -> None:
    served = sorted(spec.model.name for spec in specs)

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        not_ready = [spec.model.name for spec in specs if not spec.ready()]
        if not_ready:
            return error_response(503, f"not ready: {', '.join(not_ready)} still loading")
        return JSONResponse({"ready": True})

    @app.get("/v2", tags=["metadata"])
    async def server_metadata(request: Request) -> dict:
        check_api_key(request, settings.api_key)
        return SERVER

    @app.get("/metrics", tags=["metrics"])
    async def metrics() -> Response:
        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    # Registered after every model's routes, so they answer only what no model matched.
    async def unknown(request: Request, model: str) -> Response:
        name = model.split(":", 1)[0]
        if name in served:
            raise NotFound(f"no endpoint {request.method} {request.url.path}")
        raise NotFound(f"unknown model {name!r}; served: {', '.join(served)}")

    methods = ["GET", "POST"]
    for path in ("/v1/models/{model}", "/v2/models/{model}", "/v2/models/{model}/{rest:path}"):
        app.add_api_route(path, unknown, methods=methods, include_in_schema=False)


class PipeQueueServer(ls.LitServer):
    """LitServer with pipe queues and a thread-free response reader (see transport.py).

    Measured on the 2-core machine, mlp V1 at 64 connections (wrk, same run): LitServe's
    Manager queues 433 requests/s; pipes 570-790; pipes read without a thread hop 1,340.
    Its `fast_queue` (ZMQ) option was slower there (112/s): its broker process competes for
    the two cores. This overrides a private method, so litserve is pinned (pyproject.toml)
    and the whole test suite runs through it.
    """

    def _init_manager(self, num_api_servers: int):
        manager = super()._init_manager(num_api_servers)
        ctx = mp.get_context("spawn")
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = ctx.Queue()
        self._transport = PipeTransport([ctx.Queue() for _ in range(num_api_servers)])
        return manager


def build_server(settings: Settings, models: list[ServedModel]) -> ls.LitServer:
    apis = [ModelAPI(model, settings) for model in models]
    server = PipeQueueServer(
        apis,
        accelerator=resolve_device(settings.device),
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
    )
    add_error_handlers(server.app)
    add_server_routes(server.app, [api.spec for api in apis], settings)
    server.app.add_middleware(InferenceFastPath, specs=[api.spec for api in apis])
    description = "KServe V1 and V2 (Open Inference Protocol) inference for: " + ", ".join(
        f"{m.name} v{m.version}" for m in models
    )
    document(server.app, SERVER["name"], SERVER["version"], description)
    return server
