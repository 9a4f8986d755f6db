"""The request and response bodies, for the OpenAPI document (/docs): responses as pydantic
models, requests as JSON Schemas built per model from its signature.

The endpoints read raw bodies (the V2 binary extension is not JSON, and protocol.py checks
JSON bodies faster and with clearer messages than a model would), so these describe the API
rather than parse it; openapi.py puts them into /openapi.json. Request schemas are as strict
as the validation where JSON Schema can say it: a V1 body's instances have the model's exact
nested shape of values in their datatype's range, a V2 tensor the input's name, datatype and
shape past the batch axis. What it cannot say (that a V2 tensor's data holds as many values as its
shape; the binary extension's header) the service checks, answering 400.
"""

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .protocol import Signature, Tensor


class Error(BaseModel):
    error: str = Field(description="what was wrong and what was expected")


class V1Prediction(BaseModel):
    label: str
    index: int = Field(description="the label's column in probabilities")
    probabilities: list[float] = Field(description="one per label, summing to 1")


class V1Response(BaseModel):
    predictions: list[V1Prediction | Any] = Field(
        description="with labels, a label, index and probabilities per instance; without, "
        "the instance's output row, or an object of every output's rows by name"
    )
    model_name: str
    model_version: str = Field(description="the version that computed the predictions")


class TritonTensorConfig(BaseModel):
    name: str
    data_type: str = Field(examples=["TYPE_FP32"])
    format: str = "FORMAT_NONE"
    dims: list[int] = Field(description="the shape past the batch axis")


class TritonModelConfig(BaseModel):
    """Triton's model configuration extension, as perf_analyzer reads it."""

    name: str
    platform: str = Field(examples=["onnxruntime_onnx", "pytorch_libtorch"])
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[TritonTensorConfig]
    output: list[TritonTensorConfig]
    dynamic_batching: dict[str, Any]
    instance_group: list[dict[str, Any]]
    default_model_filename: str
    parameters: dict[str, Any]


class Duration(BaseModel):
    count: int
    ns: int


class TritonModelStats(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch; 0: never")
    inference_count: int = Field(description="instances computed")
    execution_count: int = Field(description="batches run")
    inference_stats: dict[str, Duration] = Field(
        description="success, fail, queue, compute_input, compute_infer, compute_output, "
        "cache_hit, cache_miss: requests and their cumulative nanoseconds"
    )
    batch_stats: list[dict[str, Any]]


class TritonStatistics(BaseModel):
    """Triton's statistics extension."""

    model_stats: list[TritonModelStats]


class IndexEntry(BaseModel):
    """One version in Triton's model repository index."""

    name: str
    version: str
    state: str = Field(examples=["READY", "LOADING", "UNAVAILABLE"])
    reason: str


class ShadowSummary(BaseModel):
    """The shadow version and its comparisons with the answers so far (shadow.py)."""

    version: str
    fraction: float = Field(description="share of answered requests copied to it")
    agree: int
    disagree: int
    error: int = Field(description="the shadow failed to compute the copy")
    dropped: int = Field(description="not sent: the shadow was busy or not serving")
    max_difference: float | None = Field(
        description="largest absolute difference of an output element; null: shapes differed"
    )


class Traffic(BaseModel):
    """Where a model's requests that name no version go."""

    weights: dict[str, int] = Field(
        description="version: weight, as set; empty: the highest version",
        examples=[{"1": 90, "2": 10}],
    )
    routed: dict[str, float] = Field(
        description="each serving version's share of those requests now",
        examples=[{"1": 0.9, "2": 0.1}],
    )
    rollback: str | None = Field(description="why a canary was last rolled back; null: none")
    shadow: ShadowSummary | None


class TrafficChange(BaseModel):
    """New weights and/or a new shadow; a key left out is unchanged."""

    model_config = ConfigDict(extra="forbid")
    weights: dict[str, int] | None = Field(None, examples=[{"1": 90, "2": 10}])
    shadow: dict[str, float] | None = Field(
        None,
        description='{"version": V, "fraction": F}, 0 < F <= 1; null: no shadow',
        examples=[{"version": 2, "fraction": 0.1}],
    )


class ModelReady(BaseModel):
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


def _values(t: Tensor) -> dict:
    """A JSON Schema for one value of the tensor's datatype."""
    if t.datatype == "BOOL":
        return {"type": "boolean"}
    if t.dtype.kind in "iu":
        info = np.iinfo(t.dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    limit = float(np.finfo(t.dtype).max)
    return {"type": "number", "minimum": -limit, "maximum": limit}


def _instance(t: Tensor) -> dict:
    schema = _values(t)
    for size in reversed(t.shape):
        schema = {"type": "array", "items": schema}
        if size != -1:
            schema |= {"minItems": size, "maxItems": size}
    return schema


def v1_request(sig: Signature) -> dict:
    instances = {"type": "array", "minItems": 1, "maxItems": sig.max_instances}
    if len(sig.inputs) == 1:
        items = _instance(sig.inputs[0])
    else:  # an object of every input by name
        names = [t.name for t in sig.inputs]
        props = {t.name: _instance(t) for t in sig.inputs}
        items = {"type": "object", "required": names, "properties": props,
                 "additionalProperties": False}  # fmt: skip
    return {
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {**instances, "items": items}},
    }


def _v2_tensor(t: Tensor, sig: Signature) -> dict:
    batch = {"type": "integer", "minimum": 1, "maximum": sig.max_instances}
    dims = [batch, *({"const": d} if d != -1 else {"type": "integer"} for d in t.shape)]
    shape = {"type": "array", "prefixItems": dims, "items": False, "minItems": len(dims)}
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"const": t.name},
            "datatype": {"const": t.datatype},
            "shape": shape,
            "data": {"type": "array", "minItems": 1, "description": "row-major, flat or nested"},
            "parameters": {"type": "object"},
        },
    }


REQUEST_PARAMETERS = {
    "type": "object",
    "properties": {
        "timeout": {
            "type": "integer",
            "minimum": 0,
            "description": "microseconds: answered 504 and not computed if it passes",
        },
        "priority": {
            "type": "integer",
            "minimum": 0,
            "description": "1 is the most urgent; 0: the model's default level",
        },
    },
}


def v2_request(sig: Signature) -> dict:
    parameters = {"type": "object"}
    tensors = [_v2_tensor(t, sig) for t in sig.inputs]
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"enum": [t.name for t in sig.outputs]},
            "parameters": parameters,
        },
    }
    count = len(sig.inputs)
    items = tensors[0] if count == 1 else {"oneOf": tensors}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": REQUEST_PARAMETERS,
            "inputs": {"type": "array", "minItems": count, "maxItems": count, "items": items},
            "outputs": {"type": "array", "items": output},
        },
    }
