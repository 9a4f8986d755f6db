"""The request and response bodies as pydantic models, for the OpenAPI document (/docs).

The endpoints read raw bodies (the V2 binary extension is not JSON, and protocol.py checks
JSON bodies faster and with clearer messages than a model would), so these models describe
the API rather than parse it; openapi.py puts them into /openapi.json.
"""

from typing import Any

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
