"""Triton's model repository extension, for HTTP and gRPC alike: the index of every version
and its state, and explicit load and unload, which the main process carries out
(lifecycle.py) while the calling process waits for its answer."""

import asyncio
import time

from .engine import Action, Engine
from .errors import BadRequest, Unavailable
from .settings import Settings
from .spec import KServeSpec
from .triton import index_entries, unserved_entries

LOAD_WAIT = 600  # seconds a load call waits for the main process to load the model
READY_WAIT = 5  # seconds more for this HTTP process to reach the new workers


async def index(specs: list[KServeSpec], settings: Settings, ready_only: bool) -> list[dict]:
    """Every version in the repository, read now, with its state: READY, LOADING (warming up
    or restarting) or UNAVAILABLE and why."""
    entries = [entry for spec in specs for entry in await index_entries(spec, settings)]
    entries += unserved_entries(settings.repository, {spec.name for spec in specs})
    entries.sort(key=lambda e: (e["name"], int(e["version"])))
    return [e for e in entries if e["state"] == "READY"] if ready_only else entries


async def load_or_unload(
    specs: list[KServeSpec], settings: Settings, engine: Engine, model: str, action: Action
) -> None:
    """Load or unload `model`: a load returns once its new versions serve, or raises saying
    why one could not."""
    verb = action.name.lower()
    if settings.model_control != "explicit":
        raise BadRequest(
            f"cannot {verb} '{model}': the model control mode is "
            f"{settings.model_control} (TENSORGATE_MODEL_CONTROL=explicit allows it)"
        )
    by_name = {spec.name: spec for spec in specs}
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


async def _until_ready(spec: KServeSpec) -> None:
    """Until this HTTP process reaches the workers of the versions now serving."""
    deadline = time.monotonic() + READY_WAIT
    while not await spec.ready():
        if time.monotonic() > deadline:
            raise Unavailable(f"model '{spec.name}' loaded but not reachable in {READY_WAIT} s")
        await asyncio.sleep(0.05)
