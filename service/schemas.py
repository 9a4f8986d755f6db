"""The request and response bodies as pydantic models, for the OpenAPI document (/docs).

The endpoints read raw bodies (the V2 binary extension is not JSON, and protocol.py checks
JSON bodies faster and with clearer messages than a model would), so these models describe
the API rather than parse it; `document()` puts them into /openapi.json.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class Error(BaseModel):
    error: str = Field(description="what was wrong and what was expected")


class V1Request(BaseModel):
    instances: list[Any] = Field(description="instances, each nested lists of the input shape")


class V1Prediction(BaseModel):
    label: str
    index: int = Field(description="the label's column in probabilities")
    probabilities: list[float] = Field(description="one per label, summing to 1")


class V1Response(BaseModel):
    predictions: list[V1Prediction]


class V1Status(BaseModel):
    name: str
    ready: bool


class V2Tensor(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="batch first")
    data: list[Any] | None = Field(None, description="row-major values, flat or nested")
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_size": bytes} when the values follow the JSON header'
    )


class V2RequestedOutput(BaseModel):
    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data": true}')


class V2InferRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the response")
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_output": true}')
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(examples=["onnxruntime_onnx", "pytorch_libtorch"])
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]
    labels: list[str]


MODELS = (Error, V1Request, V1Response, V1Status, V2InferRequest, V2InferResponse, V2ModelMetadata)
ERRORS = {
    "400": "invalid request",
    "401": "API key missing or wrong",
    "404": "unknown model or version",
    "413": "body too large",
    "503": "queue full (Retry-After)",
    "504": "timed out",
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _body(model: type[BaseModel], binary: bool = False) -> dict:
    content = {"application/json": {"schema": _ref(model)}}
    if binary:  # the V2 binary tensor data extension
        content["application/octet-stream"] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "JSON header of Inference-Header-Content-Length bytes, "
                "then the raw little-endian tensors",
            }
        }
    return {"content": content}


def _operation(path: str) -> tuple[type[BaseModel] | None, type[BaseModel], bool] | None:
    """(request model, response model, binary?) of one endpoint path, or None if not a model's."""
    if path.endswith(":predict"):
        return V1Request, V1Response, False
    if path.endswith("/infer"):
        return V2InferRequest, V2InferResponse, True
    if path.startswith("/v1/models/"):
        return None, V1Status, False
    if path.startswith("/v2/models/") and not path.endswith("/ready"):
        return None, V2ModelMetadata, False
    return None


def document(app: FastAPI, title: str, version: str, description: str) -> None:
    """Replace the app's OpenAPI generator with one that names every body's schema."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=title, version=version, description=description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        for path, operations in schema["paths"].items():
            described = _operation(path)
            if described is None:
                continue
            request, response, binary = described
            for operation in operations.values():
                if request is not None:
                    operation["requestBody"] = {"required": True, **_body(request, binary)}
                operation["responses"] = {
                    "200": {"description": "OK", **_body(response, binary)},
                    **{code: {"description": why, **_body(Error)} for code, why in ERRORS.items()},
                }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
