"""The serving engine: tensorgate's one seam to LitServe (lit.py imports it and alone names
its internals; server.py implements the steps lit.py makes of LitServer's private hooks).

Engine        the HTTP side: submit a request, readiness, drain state (client.py)
EngineServer  the LitServer with the engine's queues, supervision and drain (server.py)
WorkerLoop    the inference worker's loop, with the batching policy (worker.py)
VersionTable  which versions have workers, shared by every process (table.py)
LitSpec       LitServe's spec base class, which it keeps in a submodule
"""

from .client import Engine
from .lit import LITSERVE_VERSION, LitSpec
from .server import EngineServer, StartupError
from .table import Action, Slot, State, VersionTable
from .worker import Batcher, WorkerLoop

__all__ = [
    "LITSERVE_VERSION",
    "Action",
    "Batcher",
    "Engine",
    "EngineServer",
    "LitSpec",
    "Slot",
    "StartupError",
    "State",
    "VersionTable",
    "WorkerLoop",
]
