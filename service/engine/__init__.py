"""The serving engine: tensorgate's one seam to LitServe (lit.py imports it and alone names
its internals; server.py implements the steps lit.py makes of LitServer's private hooks).

Engine        the HTTP side: submit a request, readiness, drain state (client.py)
EngineServer  the LitServer with the engine's queues, supervision and drain (server.py)
WorkerLoop    the inference worker's loop, with the batching policy (worker.py)
VersionTable  which versions have workers, shared by every process (table.py)
LitAPI, LitSpec  LitServe's public base classes, from its one import
"""

from .client import Computed, Engine, Gone
from .lit import LITSERVE_VERSION, LitAPI, LitSpec
from .server import EngineServer, StartupError
from .table import Action, Slot, State, VersionTable, version_key
from .worker import Batcher, WorkerLoop

__all__ = [
    "LITSERVE_VERSION",
    "Action",
    "Batcher",
    "Computed",
    "Engine",
    "EngineServer",
    "Gone",
    "LitAPI",
    "LitSpec",
    "Slot",
    "StartupError",
    "State",
    "VersionTable",
    "WorkerLoop",
    "version_key",
]
