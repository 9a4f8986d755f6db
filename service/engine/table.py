"""Which model versions have inference workers, and what the main process says of each model,
in shared memory made before LitServe forks its HTTP processes.

The main process writes it: it places a version in a free slot (LOADING), lets it take traffic
once its workers are ready (SERVING), and retires it (RETIRING, then FREE once its admitted
requests are answered). Every write bumps `generation`; an HTTP process rereads the table when
the generation it last read has changed, and so learns the versions loaded since it was forked.

Per model, the HTTP processes ask for Triton's load and unload here (`ask`), and the main
process answers (`answer`) with the outcome and, for a failure, its reason.

The models are named here too, in the order they were added: those served at start, then any
added while serving (a new folder the poller finds, or an explicit load of one), by the main
process or an HTTP process. A name is never removed (an unloaded model keeps its row), so a
process's copy of the names is current while their count is unchanged.
"""

import asyncio
import ctypes
import multiprocessing as mp
import time
from enum import IntEnum
from typing import NamedTuple

from ..traffic import MAX_WEIGHTED, Shadow
from .locks import ProcessLock

CAPACITY = 64  # versions with workers at once, across every model
MODEL_CAPACITY = 256  # models ever named while the server runs
NAME_BYTES = 128  # the longest model name, in UTF-8
NOTE_BYTES = 1024  # the longest reason kept for a failed load or a rollback


def version_key(model: str, version: int) -> str:
    """The engine's name for a model version, "mlp:2": its workers', its sockets' and its
    LitAPI's (as LitServe's api_path)."""
    return f"{model}:{version}"


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
        return version_key(self.model, self.version)


class Action(IntEnum):
    LOAD = 1
    UNLOAD = 2


class Outcome(NamedTuple):
    ok: bool
    reason: str  # why it failed; empty when it did not


class SlotCells(ctypes.Structure):
    """One slot of the table: a version with workers, or free."""

    _fields_ = [
        ("model", ctypes.c_int64),  # the model's index in VersionTable.models + 1; 0: free
        ("version", ctypes.c_int64),
        ("state", ctypes.c_int64),  # a State
    ]


class ModelCells(ctypes.Structure):
    """What the HTTP processes ask of one model, and what the main process answers."""

    _fields_ = [
        ("name", ctypes.c_char * NAME_BYTES),  # NUL-terminated UTF-8
        ("unloaded", ctypes.c_int64),  # 1: unloaded through the API; not loaded again
        ("ask_action", ctypes.c_int64),  # the newest request: an Action
        ("ask_id", ctypes.c_int64),  # its id; ids count up
        ("answered_id", ctypes.c_int64),  # the newest request answered
        ("answered_ok", ctypes.c_int64),
        ("failed", ctypes.c_int64),  # the version that last failed to load
        ("reason", ctypes.c_char * NOTE_BYTES),  # why, NUL-terminated
        # the traffic weights of unversioned requests (traffic.py): count, versions, weights
        ("weighted", ctypes.c_int64),
        ("weight_versions", ctypes.c_int64 * MAX_WEIGHTED),
        ("weight_values", ctypes.c_int64 * MAX_WEIGHTED),
        ("rollback", ctypes.c_char * NOTE_BYTES),  # why a canary was last rolled back
        ("shadow_version", ctypes.c_int64),  # the shadow version (shadow.py); 0: none
        ("shadow_fraction", ctypes.c_double),  # the share of answered requests it computes
    ]


class VersionTable:
    def __init__(self, models: list[str], capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        ctx = mp.get_context("spawn")  # picklable into LitServe's spawned workers too
        # Raw cells and one plain lock: a synchronized Array takes its lock again (in Python)
        # for every item read, and the HTTP processes read a slot on every request.
        self.cells = ctx.RawArray(SlotCells, capacity)
        self.cells_lock = ProcessLock()
        self.generation = ctx.RawValue("q", 0)
        self.per_model = ctx.RawArray(ModelCells, MODEL_CAPACITY)
        self.named = ctx.RawValue("q", 0)  # how many rows of per_model have a name
        self.asks_lock = ProcessLock()
        self._names: list[str] = []  # this process's copy of the names
        for model in models:
            self.add_model(model)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_names": []}

    @property
    def models(self) -> list[str]:
        """Every model named, in the order added."""
        if len(self._names) != self.named.value:
            with self.cells_lock:
                count = self.named.value
                self._names = [self.per_model[i].name.decode() for i in range(count)]
        return self._names

    def add_model(self, model: str) -> None:
        """Name a model added while serving (a no-op for one already named)."""
        encoded = model.encode()
        if len(encoded) >= NAME_BYTES:
            raise ValueError(f"model name {model!r} is longer than {NAME_BYTES - 1} bytes")
        with self.cells_lock:
            count = self.named.value
            if any(self.per_model[i].name == encoded for i in range(count)):
                return
            if count == MODEL_CAPACITY:
                raise RuntimeError(f"{MODEL_CAPACITY} models are named already, the most")
            self.per_model[count].name = encoded
            self.named.value = count + 1
            self.generation.value += 1

    def _model(self, model: str) -> ModelCells:
        return self.per_model[self.models.index(model)]  # a view of the shared memory

    # -- slots ---------------------------------------------------------------------------

    def read(self, index: int) -> Slot:
        with self.cells_lock:
            cells = self.cells[index]
            model, version, state = cells.model, cells.version, cells.state
        return Slot(index, self.models[model - 1] if model else "", version, State(state))

    def slots(self) -> list[Slot]:
        """Every slot in use."""
        with self.cells_lock:
            copy = (SlotCells * self.capacity).from_buffer_copy(self.cells)
        return [
            Slot(index, self.models[cells.model - 1], cells.version, State(cells.state))
            for index, cells in enumerate(copy)
            if cells.state != State.FREE
        ]

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
            self.cells[index] = SlotCells(model, version, state)
            self.generation.value += 1

    # -- load and unload, asked by an HTTP process, answered by the main one -------------

    def is_unloaded(self, model: str) -> bool:
        """Unloaded through the repository API, until loaded again."""
        return bool(self._model(model).unloaded)

    def set_unloaded(self, model: str, unloaded: bool) -> None:
        self._model(model).unloaded = int(unloaded)

    def ask(self, model: str, action: Action) -> int:
        cells = self._model(model)
        with self.asks_lock:
            cells.ask_action = action
            cells.ask_id += 1
            return cells.ask_id

    def pending(self, model: str) -> tuple[Action, int] | None:
        """The newest request for the model not yet answered: (action, id)."""
        cells = self._model(model)
        with self.asks_lock:
            action, request = cells.ask_action, cells.ask_id
        return (Action(action), request) if request > cells.answered_id else None

    def answer(self, model: str, request: int, ok: bool) -> None:
        cells = self._model(model)
        cells.answered_ok = int(ok)
        cells.answered_id = request  # last: the waiting process reads `ok` after it

    async def outcome(self, model: str, request: int, timeout: float) -> Outcome | None:
        """The main process's answer to request `request`, or None if none came in time."""
        cells = self._model(model)
        deadline = time.monotonic() + timeout
        while cells.answered_id < request:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        ok = bool(cells.answered_ok)
        return Outcome(ok, "" if ok else self.failure(model)[1])

    # -- traffic weights, shared by the HTTP processes and the main process -----------------

    def weights(self, model: str) -> dict[int, int]:
        """{version: weight} for the model's unversioned requests; empty: none set."""
        cells = self._model(model)
        with self.cells_lock:
            count = cells.weighted
            return dict(
                zip(cells.weight_versions[:count], cells.weight_values[:count], strict=True)
            )

    def set_weights(self, model: str, weights: dict[int, int], rollback: str = "") -> None:
        """Replace the model's weights (at most MAX_WEIGHTED), noting why when a canary was
        rolled back; every process routes by them once it sees the new generation."""
        cells = self._model(model)
        with self.cells_lock:
            for i, (version, weight) in enumerate(weights.items()):
                cells.weight_versions[i], cells.weight_values[i] = version, weight
            cells.weighted = len(weights)
            cells.rollback = rollback.encode()[: NOTE_BYTES - 1]
            self.generation.value += 1

    def shadow(self, model: str) -> Shadow | None:
        """The model's shadow version and the fraction of requests it computes; None: none."""
        cells = self._model(model)
        with self.cells_lock:
            version, fraction = cells.shadow_version, cells.shadow_fraction
        return Shadow(version, fraction) if version else None

    def set_shadow(self, model: str, shadow: Shadow | None) -> None:
        cells = self._model(model)
        with self.cells_lock:
            cells.shadow_version, cells.shadow_fraction = shadow or (0, 0.0)
            self.generation.value += 1

    def rollback(self, model: str) -> str:
        """Why a canary of the model was last rolled back, since its weights were last set."""
        return self._model(model).rollback.decode(errors="replace")

    # -- failed loads ----------------------------------------------------------------------

    def fail(self, model: str, version: int, reason: str) -> None:
        """Note a version that could not be loaded, and why (main process)."""
        cells = self._model(model)
        cells.reason = reason.encode()[: NOTE_BYTES - 1]  # ctypes adds the NUL
        cells.failed = version

    def failure(self, model: str) -> tuple[int, str]:
        """(the version that last failed to load, why); (0, "") when none has."""
        cells = self._model(model)
        return cells.failed, cells.reason.decode(errors="replace")
