"""The engine's one import of LitServe: the version check first, then the names it builds on.

EngineServer (server.py) overrides LitServer's private hooks, WorkerLoop (worker.py) is a
LitLoop, and LitSpec and WorkerSetupStatus live in LitServe's submodules: all of it is this
release's layout, so a different LitServe is refused here, naming the fix, before any of
those names is looked up.
"""

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


def status_key(api_path: str, worker_id: int) -> str:
    """A worker's key in workers_setup_status, as 0.2.19's inference_worker makes it."""
    return f"{api_path.split('/')[-1]}_{worker_id}"


__all__ = [
    "LITSERVE_VERSION",
    "LitAPI",
    "LitLoop",
    "LitServer",
    "LitSpec",
    "WorkerSetupStatus",
    "check_litserve_version",
    "status_key",
]
