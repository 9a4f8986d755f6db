"""The engine's one import of LitServe: the version check first, then the names it builds on.

EngineServer (server.py) overrides LitServer's private hooks, WorkerLoop (worker.py) is a
LitLoop, and LitSpec and WorkerSetupStatus live in LitServe's submodules: all of it is this
release's layout, so a different LitServe is refused here, naming the fix, before any of
those names is looked up.
"""

from typing import NamedTuple

import litserve as ls

LITSERVE_VERSION = "0.2.19"


def check_litserve_version(installed: str = ls.__version__) -> None:
    if installed != LITSERVE_VERSION:
        raise ImportError(
            f"tensorgate's engine was written for litserve {LITSERVE_VERSION}, whose private "
            f"hooks it overrides; litserve {installed} is installed. "
            f"Install the tested one: pip install litserve=={LITSERVE_VERSION}"
        )


check_litserve_version()

from litserve.loops.base import LitLoop  # noqa: E402  (after the check: 0.2.19's layout)
from litserve.specs.base import LitSpec  # noqa: E402
from litserve.utils import WorkerSetupStatus  # noqa: E402

LitAPI = ls.LitAPI
LitServer = ls.LitServer


class StatusKey(NamedTuple):
    """A worker's key in workers_setup_status, "{endpoint}_{worker_id}", as 0.2.19's
    inference_worker makes it; the endpoint is the api_path's last segment."""

    endpoint: str
    worker_id: int

    @classmethod
    def parse(cls, key: str) -> "StatusKey":
        endpoint, _, worker_id = key.rpartition("_")
        return cls(endpoint, int(worker_id))

    def __str__(self) -> str:
        return f"{self.endpoint}_{self.worker_id}"


def status_endpoint(api_path: str) -> str:
    return api_path.split("/")[-1]


def status_key(api_path: str, worker_id: int) -> str:
    return str(StatusKey(status_endpoint(api_path), worker_id))


__all__ = [
    "LITSERVE_VERSION",
    "LitAPI",
    "LitLoop",
    "LitServer",
    "LitSpec",
    "StatusKey",
    "WorkerSetupStatus",
    "check_litserve_version",
    "status_endpoint",
    "status_key",
]
