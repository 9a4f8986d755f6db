"""Triton's model configuration extension (`GET /v2/models/{m}/config`), derived from the
manifest and the settings: the fields perf_analyzer, model-analyzer and tritonclient read
(max_batch_size, input and output with dims past the batch axis, dynamic_batching), in
Triton's JSON names."""

from artifacts.manifest import ARTIFACTS, TensorSpec

from .repository import ServedModel
from .settings import Settings

DATA_TYPES = {"FP32": "TYPE_FP32"}  # V2 datatype -> Triton's config enum


def _tensor(spec: TensorSpec) -> dict:
    return {
        "name": spec.name,
        "data_type": DATA_TYPES[spec.datatype],
        "format": "FORMAT_NONE",
        "dims": spec.shape[1:],  # the batch axis is implied by max_batch_size > 0
    }


def model_config(model: ServedModel, settings: Settings, device: str) -> dict:
    platform = ARTIFACTS[model.backend].platform
    return {
        "name": model.name,
        "platform": platform,
        "backend": platform.split("_")[0],  # Triton's backend: onnxruntime, pytorch
        "version_policy": {"specific": {"versions": [model.version]}},
        "max_batch_size": model.max_batch_size,
        "input": [_tensor(t) for t in model.manifest.inputs],
        "output": [_tensor(t) for t in model.manifest.outputs],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(model.batch_timeout * 1e6),
            "preserve_ordering": False,
        },
        "instance_group": [
            {
                "name": f"{model.name}_0",
                "kind": "KIND_GPU" if device.startswith("cuda") else "KIND_CPU",
                "count": settings.workers_per_device,
            }
        ],
        "default_model_filename": model.manifest.artifact(model.backend).path,
        "parameters": {"labels": {"string_value": ",".join(model.manifest.labels)}},
    }
