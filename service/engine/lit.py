"""The engine's one seam to LitServe 0.2.19: the version check first, then everything that
knows this release's internals.

- `ServerHooks` is LitServer with the hooks the engine replaces turned into named steps
  (`setup_status`, `prepare`, `workers_launched`, `wait_for_workers`, `http_process`,
  `app_built`, `http_started`, `start_supervision`, `drain`, `interrupted`) and what the
  engine needs of it as plain methods (`add_api`, `relaunch`, `relaunch_http`,
  `workers_per_api`, `setup_states`, `shutdown_event`); EngineServer (server.py) implements
  the steps and touches no LitServer name but its constructor, `run` and `app`;
- `EngineLoop` takes LitServe's positional call of a LitAPI's loop and hands the engine's
  loop (worker.py) the api, the worker id and a way to say that its socket listens;
- `SetupStatus` is LitServe's `workers_setup_status` mapping, its keys and states, kept in
  shared memory instead of a Manager process's dict; `IdleTransport` stands in for
  LitServe's response transport.

A different LitServe is refused here, naming the fix, before any of these names is looked up.
"""

import asyncio
import copy
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import NamedTuple

import litserve as ls
import uvicorn

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
from litserve.server import _Server  # noqa: E402
from litserve.specs.base import LitSpec  # noqa: E402
from litserve.utils import WorkerSetupStatus  # noqa: E402

LitAPI = ls.LitAPI
LitServer = ls.LitServer


LISTENING = "listening"  # the engine's own state: written once a worker's socket is open


def http_process_index() -> int:
    """This HTTP process's number, 0 to num_api_servers - 1, as LitServe's `_Server.run`
    tells it; 0 outside an HTTP process."""
    return int(os.environ.get("LITSERVE_WORKER_ID", "0"))


class HttpArgs(NamedTuple):
    """What 0.2.19's `_start_server` was given, to start an HTTP process again."""

    port: int
    log_level: str
    sockets: list
    kind: str  # "process" or "thread"
    kwargs: dict  # uvicorn's settings


class StatusKey(NamedTuple):
    """A worker's key in workers_setup_status, "{endpoint}_{worker_id}", as 0.2.19's
    inference_worker makes it; the endpoint is the api_path's last segment."""

    endpoint: str
    worker_id: int

    @staticmethod
    def endpoint_of(api_path: str) -> str:
        return api_path.split("/")[-1]

    @classmethod
    def of(cls, api_path: str, worker_id: int) -> "StatusKey":
        return cls(cls.endpoint_of(api_path), worker_id)

    @classmethod
    def parse(cls, key: str) -> "StatusKey":
        endpoint, _, worker_id = key.rpartition("_")
        return cls(endpoint, int(worker_id))

    def __str__(self) -> str:
        return f"{self.endpoint}_{self.worker_id}"


class SetupStatus:
    """LitServe's `workers_setup_status` mapping ("{endpoint}_{worker_id}" -> state), kept in
    shared memory instead of a Manager process's dict, with cells for every slot of the
    version table. A spawned worker gets the endpoints bound when it was started.

    LitServe writes READY once the LitAPI's setup returns, before the loop opens the worker's
    socket; the loop then writes LISTENING (EngineLoop). A version takes traffic only once
    every worker is LISTENING: on READY an HTTP process could not yet connect, and a version
    loaded while serving answered 503 in that gap."""

    STATES = (
        WorkerSetupStatus.STARTING,
        WorkerSetupStatus.READY,
        WorkerSetupStatus.ERROR,
        WorkerSetupStatus.FINISHED,
        LISTENING,
    )

    def __init__(self, capacity: int, workers: int) -> None:
        self.workers = workers
        self.slots: dict[str, int] = {}  # endpoint (a version's key) -> its table slot
        self.codes = mp.get_context("spawn").Array("b", capacity * workers)

    def bind(self, api_path: str, slot: int) -> None:
        endpoint = StatusKey.endpoint_of(api_path)
        self.slots = {e: s for e, s in self.slots.items() if s != slot} | {endpoint: slot}

    def state(self, api_path: str, worker_id: int) -> str:
        return self[str(StatusKey.of(api_path, worker_id))]

    def _cell(self, key: str) -> int:
        endpoint, worker_id = StatusKey.parse(key)
        return self.slots[endpoint] * self.workers + worker_id

    def __setitem__(self, key: str, state: str) -> None:
        self.codes[self._cell(key)] = self.STATES.index(state)

    def __getitem__(self, key: str) -> str:
        return self.STATES[self.codes[self._cell(key)]]


class IdleTransport:
    """LitServe's response reader task still runs in each HTTP process; answers come on the
    engine's sockets, so it waits here until it is cancelled at shutdown."""

    async def areceive(self, *args, **kwargs) -> None:
        await asyncio.get_running_loop().create_future()

    def send(self, *args, **kwargs) -> None:
        raise RuntimeError("tensorgate's workers answer on the engine's sockets")

    def close(self, **kwargs) -> None:
        pass


class EngineLoop(LitLoop):
    """0.2.19's inference_worker calls a LitAPI's loop as (lit_api, device, worker_id,
    request_queue, transport, workers_setup_status, callback_runner) once `setup` returned."""

    def __call__(
        self,
        lit_api: LitAPI,
        device: str,
        worker_id: int,
        request_queue,
        transport,
        workers_setup_status: SetupStatus,
        *args,
        **kwargs,
    ) -> None:
        def listening() -> None:
            workers_setup_status[str(StatusKey.of(lit_api.api_path, worker_id))] = LISTENING

        self.serve_worker(lit_api, worker_id, listening)

    def serve_worker(self, lit_api, worker_id: int, listening: Callable[[], None]) -> None:
        """Serve until the process is stopped; call `listening` once the socket is open."""
        raise NotImplementedError


class ServerHooks(LitServer):
    """LitServer with the private hooks the engine replaces, each turned into a named step.

    Only this class names LitServer's attributes and methods past its constructor and `run`;
    its subclass (EngineServer) uses the steps, `app` and the properties below."""

    def __init__(self, lit_apis: list[LitAPI], http_grace: float, **kwargs) -> None:
        """`http_grace`: seconds each HTTP process (uvicorn) may take to finish its requests
        once told to stop."""
        super().__init__(lit_apis, **kwargs)
        # LitServe's own "/" (plain text), "/health" and "/info" go: the service answers
        # KServe's and Triton's routes instead, so a client meets one convention
        own = {"/", self.healthcheck_path, self.info_path}
        self.app.router.routes = [r for r in self.app.routes if getattr(r, "path", None) not in own]
        self.uvicorn_graceful_timeout = self.http_grace = http_grace

    def run(self, *args, **kwargs) -> None:
        """LitServe's run, which drains only on KeyboardInterrupt: SIGTERM (docker stop,
        Kubernetes) becomes one in the main process. The forked HTTP processes inherit the
        handler until uvicorn installs its own, which drain them."""
        main = os.getpid()

        def interrupt(signum: int, frame) -> None:
            if os.getpid() == main:
                raise KeyboardInterrupt
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, interrupt)
        try:
            super().run(*args, **kwargs)
        except KeyboardInterrupt:  # stopped before LitServe's own handling began
            self.interrupted()

    def _init_manager(self, num_api_servers: int) -> None:
        # no Manager process and no Manager queues: requests travel on the engine's sockets
        self.workers_setup_status = self.setup_status()
        self._shutdown_event = mp.get_context("spawn").Event()
        for api in self.litapi_connector:
            self._prepare_api(api)
        self._transport = IdleTransport()
        return None

    def _prepare_api(self, api: LitAPI) -> None:
        self.litapi_request_queues[api.api_path] = None  # the engine's sockets instead
        self.prepare(api)

    def add_api(self, api: LitAPI) -> None:
        """Start the workers of a LitAPI made while serving, set up as the first one was."""
        first = self.litapi_connector.lit_apis[0]
        api.pre_setup()
        api.loop.pre_setup(api)
        api.request_timeout = first.request_timeout
        per_device = self._workers_per_device_by_api_path
        per_device[api.api_path] = per_device[first.api_path]
        self._prepare_api(api)
        self.launch_inference_worker(api)

    def workers_per_api(self) -> int:
        """Inference workers per LitAPI (every version gets the first one's)."""
        first = self.litapi_connector.lit_apis[0]
        return len(self._inference_workers_config_for_api(first.api_path))

    def launch_inference_worker(self, lit_api: LitAPI) -> list[mp.Process]:
        processes = super().launch_inference_worker(lit_api)
        self.workers_launched(lit_api, processes)
        return processes

    def relaunch(self, api: LitAPI, worker_id: int) -> mp.Process:
        """A new process for one worker of a LitAPI, in place of one that died."""
        return self.launch_single_inference_worker(api, worker_id)

    @property
    def setup_states(self) -> "SetupStatus":
        return self.workers_setup_status

    @property
    def shutdown_event(self):
        return self._shutdown_event

    def verify_worker_status(self) -> None:
        self.wait_for_workers()

    @asynccontextmanager
    async def lifespan(self, app):
        """LitServe's, with the engine's own context inside it (uvicorn runs this in each
        HTTP process)."""
        async with super().lifespan(app), self.http_process():
            yield

    def _prepare_app_run(self, app) -> None:
        super()._prepare_app_run(app)
        self.app_built(app)

    def _start_server(self, port, num_servers, log_level, sockets, kind, **kwargs):
        # LitServer.run gave LitServe's logger a handler and format of its own: its records
        # go through the root logger instead, in the service's format (text or JSON)
        litserve_logger = logging.getLogger("litserve")
        for handler in litserve_logger.handlers[:]:
            litserve_logger.removeHandler(handler)
        litserve_logger.propagate = True
        self._http_args = HttpArgs(port, log_level, sockets, kind, kwargs)
        workers = super()._start_server(port, num_servers, log_level, sockets, kind, **kwargs)
        self.http_started(sockets)
        return workers

    def relaunch_http(self, index: int) -> mp.Process:
        """A new HTTP process in place of the one with this index that died, made as
        0.2.19's `_start_server` makes each (it numbers them from 0 and tells each its
        number in LITSERVE_WORKER_ID)."""
        port, log_level, sockets, kind, kwargs = self._http_args
        if kind != "process":
            raise RuntimeError("only HTTP server processes can be replaced")
        app = copy.copy(self.app)
        self._prepare_app_run(app)
        config = uvicorn.Config(
            app=app,
            host="0.0.0.0",
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=self.uvicorn_graceful_timeout,
            **kwargs,
        )
        server = _Server(config=config)
        process = mp.get_context("fork").Process(
            target=server.run, args=(index, sockets), name=f"LitServer-{index}"
        )
        process.start()
        return process

    def _start_worker_monitoring(self, manager, uvicorn_workers: dict) -> None:
        self.start_supervision(list(uvicorn_workers.values()))

    def _perform_graceful_shutdown(self, manager, uvicorn_workers: dict, reason="") -> None:
        self.drain(list(uvicorn_workers.values()))

    # -- the engine's steps (EngineServer) -------------------------------------------------

    def setup_status(self) -> "SetupStatus":
        """The workers' setup states, before any worker starts."""
        raise NotImplementedError

    def prepare(self, api: LitAPI) -> None:
        """What the engine knows of a LitAPI before its workers launch."""

    def workers_launched(self, api: LitAPI, processes: list[mp.Process]) -> None:
        """A LitAPI's worker processes have started (at start-up, or loaded while serving)."""

    def wait_for_workers(self) -> None:
        """Return once every worker started with the server is ready to serve."""

    def http_process(self) -> AbstractAsyncContextManager:
        """What each HTTP process runs for its lifetime, inside LitServe's lifespan."""
        raise NotImplementedError

    def app_built(self, app) -> None:
        """Each HTTP process's FastAPI app, once LitServe has added its routes."""

    def http_started(self, sockets: list) -> None:
        """The HTTP processes are up and hold the listening sockets."""

    def start_supervision(self, http_processes: list[mp.Process]) -> None:
        """Watch the workers and the HTTP processes (LitServe's own monitor is replaced)."""
        raise NotImplementedError

    def drain(self, http_processes: list[mp.Process]) -> None:
        """Stop on a signal or a failure: answer what was accepted, then stop the workers."""
        raise NotImplementedError

    def interrupted(self) -> None:
        """Stopped by a signal before LitServe's drain could run (workers still loading)."""


__all__ = [
    "LISTENING",
    "LITSERVE_VERSION",
    "EngineLoop",
    "LitAPI",
    "LitSpec",
    "ServerHooks",
    "SetupStatus",
    "StatusKey",
    "WorkerSetupStatus",
    "check_litserve_version",
    "http_process_index",
]
