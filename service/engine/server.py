"""The LitServer that runs tensorgate's engine: EngineServer implements the steps that
lit.py's `ServerHooks` makes of LitServer's private hooks, and names none of them itself.

LitServe 0.2.19 still spawns the inference workers (running each LitAPI's `setup` and then
our loop), forks the uvicorn HTTP processes and owns the FastAPI app. What the engine
replaces:

- `setup_status` and `prepare`: no Manager process and no Manager queues; requests travel on
  sockets between each HTTP process and each worker (wire.py), and worker setup states live
  in shared memory (`SetupStatus`);
- `wait_for_workers`: start-up waits for every worker of every model version, and a
  version that cannot load stops the server with its name (`StartupError`);
- `workers_launched`: each version's workers are kept as a `Placement` in its slot of
  the version table; `place`, `retire` and `discard` load and unload versions while serving,
  as the service's lifecycle (the `Controller`) decides;
- `start_supervision`: a supervisor that replaces a dead worker (its requests have already
  failed in the HTTP processes, which saw its sockets close) and a dead HTTP process (forked
  again on the listening socket the main process keeps), counts restarts, gives up on one
  that keeps dying as it starts, stops a retired version's workers once its admitted
  requests are answered, and runs the controller;
- `app_built`: each HTTP process's app is `front` (the inference fast path) over FastAPI's
  middleware stack, so the hot requests skip FastAPI's own layers;
- `drain`: readiness 503, then the listener stops taking connections (listener.py) and
  every HTTP process answers what reaches the connections it has (connections.py), then the
  workers stop, bounded by the drain deadline.
"""

import contextlib
import gc
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from ..metrics import HTTP_RESTARTS, WORKER_RESTARTS, forget_process
from .client import DRAIN_POLL, Engine
from .listener import empty_before_close
from .lit import (
    LISTENING,
    LitAPI,
    ServerHooks,
    SetupStatus,
    WorkerSetupStatus,
    http_process_index,
)
from .parent import exit_with_parent
from .stats import MAX_WORKERS
from .table import State

logger = logging.getLogger(__name__)

START_FAILURES = 3  # a worker dying this many times in a row before it is ready stops the server
DRAIN_NOTICE = 0.5  # seconds between readiness going 503 and the listeners closing
SUPERVISE_EVERY = 0.5  # seconds between supervision rounds (a death wakes it at once)
STOP_WORKERS_WITHIN = 5  # seconds a worker gets after SIGTERM before SIGKILL
HTTP_SETTLED = 5.0  # seconds: an HTTP process that dies sooner after starting failed to start
QUEUE_EMPTIED_WITHIN = 1.0  # seconds the HTTP processes get at a drain to take queued connections


class StartupError(RuntimeError):
    """A model could not be loaded; the message names it."""


Companion = Callable[[], AbstractAsyncContextManager]
ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]  # (scope, receive, send)


class Controller(Protocol):
    """What decides which versions to load and retire (the service's lifecycle); the
    supervisor calls it every round, and it acts through the server's methods below."""

    def step(self, server: "EngineServer") -> None: ...


@dataclass
class Placement:
    """One version's inference workers."""

    api: LitAPI
    processes: list[mp.Process]
    failure: str = ""  # why it could not be loaded; set only while it was loading
    start_failures: list[int] = field(default_factory=list)  # per worker, deaths before ready


class EngineServer(ServerHooks):
    def __init__(
        self,
        lit_apis: list[LitAPI],
        engine: Engine,
        controller: Controller | None = None,
        companions: tuple[Companion, ...] = (),
        front: Callable[[ASGIApp], ASGIApp] | None = None,
        **kwargs,
    ) -> None:
        """`lit_apis`: one per version served from the start, each with its table slot
        (`api.slot`) claimed. `companions`: what else each HTTP process runs for its
        lifetime, on its event loop (the gRPC server). `front`: an ASGI layer that sees each
        request before FastAPI's middleware stack (error, telemetry and body-limit layers)."""
        # uvicorn's own deadline comes after ours, so that late requests answer 503 first
        super().__init__(lit_apis, http_grace=engine.drain_timeout + 5, **kwargs)
        self.engine = engine
        self.controller = controller
        self.companions = list(companions)
        self.front = front
        engine.workers = self.workers_per_api()
        if engine.workers > MAX_WORKERS:
            raise RuntimeError(
                f"{engine.workers} inference workers per model version; "
                f"at most {MAX_WORKERS} are supported"
            )
        self.exit_reason: str | None = None  # set when the server stops because of a failure
        self.placements: dict[int, Placement] = {}  # table slot -> the version's workers
        self.main_pid = os.getpid()
        self.listeners: list = []  # the listening sockets, kept to start HTTP processes again
        self.http_processes: list[mp.Process] = []  # by index (LITSERVE_WORKER_ID)
        self.http_started_at: list[float] = []
        self.http_start_failures: list[int] = []

    # -- start ---------------------------------------------------------------------------

    def setup_status(self) -> SetupStatus:
        return SetupStatus(self.engine.table.capacity, self.engine.workers)

    def prepare(self, api: LitAPI) -> None:
        self.setup_states.bind(api.api_path, api.slot)
        self.engine.stats.reset(api.slot)

    def workers_launched(self, api: LitAPI, processes: list[mp.Process]) -> None:
        self.placements[api.slot] = Placement(api, processes, "", [0] * len(processes))

    def place(self, api: LitAPI) -> None:
        """Start the workers of a version loaded while serving (its slot is LOADING)."""
        self.add_api(api)

    def progress(self, slot: int) -> bool:
        """Whether every worker of a loading version is ready; raise StartupError when one
        cannot load it (the placement's `failure` says why)."""
        placement = self.placements[slot]
        if placement.failure:
            raise StartupError(placement.failure)
        states = []
        for worker_id, process in enumerate(placement.processes):
            state = self.setup_states.state(placement.api.api_path, worker_id)
            if state == WorkerSetupStatus.ERROR or not process.is_alive():
                placement.failure = self._failure(placement.api, process, state)
                raise StartupError(placement.failure)
            states.append(state)
        return all(state == LISTENING for state in states)

    def wait_for_workers(self) -> None:
        """Return once every worker is ready; raise StartupError naming a model that fails."""
        loading = set(self.placements)
        while loading:
            for slot in list(loading):
                try:
                    ready = self.progress(slot)
                except StartupError:
                    self._stop_workers()
                    raise
                if ready:
                    self.engine.table.set_state(slot, State.SERVING)
                    loading.discard(slot)
            time.sleep(0.05)

    @staticmethod
    def _failure(api: LitAPI, process: mp.Process, state: str) -> str:
        if process.exitcode is not None and process.exitcode < 0:  # no traceback to point at
            how = f"was killed by signal {signal.Signals(-process.exitcode).name}"
            return f"{api.label} could not be loaded: its inference worker {how}"
        how = "raised in setup" if state == WorkerSetupStatus.ERROR else "died"
        return (
            f"{api.label} could not be loaded: its inference worker {how} "
            f"(exit code {process.exitcode}); its traceback is in the log above"
        )

    @asynccontextmanager
    async def http_process(self):
        """The companions run inside each HTTP process's lifespan; on a drain they stop after
        its HTTP requests are answered."""
        if os.getpid() != self.main_pid:  # a forked HTTP process, as always but in-process use
            exit_with_parent(self.main_pid)
            self.engine.http_index = http_process_index()
        async with contextlib.AsyncExitStack() as stack:
            for companion in self.companions:
                await stack.enter_async_context(companion())
            gc.freeze()  # what start-up made lives on: full collections skip it (17 ms a pass)
            yield

    def app_built(self, app) -> None:
        if self.front is not None:  # Starlette builds the stack at the first request otherwise
            app.middleware_stack = self.front(app.build_middleware_stack())

    def http_started(self, sockets: list) -> None:
        # kept open here, to start an HTTP process again; closed first at a drain
        self.listeners = sockets

    def interrupted(self) -> None:
        self._stop_workers()

    # -- supervision ---------------------------------------------------------------------

    def start_supervision(self, http_processes: list[mp.Process]) -> None:
        self.http_processes = list(http_processes)
        self.http_started_at = [time.monotonic()] * len(http_processes)
        self.http_start_failures = [0] * len(http_processes)
        threading.Thread(target=self._supervise, daemon=True, name="tensorgate-supervisor").start()

    def _supervise(self) -> None:
        while not self.shutdown_event.is_set():
            try:
                self._supervise_once()
            except Exception:  # supervision must outlive its own bugs
                logger.exception("worker supervision failed; retrying")
                time.sleep(SUPERVISE_EVERY)

    def _supervise_once(self) -> None:
        sentinels = {
            process.sentinel: (slot, worker_id)
            for slot, placement in self.placements.items()
            for worker_id, process in enumerate(placement.processes)
        }
        http = {p.sentinel: index for index, p in enumerate(self.http_processes)}
        dead = mp.connection.wait([*sentinels, *http], timeout=SUPERVISE_EVERY)
        if self.engine.draining or self.shutdown_event.is_set():
            return
        for sentinel in dead:
            if sentinel in http:
                self._replace_http(http[sentinel])
            elif sentinel in sentinels:
                self._replace(*sentinels[sentinel])
            if self.shutdown_event.is_set():  # given up
                return
        self._stop_retired()
        if self.controller is not None:
            self.controller.step(self)

    def _replace(self, slot: int, worker_id: int) -> None:
        placement = self.placements[slot]
        api, process = placement.api, placement.processes[worker_id]
        process.join(timeout=1)
        state = self.setup_states.state(api.api_path, worker_id)
        table_state = self.engine.table.read(slot).state
        if table_state == State.LOADING:
            placement.failure = self._failure(api, process, state)  # the controller's to see
            return
        if table_state == State.RETIRING:  # about to stop anyway
            return
        if state == LISTENING:
            placement.start_failures[worker_id] = 0
        else:
            placement.start_failures[worker_id] += 1
            if placement.start_failures[worker_id] >= START_FAILURES:
                self._give_up(
                    f"{self._failure(api, process, state)}; it failed {START_FAILURES} times in "
                    "a row before becoming ready"
                )
                return
        logger.error(
            "%s: worker %d (pid %s) died with exit code %s; its in-flight requests "
            "answered 503; starting a new one",
            api.label,
            worker_id,
            process.pid,
            process.exitcode,
        )
        WORKER_RESTARTS.labels(api.model_name).inc()
        forget_process(process.pid)
        placement.processes[worker_id] = self.relaunch(api, worker_id)

    def _replace_http(self, index: int) -> None:
        """Start an HTTP process in place of one that died. The others keep serving; its
        clients saw their connections close, and what it had admitted is let go."""
        process = self.http_processes[index]
        process.join(timeout=1)
        lost = self.engine.forget_http_process(index)
        settled = time.monotonic() - self.http_started_at[index] >= HTTP_SETTLED
        self.http_start_failures[index] = 0 if settled else self.http_start_failures[index] + 1
        if self.http_start_failures[index] >= START_FAILURES:
            self._give_up(
                f"HTTP server process {index} died {START_FAILURES} times in a row within "
                f"{HTTP_SETTLED:g} s of starting (exit code {process.exitcode})"
            )
            return
        logger.error(
            "HTTP process %d (pid %s) died with exit code %s; %d requests it had admitted "
            "are lost; starting a new one",
            index,
            process.pid,
            process.exitcode,
            lost,
        )
        HTTP_RESTARTS.inc()
        forget_process(process.pid)
        self.http_processes[index] = self.relaunch_http(index)
        self.http_started_at[index] = time.monotonic()

    def retire(self, slot: int) -> None:
        """Take a serving version out of service: it takes no new requests, and its workers
        stop once the requests it admitted are answered (a request admitted after this sees
        the state and is retried elsewhere or refused: see Engine.submit)."""
        self.engine.table.set_state(slot, State.RETIRING)

    def discard(self, slot: int) -> None:
        """Stop a version's workers now and free its slot: a load that failed."""
        self._stop(self.placements.pop(slot).processes)
        self.engine.table.set_state(slot, State.FREE)

    def _stop_retired(self) -> None:
        for slot in list(self.placements):
            api = self.placements[slot].api
            if self.engine.table.read(slot).state != State.RETIRING:
                continue
            if self.engine.in_flight(api.name):
                continue
            processes = self.placements.pop(slot).processes
            self._stop(processes)
            self.engine.table.set_state(slot, State.FREE)
            logger.info("%s: unloaded; %d worker(s) stopped", api.label, len(processes))

    def _give_up(self, reason: str) -> None:
        logger.error("stopping the server: %s", reason)
        self.exit_reason = reason
        self.shutdown_event.set()

    # -- drain ---------------------------------------------------------------------------

    def drain(self, http_processes: list[mp.Process]) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)  # the drain deadline bounds it; no re-entry
        started = time.monotonic()
        answered = self.engine.answered()
        self.engine.begin_drain()
        logger.info(
            "draining: readiness answers 503; %d requests in flight; deadline %g s "
            "(TENSORGATE_DRAIN_TIMEOUT)",
            self.engine.in_flight(),
            self.engine.drain_timeout,
        )
        self.shutdown_event.set()
        http = [p for p in self.http_processes or http_processes if p.is_alive()]
        # Requests now get 503 + Connection: close, and load balancers see readiness fail,
        # while the listener still takes connections.
        time.sleep(max(DRAIN_NOTICE, 2 * DRAIN_POLL))
        empty_before_close(self.listeners, QUEUE_EMPTIED_WITHIN)
        for sock in self.listeners:
            sock.close()
        for process in http:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # uvicorn: stop accepting, finish requests
        deadline = started + self.http_grace + 1
        for process in http:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("HTTP process %d did not stop in time; killing it", process.pid)
                process.kill()
        self._stop_workers()
        logger.info(
            "drained: answered %d requests in %.1f s; stopped",
            self.engine.answered() - answered,
            time.monotonic() - started,
        )

    def _stop_workers(self) -> None:
        self._stop([p for placement in self.placements.values() for p in placement.processes])

    @staticmethod
    def _stop(processes: list[mp.Process]) -> None:
        alive = [p for p in processes if p.is_alive()]
        for process in alive:
            process.terminate()
        for process in alive:
            process.join(timeout=STOP_WORKERS_WITHIN)
            if process.is_alive():
                process.kill()
        for process in processes:
            forget_process(process.pid)
