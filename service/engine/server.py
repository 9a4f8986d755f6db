"""The LitServer that runs tensorgate's engine: the one place that reaches into LitServe.

LitServe 0.2.19 still spawns the inference workers (running each LitAPI's `setup` and then
our loop), forks the uvicorn HTTP processes and owns the FastAPI app. What this class
replaces, through LitServer's private hooks (hence the exact version check below):

- `_init_manager`: no Manager process and no Manager queues; requests travel on sockets
  between each HTTP process and each worker (wire.py), and worker setup states live in
  shared memory (`SetupStatus`);
- `verify_worker_status`: start-up waits for every worker of every model, and a model that
  cannot load stops the server with its name (`StartupError`);
- `_start_worker_monitoring`: a supervisor that replaces a dead worker (its requests have
  already failed in the HTTP processes, which saw its sockets close), counts restarts, and
  gives up on a worker that keeps dying before it is ready;
- `_perform_graceful_shutdown`: the drain (readiness 503, then every HTTP process stops
  accepting and answers what it has, then the workers stop), bounded by the drain deadline.
"""

import asyncio
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time

import litserve as ls
from litserve.utils import WorkerSetupStatus

from ..metrics import WORKER_RESTARTS
from .client import DRAIN_POLL, Engine
from .stats import MAX_WORKERS

logger = logging.getLogger(__name__)

LITSERVE_VERSION = "0.2.19"  # the private hooks below are this release's
START_FAILURES = 3  # a worker dying this many times in a row before it is ready stops the server
DRAIN_NOTICE = 0.5  # seconds between readiness going 503 and the listeners closing
SUPERVISE_EVERY = 0.5  # seconds between supervision rounds (a death wakes it at once)
STOP_WORKERS_WITHIN = 5  # seconds a worker gets after SIGTERM before SIGKILL


def check_litserve_version(installed: str = ls.__version__) -> None:
    if installed != LITSERVE_VERSION:
        raise ImportError(
            f"tensorgate's engine was written for litserve {LITSERVE_VERSION}, whose private "
            f"hooks it overrides; litserve {installed} is installed. "
            f"Install the tested one: pip install litserve=={LITSERVE_VERSION}"
        )


check_litserve_version()


class StartupError(RuntimeError):
    """A model could not be loaded; the message names it."""


class SetupStatus:
    """LitServe's `workers_setup_status` mapping ("{endpoint}_{worker_id}" -> state), kept in
    shared memory instead of a Manager process's dict."""

    STATES = (
        WorkerSetupStatus.STARTING,
        WorkerSetupStatus.READY,
        WorkerSetupStatus.ERROR,
        WorkerSetupStatus.FINISHED,
    )

    def __init__(self, keys: list[str]) -> None:
        self.index = {key: i for i, key in enumerate(keys)}
        self.codes = mp.get_context("spawn").Array("b", len(keys))

    def __setitem__(self, key: str, state: str) -> None:
        self.codes[self.index[key]] = self.STATES.index(state)

    def __getitem__(self, key: str) -> str:
        return self.STATES[self.codes[self.index[key]]]

    def __len__(self) -> int:
        return len(self.index)

    def values(self) -> list[str]:  # LitServe's own /health reads them
        return [self[key] for key in self.index]


class IdleTransport:
    """LitServe's response reader task still runs in each HTTP process; answers come on the
    engine's sockets, so it waits here until it is cancelled at shutdown."""

    async def areceive(self, *args, **kwargs) -> None:
        await asyncio.get_running_loop().create_future()

    def send(self, *args, **kwargs) -> None:
        raise RuntimeError("tensorgate's workers answer on the engine's sockets")

    def close(self, **kwargs) -> None:
        pass


class EngineServer(ls.LitServer):
    def __init__(self, lit_apis: list[ls.LitAPI], engine: Engine, **kwargs) -> None:
        super().__init__(lit_apis, **kwargs)
        # LitServe's own "/" (plain text), "/health" and "/info" go: the service answers
        # KServe's and Triton's routes instead, so a client meets one convention
        own = {"/", self.healthcheck_path, self.info_path}
        self.app.router.routes = [r for r in self.app.routes if getattr(r, "path", None) not in own]
        self.engine = engine
        for api in self.litapi_connector:
            engine.workers[api.name] = len(self._inference_workers_config_for_api(api.api_path))
            if engine.workers[api.name] > MAX_WORKERS:
                raise RuntimeError(
                    f"{api.label}: {engine.workers[api.name]} inference workers; "
                    f"at most {MAX_WORKERS} are supported"
                )
        # uvicorn's own deadline comes after ours, so that late requests answer 503 first
        self.uvicorn_graceful_timeout = engine.drain_timeout + 5
        self.exit_reason: str | None = None  # set when the server stops because of a failure
        self.start_failures: dict[int, int] = {}
        self.stopped: set[int] = set()  # worker slots stopped by an unload

    # -- who is who ----------------------------------------------------------------------

    def _slots(self) -> list[tuple[ls.LitAPI, int]]:
        """(LitAPI, worker_id) in the order of `self.inference_workers`."""
        return [
            (api, worker_id)
            for api in self.litapi_connector
            for worker_id in range(len(self._inference_workers_config_for_api(api.api_path)))
        ]

    @staticmethod
    def _status_key(api: ls.LitAPI, worker_id: int) -> str:
        return f"{api.api_path.split('/')[-1]}_{worker_id}"

    # -- start ---------------------------------------------------------------------------

    def _init_manager(self, num_api_servers: int) -> None:
        self.workers_setup_status = SetupStatus([self._status_key(*s) for s in self._slots()])
        self._shutdown_event = mp.get_context("spawn").Event()
        for api in self.litapi_connector:
            self.litapi_request_queues[api.api_path] = None  # the engine's sockets instead
        self._transport = IdleTransport()
        return None

    def verify_worker_status(self) -> None:
        """Return once every worker is ready; raise StartupError naming a model that fails."""
        while True:
            states = []
            slots = zip(self._slots(), self.inference_workers, strict=True)
            for (api, worker_id), process in slots:
                state = self.workers_setup_status[self._status_key(api, worker_id)]
                if state == WorkerSetupStatus.ERROR or not process.is_alive():
                    self._stop_workers()
                    raise StartupError(self._failure(api, process, state))
                states.append(state)
            if all(state == WorkerSetupStatus.READY for state in states):
                return
            time.sleep(0.05)

    @staticmethod
    def _failure(api: ls.LitAPI, process: mp.Process, state: str) -> str:
        how = "raised in setup" if state == WorkerSetupStatus.ERROR else "died"
        return (
            f"{api.label} could not be loaded: its inference worker {how} "
            f"(exit code {process.exitcode}); its traceback is in the log above"
        )

    def _start_server(self, port, num_servers, log_level, sockets, *args, **kwargs):
        workers = super()._start_server(port, num_servers, log_level, sockets, *args, **kwargs)
        # The HTTP processes hold the listening socket now. Were it left open here too, the
        # kernel would keep queueing connections after they stopped accepting at a drain.
        for sock in sockets:
            sock.close()
        return workers

    def run(self, *args, **kwargs) -> None:
        main = os.getpid()

        def interrupt(signum: int, frame) -> None:
            # SIGTERM (docker stop, Kubernetes) drains like Ctrl-C. The forked HTTP processes
            # inherit this until uvicorn installs its own handlers, which drain them.
            if os.getpid() == main:
                raise KeyboardInterrupt
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, interrupt)
        try:
            super().run(*args, **kwargs)
        except KeyboardInterrupt:  # stopped while the workers were still loading
            self._stop_workers()

    # -- supervision ---------------------------------------------------------------------

    def _start_worker_monitoring(self, manager, uvicorn_workers: dict) -> None:
        self.http_processes = list(uvicorn_workers.values())
        threading.Thread(target=self._supervise, daemon=True, name="tensorgate-supervisor").start()

    def _supervise(self) -> None:
        while not self._shutdown_event.is_set():
            try:
                self._supervise_once()
            except Exception:  # supervision must outlive its own bugs
                logger.exception("worker supervision failed; retrying")
                time.sleep(SUPERVISE_EVERY)

    def _supervise_once(self) -> None:
        running = [i for i in range(len(self.inference_workers)) if i not in self.stopped]
        sentinels = {self.inference_workers[i].sentinel: i for i in running}
        http = {p.sentinel: p for p in self.http_processes}
        dead = mp.connection.wait([*sentinels, *http], timeout=SUPERVISE_EVERY)
        if self.engine.draining or self._shutdown_event.is_set():
            return
        for sentinel in dead:
            if sentinel in http:
                self._give_up(f"HTTP server process {http[sentinel].pid} died")
                return
            self._replace(sentinels[sentinel])
        self._control()

    def _control(self) -> None:
        """Triton's unload and load, asked for by an HTTP process through the engine's flags:
        an unloaded model's workers stop once its admitted requests are answered (a request
        admitted after the flag was set sees it and is refused, so none is lost); a loaded
        one's stopped workers start again."""
        for index, (api, worker_id) in enumerate(self._slots()):
            unloaded = self.engine.is_unloaded(api.name)
            if unloaded and index not in self.stopped and not self.engine.in_flight(api.name):
                self.stopped.add(index)
                process = self.inference_workers[index]
                process.terminate()
                process.join(timeout=STOP_WORKERS_WITHIN)
                logger.info("%s: unloaded; worker %d stopped", api.label, worker_id)
            elif not unloaded and index in self.stopped:
                self.stopped.discard(index)
                self.start_failures[index] = 0
                self.inference_workers[index] = self.launch_single_inference_worker(api, worker_id)
                logger.info("%s: loading; worker %d starting", api.label, worker_id)

    def _replace(self, index: int) -> None:
        api, worker_id = self._slots()[index]
        process = self.inference_workers[index]
        process.join(timeout=1)
        state = self.workers_setup_status[self._status_key(api, worker_id)]
        if state == WorkerSetupStatus.READY:
            self.start_failures[index] = 0
        else:
            self.start_failures[index] = self.start_failures.get(index, 0) + 1
            if self.start_failures[index] >= START_FAILURES:
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
        self.inference_workers[index] = self.launch_single_inference_worker(api, worker_id)

    def _give_up(self, reason: str) -> None:
        logger.error("stopping the server: %s", reason)
        self.exit_reason = reason
        self._shutdown_event.set()

    # -- drain ---------------------------------------------------------------------------

    def _perform_graceful_shutdown(self, manager, uvicorn_workers: dict, reason="") -> None:
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
        self._shutdown_event.set()
        http = [p for p in uvicorn_workers.values() if p.is_alive()]
        # Requests arriving on open keep-alive connections now get 503 + Connection: close,
        # before uvicorn closes the idle ones.
        time.sleep(max(DRAIN_NOTICE, 2 * DRAIN_POLL))
        for process in http:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # uvicorn: stop accepting, finish requests
        deadline = started + self.uvicorn_graceful_timeout + 1
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
        workers = [p for p in getattr(self, "inference_workers", []) if p.is_alive()]
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(timeout=STOP_WORKERS_WITHIN)
            if process.is_alive():
                process.kill()
