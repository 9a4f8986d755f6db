"""The request and response bodies, for the OpenAPI document (/docs): responses as pydantic
models, requests as JSON Schemas built per model from its signature.

The endpoints read raw bodies (the V2 binary extension is not JSON, and protocol.py checks
JSON bodies faster and with clearer messages than a model would), so these describe the API
rather than parse it; openapi.py puts them into /openapi.json. Request schemas are as strict
as the validation where JSON Schema can say it: a V1 body's instances have the model's exact
nested shape of float32-range numbers, a V2 tensor the model's name, datatype and shape past
the batch axis. What it cannot say (that a V2 tensor's data holds as many values as its
shape; the binary extension's header) the service checks, answering 400.
"""

from typing import Any

from pydantic import BaseModel, Field

from .protocol import FLOAT32_MAX, Signature

FLOAT32 = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


class Error(BaseModel):
    error: str = Field(description="what was wrong and what was expected")


class V1Prediction(BaseModel):
    label: str
    index: int = Field(description="the label's column in probabilities")
    probabilities: list[float] = Field(description="one per label, summing to 1")


class V1Response(BaseModel):
    predictions: list[V1Prediction]


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


def _instance(shape: tuple[int, ...]) -> dict:
    schema = FLOAT32
    for size in reversed(shape):
        schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
    return schema


def v1_request(sig: Signature) -> dict:
    instances = {"type": "array", "minItems": 1, "maxItems": sig.max_instances}
    return {
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {**instances, "items": _instance(sig.input_shape)}},
    }


def v2_request(sig: Signature) -> dict:
    batch = {"type": "integer", "minimum": 1, "maximum": sig.max_instances}
    dims = [batch, *({"const": size} for size in sig.input_shape)]
    shape = {"type": "array", "prefixItems": dims, "items": False, "minItems": len(dims)}
    parameters = {"type": "object"}
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"const": sig.input_name},
            "datatype": {"const": "FP32"},
            "shape": shape,
            "data": {"type": "array", "minItems": 1, "description": "row-major, flat or nested"},
            "parameters": parameters,
        },
    }
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"const": sig.output_name}, "parameters": parameters},
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": parameters,
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {"type": "array", "items": output},
        },
    }
