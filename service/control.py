"""Triton's model repository extension, for HTTP and gRPC alike: the index of every version
and its state, and explicit load and unload, which the main process carries out
(lifecycle.py) while the calling process waits for its answer."""

import asyncio
import time

from .engine import Action, Engine
from .errors import BadRequest, Unavailable
from .served import ModelVersions
from .settings import Settings
from .triton import index_entries, unserved_entries

LOAD_WAIT = 600  # seconds a load call waits for the main process to load the model
READY_WAIT = 5  # seconds more for this HTTP process to reach the new workers


async def index(models: list[ModelVersions], settings: Settings, ready_only: bool) -> list[dict]:
    """Every version in the repository, read now, with its state: READY, LOADING (warming up
    or restarting) or UNAVAILABLE and why."""
    entries = [entry for m in models for entry in await index_entries(m, settings)]
    entries += unserved_entries(settings, {m.name for m in models})
    entries.sort(key=lambda e: (e["name"], int(e["version"])))
    return [e for e in entries if e["state"] == "READY"] if ready_only else entries


async def load_or_unload(
    models: list[ModelVersions], settings: Settings, engine: Engine, model: str, action: Action
) -> None:
    """Load or unload `model`: a load returns once its new versions serve, or raises saying
    why one could not."""
    verb = action.name.lower()
    if settings.model_control != "explicit":
        raise BadRequest(
            f"cannot {verb} '{model}': the model control mode is "
            f"{settings.model_control} (TENSORGATE_MODEL_CONTROL=explicit allows it)"
        )
    by_name = {m.name: m for m in models}
    if model not in by_name:
        raise BadRequest(
            f"cannot {verb} '{model}': only the models served since start can be loaded and "
            f"unloaded ({', '.join(sorted(by_name))}); restart to serve a new model"
        )
    request_id = engine.table.ask(model, action)
    outcome = await engine.table.outcome(model, request_id, LOAD_WAIT)
    if outcome is None:
        raise Unavailable(f"model '{model}': no answer to the {verb} within {LOAD_WAIT:g} s")
    if not outcome.ok:
        raise BadRequest(f"failed to load '{model}': {outcome.reason}")
    if action == Action.LOAD:
        await _until_ready(by_name[model])


async def _until_ready(model: ModelVersions) -> None:
    """Until this HTTP process reaches the workers of the versions now serving."""
    deadline = time.monotonic() + READY_WAIT
    while not await model.ready():
        if time.monotonic() > deadline:
            raise Unavailable(f"model '{model.name}' loaded but not reachable in {READY_WAIT} s")
        await asyncio.sleep(0.05)
