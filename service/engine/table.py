"""Which model versions have inference workers, and what the main process says of each model,
in shared memory made before LitServe forks its HTTP processes.

The main process writes it: it places a version in a free slot (LOADING), lets it take traffic
once its workers are ready (SERVING), and retires it (RETIRING, then FREE once its admitted
requests are answered). Every write bumps `generation`; an HTTP process rereads the table when
the generation it last read has changed, and so learns the versions loaded since it was forked.

Per model, the HTTP processes ask for Triton's load and unload here (`ask`), and the main
process answers (`answer`) with the outcome and, for a failure, its reason.
"""

import asyncio
import multiprocessing as mp
import time
from enum import IntEnum
from typing import NamedTuple

CAPACITY = 64  # versions with workers at once, across every model
NOTE_BYTES = 1024  # the longest reason kept for a failed load


class State(IntEnum):
    FREE = 0
    LOADING = 1  # its workers are starting; it takes no traffic
    SERVING = 2
    RETIRING = 3  # it takes no new requests; its workers stop once the admitted ones are answered


class Slot(NamedTuple):
    index: int
    model: str
    version: int
    state: State

    @property
    def key(self) -> str:
        """The engine's name for the version: "mlp:2"."""
        return f"{self.model}:{self.version}"


class Action(IntEnum):
    LOAD = 1
    UNLOAD = 2


class Outcome(NamedTuple):
    ok: bool
    reason: str  # why it failed; empty when it did not


class VersionTable:
    WIDTH = 3  # cells per slot: model index + 1 (0: free), version, state

    def __init__(self, models: list[str], capacity: int = CAPACITY) -> None:
        self.models = list(models)
        self.capacity = capacity
        ctx = mp.get_context("spawn")  # picklable into LitServe's spawned workers too
        # Raw cells and one plain lock: a synchronized Array takes its lock again (in Python)
        # for every item read, and the HTTP processes read a slot on every request.
        self.cells = ctx.RawArray("q", capacity * self.WIDTH)
        self.cells_lock = ctx.Lock()
        self.generation = ctx.RawValue("q", 0)
        n = len(self.models)
        self.unloaded = ctx.RawArray("b", n)  # 1: unloaded through the API; not loaded again
        self.asks = ctx.Array("q", n * 2)  # per model: (action, request id), ids counting up
        self.answered = ctx.RawArray("q", n * 2)  # per model: (request id answered, ok)
        self.failed = ctx.RawArray("q", n)  # per model: the version that last failed to load
        self.reasons = ctx.RawArray("c", n * NOTE_BYTES)  # per model: why it failed

    # -- slots ---------------------------------------------------------------------------

    def read(self, index: int) -> Slot:
        with self.cells_lock:
            model, version, state = self.cells[index * self.WIDTH : (index + 1) * self.WIDTH]
        return Slot(index, self.models[model - 1] if model else "", version, State(state))

    def slots(self) -> list[Slot]:
        """Every slot in use."""
        with self.cells_lock:
            cells = self.cells[:]
        found = []
        for index in range(self.capacity):
            model, version, state = cells[index * self.WIDTH : (index + 1) * self.WIDTH]
            if state != State.FREE:
                found.append(Slot(index, self.models[model - 1], version, State(state)))
        return found

    def claim(self, model: str, version: int) -> int:
        """A free slot for a new version, LOADING (main process only)."""
        used = {slot.index for slot in self.slots()}
        free = next((i for i in range(self.capacity) if i not in used), None)
        if free is None:
            raise RuntimeError(
                f"cannot load model '{model}' version {version}: {self.capacity} versions "
                "are loaded already, the most at once; unload one first"
            )
        self._write(free, self.models.index(model) + 1, version, State.LOADING)
        return free

    def set_state(self, index: int, state: State) -> None:
        slot = self.read(index)
        model = self.models.index(slot.model) + 1 if state != State.FREE else 0
        self._write(index, model, slot.version if model else 0, state)

    def _write(self, index: int, model: int, version: int, state: State) -> None:
        with self.cells_lock:
            self.cells[index * self.WIDTH : (index + 1) * self.WIDTH] = [model, version, state]
            self.generation.value += 1

    # -- load and unload, asked by an HTTP process, answered by the main one -------------

    def is_unloaded(self, model: str) -> bool:
        """Unloaded through the repository API, until loaded again."""
        return bool(self.unloaded[self.models.index(model)])

    def set_unloaded(self, model: str, unloaded: bool) -> None:
        self.unloaded[self.models.index(model)] = int(unloaded)

    def ask(self, model: str, action: Action) -> int:
        i = self.models.index(model)
        with self.asks.get_lock():
            self.asks[2 * i] = action
            self.asks[2 * i + 1] += 1
            return self.asks[2 * i + 1]

    def pending(self, model: str) -> tuple[Action, int] | None:
        """The newest request for the model not yet answered: (action, id)."""
        i = self.models.index(model)
        with self.asks.get_lock():
            action, request = self.asks[2 * i], self.asks[2 * i + 1]
        return (Action(action), request) if request > self.answered[2 * i] else None

    def answer(self, model: str, request: int, ok: bool) -> None:
        i = self.models.index(model)
        self.answered[2 * i + 1] = int(ok)
        self.answered[2 * i] = request  # last: the waiting process reads `ok` after it

    async def outcome(self, model: str, request: int, timeout: float) -> Outcome | None:
        """The main process's answer to request `request`, or None if none came in time."""
        i = self.models.index(model)
        deadline = time.monotonic() + timeout
        while self.answered[2 * i] < request:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        ok = bool(self.answered[2 * i + 1])
        return Outcome(ok, "" if ok else self.failure(model)[1])

    # -- failed loads ----------------------------------------------------------------------

    def fail(self, model: str, version: int, reason: str) -> None:
        """Note a version that could not be loaded, and why (main process)."""
        i = self.models.index(model)
        note = reason.encode()[: NOTE_BYTES - 1] + b"\0"
        self.reasons[i * NOTE_BYTES : i * NOTE_BYTES + len(note)] = note
        self.failed[i] = version

    def failure(self, model: str) -> tuple[int, str]:
        """(the version that last failed to load, why); (0, "") when none has."""
        i = self.models.index(model)
        note = self.reasons[i * NOTE_BYTES : (i + 1) * NOTE_BYTES].split(b"\0", 1)[0]
        return self.failed[i], note.decode(errors="replace")
