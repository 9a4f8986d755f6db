"""Triton's extensions, in Triton's JSON names: the model configuration
(`GET /v2/models/{m}/config`, derived from the manifest and the settings: the fields
perf_analyzer, model-analyzer and tritonclient read) and the model repository index
(`POST /v2/repository/index`, read from the repository and the version table at each
call)."""

from artifacts.manifest import ARTIFACTS, TensorSpec, versions

from .admission import Priorities
from .engine import Slot, State
from .repository import ServedModel, model_folders
from .served import ModelVersions
from .settings import Settings


def _tensor(spec: TensorSpec) -> dict:
    return {
        "name": spec.name,
        "data_type": f"TYPE_{spec.datatype}",  # Triton's config enum: TYPE_FP32, TYPE_INT64...
        "format": "FORMAT_NONE",
        "dims": spec.shape[1:],  # the batch axis is implied by max_batch_size > 0
    }


def _priorities(priorities: Priorities) -> dict:
    """As Triton writes them: nothing when priorities are off."""
    if priorities.levels == 1:
        return {}
    return {
        "priority_levels": priorities.levels,
        "default_priority_level": priorities.default,
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
            **_priorities(settings.priorities(model.name)),
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


async def index_entries(model: ModelVersions, settings: Settings) -> list[dict]:
    """A served model's versions, in the repository or still with workers, each with its
    state (READY, LOADING or UNAVAILABLE) and why."""
    model.refresh()
    slots = model.slots()
    on_disk = tuple(versions(settings.repository / model.name))
    entries = []
    for version in sorted(set(on_disk) | set(slots)):
        state, reason = await _state(model, settings, version, slots.get(version), on_disk)
        entries.append(
            {"name": model.name, "version": str(version), "state": state, "reason": reason}
        )
    return entries


async def _state(
    model: ModelVersions, settings: Settings, version: int, slot: Slot | None, on_disk: tuple
) -> tuple[str, str]:
    if slot is not None and slot.state == State.SERVING:
        if await model.ready(version):
            return "READY", ""
        return "LOADING", "restarting a worker"
    if slot is not None and slot.state == State.LOADING:
        return "LOADING", "verified; loading and warming up"
    if slot is not None:
        return "UNAVAILABLE", "unloading: answering the requests it admitted"
    failed, failure = model.failure()
    if model.is_unloaded():
        return "UNAVAILABLE", "unloaded"
    if failed == version:
        return "UNAVAILABLE", f"failed to load: {failure}"
    if version not in model.policy.select(on_disk):
        return "UNAVAILABLE", "not served by the version policy (TENSORGATE_VERSION_POLICY)"
    return "UNAVAILABLE", NOT_LOADED[settings.model_control].format(model=model.name)


NOT_LOADED = {  # why a version the policy picks has no workers, by model control mode
    "none": "exported after the server started: restart it to serve this version, "
    "or serve with TENSORGATE_MODEL_CONTROL=poll or explicit",
    "poll": "not loaded yet: the next repository poll loads it",
    "explicit": "not loaded yet: POST /v2/repository/models/{model}/load loads it",
}


def unserved_entries(settings: Settings, served: set[str]) -> list[dict]:
    """The repository's other models: UNAVAILABLE, and why."""
    repository = settings.repository
    reason = NOT_LOADED[settings.model_control]
    if settings.pinned is not None and settings.model_control != "explicit":
        reason = "not served (TENSORGATE_MODELS)"  # the poller adopts no model left out
    return [
        {"name": name, "version": str(v), "state": "UNAVAILABLE"}
        | {"reason": reason.format(model=name)}
        for name in model_folders(repository)
        if name not in served
        for v in versions(repository / name)
    ]
