"""/openapi.json from the route table: each model route's request and response bodies (JSON,
and the V2 binary extension where it applies) and the errors it can answer, with the
descriptions of errors.py's classes.

Request bodies are per model (schemas.py builds them from the model's signature).
"""

import inspect

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from . import schemas
from .errors import BadRequest
from .protocol import Signature
from .routes import MODEL_ROUTES, Route
from .served import VERSION

BINARY = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": "JSON header of Inference-Header-Content-Length bytes, "
        "then the raw little-endian tensors",
    }
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(schema: dict, binary: bool) -> dict:
    content = {"application/json": {"schema": schema}}
    if binary:  # the V2 binary tensor data extension
        content["application/octet-stream"] = BINARY
    return {"content": content}


def _errors(route: Route) -> dict:
    """status -> response, one per status, each class's docstring joined; a route that names
    a version answers 400 for what is no version number."""
    described: dict[str, list[str]] = {}
    versioned = (BadRequest,) if "{version}" in route.path else ()
    for error in dict.fromkeys((*route.errors, *versioned)):
        described.setdefault(str(error.status), []).append(inspect.getdoc(error))
    return {
        status: {"description": " / ".join(why), **_content(_ref(schemas.Error), False)}
        for status, why in sorted(described.items())
    }


def _operation(route: Route, sig: Signature) -> dict:
    ok = {"description": "OK", **_content(_ref(route.response), route.binary)}
    operation = {"responses": {"200": ok, **_errors(route)}}
    if route.request is not None:
        body = _content(route.request(sig), route.binary)
        operation["requestBody"] = {"required": True, **body}
    return operation


def document(
    app: FastAPI, title: str, version: str, description: str, models: list[Signature]
) -> None:
    """Replace the app's OpenAPI generator with one that takes each model route's bodies and
    errors from the route table."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=title, version=version, description=description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        used = {schemas.Error} | {r.response for r in MODEL_ROUTES}
        for model in sorted(used, key=lambda m: m.__name__):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        for route in MODEL_ROUTES:
            for sig in models:
                path = route.path.format(model=sig.model, version="{version}")
                operation = schema["paths"].get(path, {}).get(route.method.lower())
                if operation is not None:
                    operation.update(_operation(route, sig))
                    # the handlers' optional `version` is a path parameter, never a query one
                    params = operation.get("parameters", [])
                    operation["parameters"] = [p for p in params if p["in"] == "path"]
        names = sorted(sig.model for sig in models)
        path_schemas = {
            "model": {"type": "string", "enum": names},
            "version": {"type": "string", "pattern": f"^{VERSION.pattern}$"},
        }
        for operations in schema["paths"].values():  # e.g. /v2/repository/models/{model}/load
            for operation in operations.values():
                for param in operation.get("parameters", []):
                    if param["in"] == "path" and param["name"] in path_schemas:
                        param["schema"] = path_schemas[param["name"]]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
