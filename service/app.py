"""Wires the LitServer: one ModelAPI per model, then the server-wide routes and error format."""

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from artifacts.runtimes import resolve_device

from .api import ModelAPI
from .auth import check_api_key
from .engine import Engine, EngineServer
from .errors import MethodNotAllowed, NotFound, error_response, to_response
from .fastpath import InferenceFastPath
from .metrics import QueueCollector, render
from .openapi import document
from .repository import ServedModel
from .routes import allowed_methods
from .settings import Settings
from .spec import KServeSpec

SERVER = {"name": "tensorgate", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers {"error": "..."} (the V2 convention), never FastAPI's {"detail"}."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return to_response(exc, request.method, request.url.path)

    for kind in (StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, handle)


def add_server_routes(
    app: FastAPI, specs: list[KServeSpec], settings: Settings, engine: Engine
) -> None:
    served = sorted(spec.model.name for spec in specs)
    queues = QueueCollector(served, settings.max_queue, engine.in_flight)

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        if engine.draining:
            return error_response(503, "not ready: the server is shutting down")
        not_ready = [spec.model.name for spec in specs if not await spec.ready()]
        if not_ready:
            return error_response(503, f"not ready: {', '.join(not_ready)} loading or restarting")
        return JSONResponse({"ready": True})

    @app.get("/v2", tags=["metadata"])
    async def server_metadata(request: Request) -> dict:
        check_api_key(request, settings.api_key)
        return SERVER

    @app.get("/metrics", tags=["metrics"])
    async def metrics() -> Response:
        return Response(render(queues), media_type=CONTENT_TYPE_LATEST)

    # Registered after every model's routes, so they answer only what no model matched.
    async def unknown(request: Request, model: str) -> Response:
        name = model.split(":", 1)[0]
        if name not in served:
            raise NotFound(f"unknown model {name!r}; served: {', '.join(served)}")
        allowed = allowed_methods(request.url.path)
        if allowed:
            raise MethodNotAllowed(f"{request.method} {request.url.path}", allowed)
        raise NotFound(f"no endpoint {request.method} {request.url.path}")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    for path in ("/v1/models/{model}", "/v2/models/{model}", "/v2/models/{model}/{rest:path}"):
        app.add_api_route(path, unknown, methods=methods, include_in_schema=False)


def build_server(settings: Settings, models: list[ServedModel]) -> EngineServer:
    engine = Engine(
        [m.name for m in models],
        max_queue=settings.max_queue,
        request_timeout=settings.request_timeout,
        drain_timeout=settings.drain_timeout,
    )
    apis = [ModelAPI(model, settings, engine) for model in models]
    server = EngineServer(
        apis,
        engine,
        accelerator=resolve_device(settings.device),
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
    )
    add_error_handlers(server.app)
    add_server_routes(server.app, [api.spec for api in apis], settings, engine)
    server.app.add_middleware(InferenceFastPath, specs=[api.spec for api in apis])
    description = "KServe V1 and V2 (Open Inference Protocol) inference for: " + ", ".join(
        f"{m.name} v{m.version}" for m in models
    )
    document(server.app, SERVER["name"], SERVER["version"], description, [m.name for m in models])
    return server
