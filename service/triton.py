"""Triton's extensions, in Triton's JSON names: the model configuration
(`GET /v2/models/{m}/config`, derived from the manifest and the settings: the fields
perf_analyzer, model-analyzer and tritonclient read) and the model repository index
(`POST /v2/repository/index`, read from the repository at each call)."""

from pathlib import Path
from typing import TYPE_CHECKING

from artifacts.manifest import ARTIFACTS, TensorSpec, versions

from .repository import ServedModel
from .settings import Settings

if TYPE_CHECKING:  # spec.py imports this module
    from .spec import KServeSpec

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
        "version_policy": model.policy.triton(),
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


async def index_entries(spec: "KServeSpec", settings: Settings) -> list[dict]:
    """A served model's versions in the repository: served ones READY or LOADING, the others
    UNAVAILABLE, saying why."""
    entries = []
    for version in versions(settings.repository / spec.name):
        entry = {"name": spec.name, "version": str(version)}
        if version in spec.versions and spec.engine.is_unloaded(spec.versions[version].key):
            entry["state"], entry["reason"] = "UNAVAILABLE", "unloaded"
        elif version in spec.versions:
            ready = await spec.ready(version)
            entry["state"] = "READY" if ready else "LOADING"
            entry["reason"] = "" if ready else "loading, warming up or restarting"
        else:
            entry["state"] = "UNAVAILABLE"
            entry["reason"] = (
                "not served by the version policy (TENSORGATE_VERSION_POLICY)"
                if version <= max(spec.model.available)
                else "exported after the server started: restart it to serve this version"
            )
        entries.append(entry)
    return entries


def unserved_entries(repository: Path, served: set[str]) -> list[dict]:
    """The repository's other models: UNAVAILABLE."""
    folders = (p for p in repository.iterdir() if p.is_dir() and p.name not in served)
    return [
        {"name": p.name, "version": str(v), "state": "UNAVAILABLE",
         "reason": "not served (TENSORGATE_MODELS)"}
        for p in sorted(folders)
        for v in versions(p)
    ]  # fmt: skip
