"""Wires the LitServer: one ModelAPI per model, then the server-wide routes and error format."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import fastapi_offline
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from artifacts.runtimes import resolve_device

from .api import ModelAPI
from .cache import ResponseCache
from .dataplane import SERVER, DataPlane
from .engine import Action, Engine, EngineServer, VersionTable
from .errors import BadRequest, MethodNotAllowed, NotFound, ServiceError
from .fastpath import InferenceFastPath
from .grpc_server import check_port, grpc_server
from .lifecycle import Lifecycle
from .metrics import CacheCollector, QueueCollector, TrafficCollector, render
from .openapi import document
from .protocol import Signature
from .repository import ServedModel
from .rest import ModelRoutes, VersionSpec, api_path, error_response, read_body, to_response
from .rollback import CanaryWatch
from .schemas import Error, IndexEntry, Traffic, TrafficChange, TritonStatistics
from .served import ModelVersions
from .settings import Settings
from .tracing import ServerSpans, provider, root_ratio

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI, ReDoc
ASSETS_URL = "/docs-assets"
CONTROL_BODY_BYTES = 64 * 1024  # the repository index's body is {"ready": true} at most
# the routes that answer for a model no route names: 404, 405, or one added while serving
CATCH_ALL = ("/v1/models/{model}", "/v2/models/{model}", "/v2/models/{model}/{rest:path}")


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers {"error": "..."} (the V2 convention), never FastAPI's {"detail"}."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
            # Starlette's Allow names the first route matching the path; a path may have more
            allowed = allowed_methods(app, request.scope)
            exc = MethodNotAllowed(f"{request.method} {request.url.path}", allowed)
        return to_response(exc, request.method, request.url.path)

    for kind in (ServiceError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, handle)


def add_docs(app: FastAPI, plane: DataPlane) -> None:
    """/docs and /redoc with Swagger UI's and ReDoc's assets served by the service itself
    (fastapi-offline packages them), instead of FastAPI's pages, which load them from a CDN:
    model servers often run where there is no internet. /openapi.json names every model and
    its tensors: with an API key set, it needs the key like the other metadata."""
    replaced = {app.docs_url, app.redoc_url, app.openapi_url}
    app.router.routes = [r for r in app.routes if getattr(r, "path", None) not in replaced]
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get(app.openapi_url, include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        plane.authorise(request.headers)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{SERVER['name']} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{SERVER['name']} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def add_server_routes(app: FastAPI, plane: DataPlane) -> None:
    """The server-wide routes, each an adapter over the data plane."""

    def served() -> list[str]:
        return sorted(m.name for m in plane.every_model())

    queues = QueueCollector(served, plane.settings.max_queue, plane.in_flight)
    caches = CacheCollector(lambda: {name: cache.used for name, cache in plane.caches.items()})
    traffic_shares = TrafficCollector(plane.traffic_shares)

    @app.get("/", tags=["health"])
    async def alive() -> dict:
        """KServe's V1 liveness."""
        return {"status": "alive"}

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict:
        return {"live": True}

    unready = {503: {"model": Error, "description": "a model loading or restarting; draining"}}

    @app.get("/v2/health/ready", tags=["health"], responses=unready)
    async def ready() -> Response:
        readiness = await plane.server_ready()
        if not readiness.ready:
            return error_response(503, readiness.why)
        return JSONResponse({"ready": True})

    async def server_metadata(request: Request) -> dict:
        return plane.server_metadata(request.headers)

    for path in ("/v2", "/v2/"):  # the OIP spec's path is /v2/; neither redirects
        app.add_api_route(path, server_metadata, methods=["GET"], tags=["metadata"])

    async def model_list(request: Request) -> dict:
        """The served models, as KServe's V1 and V2 servers list them."""
        return {"models": plane.model_names(request.headers)}

    for path in ("/v1/models", "/v2/models"):
        app.add_api_route(path, model_list, methods=["GET"], tags=["metadata"])

    @app.post("/v2/repository/index", tags=["repository"], response_model=list[IndexEntry])
    async def repository_index(request: Request) -> list[dict]:
        """Triton's model repository index: every version in the repository, read now, with
        its state: READY, LOADING (warming up or restarting) or UNAVAILABLE and why."""
        plane.authorise(request.headers)
        body = await read_body(request, CONTROL_BODY_BYTES, "the repository index's")
        try:
            ready_only = bool(body.strip()) and orjson.loads(body).get("ready") is True
        except (orjson.JSONDecodeError, AttributeError):
            raise BadRequest('the body must be empty or {"ready": true|false}') from None
        return await plane.repository_index(ready_only, request.headers)

    refusal = {
        400: {"model": Error, "description": "model control not explicit, or the load failed"}
    }

    @app.post("/v2/repository/models/{model}/load", tags=["repository"], responses=refusal)
    async def load(request: Request, model: str) -> dict:
        await plane.model_control(model, Action.LOAD, request.headers)
        return {}

    @app.post("/v2/repository/models/{model}/unload", tags=["repository"], responses=refusal)
    async def unload(request: Request, model: str) -> dict:
        await plane.model_control(model, Action.UNLOAD, request.headers)
        return {}

    unknown_model = {404: {"model": Error, "description": "no such model"}}

    @app.get(
        "/v2/repository/models/{model}/traffic",
        tags=["repository"],
        response_model=Traffic,
        responses=unknown_model,
    )
    async def traffic(request: Request, model: str) -> dict:
        """How the model's requests that name no version are split among its versions, why a
        canary was last rolled back, and its shadow version's comparisons so far."""
        return plane.traffic(model, request.headers)

    change = {"application/json": {"schema": TrafficChange.model_json_schema()}}

    @app.post(
        "/v2/repository/models/{model}/traffic",
        tags=["repository"],
        response_model=Traffic,
        responses={
            400: {"model": Error, "description": "model control not explicit; bad body"},
            **unknown_model,
        },
        openapi_extra={"requestBody": {"required": True, "content": change}},
    )
    async def set_traffic(request: Request, model: str) -> dict:
        """Replace the weights and/or the shadow (explicit model control): either key alone;
        `"weights": {}` sends everything to the highest version again, `"shadow": null` stops
        shadowing."""
        plane.authorise(request.headers)
        body = await read_body(request, CONTROL_BODY_BYTES, "the traffic endpoint's")
        try:
            asked = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest('the body must be JSON: {"weights": {...}, "shadow": {...}}') from None
        return plane.set_traffic(model, asked, request.headers)

    @app.get("/v2/models/stats", tags=["metadata"], response_model=TritonStatistics)
    async def all_stats(request: Request) -> dict:
        """Triton's statistics extension, every model."""
        return {"model_stats": plane.statistics(None, None, request.headers)}

    @app.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(render(queues, caches, traffic_shares), media_type=CONTENT_TYPE_LATEST)

    # Registered after every other route, so they answer only what no route matched.
    async def unknown(request: Request, model: str) -> Response:
        name = model.split(":", 1)[0]
        if name not in plane.models and not allowed_methods(app, request.scope):
            # NotFound, naming the served models only to who may read metadata (a readiness
            # probe carries no key, so it gets the plain 404 the model's own probe route
            # would give); or a model added while serving, whose routes are added now
            probe = request.method == "GET" and request.url.path.endswith("/ready")
            plane.model(name, None if probe else request.headers)
            route = matching_route(app, request.scope)
            if route is not None:
                return await answer_with(route, request)
        allowed = allowed_methods(app, request.scope)
        if allowed:
            raise MethodNotAllowed(f"{request.method} {request.url.path}", allowed)
        raise NotFound(f"no endpoint {request.method} {request.url.path}")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    for path in CATCH_ALL:
        app.add_api_route(path, unknown, methods=methods, include_in_schema=False)


def add_model_routes(
    app: FastAPI,
    plane: DataPlane,
    specs: list[ModelRoutes],
    signatures: list[Signature],
    model: ModelVersions,
) -> None:
    """Give a model that this HTTP process meets while serving (DataPlane.discover) the routes
    of a model served since start: in FastAPI ahead of the catch-alls, in the fast path (which
    takes on what `specs` gains) and in the OpenAPI document (made again from `signatures`)."""
    spec = ModelRoutes(model, plane)
    routes = app.router.routes
    before = len(routes)
    for path, endpoint, methods in spec.endpoints:
        app.add_api_route(path, endpoint, methods=methods)
    added = routes[before:]
    del routes[before:]
    first_catch_all = next(i for i, r in enumerate(routes) if getattr(r, "path", "") in CATCH_ALL)
    routes[first_catch_all:first_catch_all] = added
    specs.append(spec)
    signatures.append(model.signatures[model.at_start.version])
    app.openapi_schema = None


def ours(route: object) -> bool:
    """A route of the app's own, not a catch-all."""
    return isinstance(route, APIRoute) and route.path not in CATCH_ALL


def matching_route(app: FastAPI, scope: dict) -> APIRoute | None:
    """The route other than the catch-all that takes this request, if one does now."""
    for route in app.router.routes:
        if ours(route) and route.matches(scope)[0] == Match.FULL:
            return route
    return None


async def answer_with(route: APIRoute, request: Request) -> Response:
    """What the route's endpoint answers (a ModelRoutes handler: a Response or a dict)."""
    _, child = route.matches({**request.scope, "path_params": {}})  # not the catch-all's
    answer = await route.endpoint(request, **child["path_params"])
    return answer if isinstance(answer, Response) else JSONResponse(answer)


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """The methods the app's routes take at this request's path, other methods being asked:
    one rule for every route, so a wrong method is a 405 naming them, not a 404."""
    found: set[str] = set()
    for route in app.router.routes:
        if ours(route):
            match, _ = route.matches(scope)
            if match == Match.PARTIAL:  # the path matches, the method does not
                found |= route.methods
    return sorted(found)


@asynccontextmanager
async def traced(plane: DataPlane, ratio: float) -> AsyncIterator[None]:
    """The HTTP process's spans, through a provider of its own (one made before the fork
    would share an export thread that the fork does not copy), flushed when it stops."""
    plane.spans = ServerSpans(provider(workers=False), ratio)
    try:
        yield
    finally:
        plane.spans.shutdown()
        plane.spans = None


def build_server(settings: Settings, models: list[ServedModel]) -> EngineServer:
    """The LitServer with every model's LitAPI and the server-wide routes; FastAPI neither
    redirects a trailing slash nor answers in its own error format."""
    versions: dict[str, list[ServedModel]] = {}
    for model in models:
        versions.setdefault(model.name, []).append(model)
    table = VersionTable(list(versions))
    engine = Engine(
        table,
        max_queue=settings.max_queue,
        request_timeout=settings.request_timeout,
        drain_timeout=settings.drain_timeout,
        http_processes=settings.api_servers,
    )
    device = resolve_device(settings.device)
    served = [ModelVersions(group, settings, engine) for group in versions.values()]
    caches = {name: ResponseCache(size) for name, size in settings.response_caches.items()}
    plane = DataPlane(served, settings, engine, device, caches)
    specs = [ModelRoutes(m, plane) for m in served]
    routed = {spec.api_path: spec for spec in specs}  # each model's highest version at start

    def make_api(model: ServedModel, slot: int) -> ModelAPI:
        spec = routed.pop(api_path(model), None) or VersionSpec(model)
        return ModelAPI(model, settings, engine, spec, slot)

    apis = [make_api(m, table.claim(m.name, m.version)) for m in models]
    policies = {name: group[0].policy for name, group in versions.items()}
    targets = {name: tuple(m.version for m in group) for name, group in versions.items()}
    companions = []
    if settings.grpc_port:
        check_port(settings.host, settings.grpc_port)
        companions.append(partial(grpc_server, plane))
    if settings.tracing == "otlp":
        companions.append(partial(traced, plane, root_ratio()))  # a bad sampler: refused here
    server = EngineServer(
        apis,
        engine,
        Lifecycle(
            settings,
            table,
            policies,
            make_api,
            targets,
            canaries=CanaryWatch(table, engine.stats, settings.canary_limits),
        ),
        companions,
        front=partial(InferenceFastPath, specs=specs),
        accelerator=device,
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
    )
    server.app.router.redirect_slashes = False
    add_error_handlers(server.app)
    add_docs(server.app, plane)
    add_server_routes(server.app, plane)
    description = "KServe V1 and V2 (Open Inference Protocol) inference for: " + ", ".join(
        f"{m.name} v{m.version}" for m in models
    )
    signatures = [m.signatures[m.at_start.version] for m in served]
    document(server.app, SERVER["name"], SERVER["version"], description, signatures)
    plane.on_model = partial(add_model_routes, server.app, plane, specs, signatures)
    return server
