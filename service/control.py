"""Triton's model repository extension, for HTTP and gRPC alike: the index of every version
and its state, and explicit load and unload, which the main process carries out
(lifecycle.py) while the calling process waits for its answer."""

import asyncio
import time

from .engine import Action, Engine
from .errors import BadRequest, Unavailable
from .repository import model_folders
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
    settings: Settings, engine: Engine, model: str, action: Action, known: bool
) -> None:
    """Ask the main process to load or unload `model` (`known`: this process serves it
    already; one that is not is named in the version table first, if its folder is in the
    repository); returns once it has, or raises saying why it could not."""
    verb = action.name.lower()
    if settings.model_control != "explicit":
        raise BadRequest(
            f"cannot {verb} '{model}': the model control mode is "
            f"{settings.model_control} (TENSORGATE_MODEL_CONTROL=explicit allows it)"
        )
    if not known:
        if model not in model_folders(settings.repository):
            raise BadRequest(f"cannot {verb} '{model}': no such model in the repository")
        try:
            engine.table.add_model(model)
        except (ValueError, RuntimeError) as e:
            raise BadRequest(f"cannot {verb} '{model}': {e}") from None
    request_id = engine.table.ask(model, action)
    outcome = await engine.table.outcome(model, request_id, LOAD_WAIT)
    if outcome is None:
        raise Unavailable(f"model '{model}': no answer to the {verb} within {LOAD_WAIT:g} s")
    if not outcome.ok:
        raise BadRequest(f"failed to load '{model}': {outcome.reason}")


async def until_ready(model: ModelVersions) -> None:
    """Until this HTTP process reaches the workers of the versions now serving."""
    deadline = time.monotonic() + READY_WAIT
    while not await model.ready():
        if time.monotonic() > deadline:
            raise Unavailable(f"model '{model.name}' loaded but not reachable in {READY_WAIT} s")
        await asyncio.sleep(0.05)
