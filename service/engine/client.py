"""The HTTP side's way into the workers: `await engine.submit(key, x)`, `engine.ready(key)`,
`engine.draining`.

The engine serves model versions, each named by a key like "mlp:2" and placed in a slot of
the version table (table.py). One `Engine` is made in the main process before LitServe forks
its HTTP processes; what the processes share lives in shared memory (the table, requests in
flight per slot and HTTP process, for the one queue bound of TENSORGATE_MAX_QUEUE across
every HTTP process, and the time a drain began). Each HTTP process opens its own connection
to every worker of each version it serves, on its own event loop, and closes them once the
version is retired:

- a request goes to the model's connected worker with the fewest requests in flight;
- a worker's death closes its connections, which fails its requests at once (503) and marks
  the model not ready until the replacement worker listens again (reconnected every 0.2 s);
- a client that disconnects while its request waits sends a Cancel, so it is not computed;
- on a drain, new requests answer 503 with `Connection: close`, and requests still waiting at
  the drain deadline answer 503.
"""

import asyncio
import itertools
import multiprocessing as mp
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple

from ..admission import (
    MAX_PRIORITY_LEVELS,
    Urgency,
    estimated_seconds,
    queue_share,
    unwaited,
)
from ..errors import (
    ClientGone,
    DeadlineExceeded,
    Overloaded,
    Retired,
    ShuttingDown,
    Timeout,
    Unavailable,
    for_reason,
)
from ..tracing import SpanRef
from ..writes import CoalescingTransport
from .locks import ProcessLock
from .stats import Stats
from .table import Slot, State, VersionTable
from .wire import Cancel, FrameReader, Infer, Tensors, address, frame, pack, unpack

RECONNECT_EVERY = 0.2  # seconds between attempts to reach a worker that is (re)starting
WATCH_AFTER = 0.01  # seconds a request waits before its client's leaving is watched for
DRAIN_POLL = 0.05  # seconds: how soon an HTTP process notices a drain that the main one began
Gone = Callable[[], Awaitable[object]]  # returns once the request's client has left


class Computed(NamedTuple):
    """A request's outputs from its worker, and its time there."""

    outputs: Tensors
    queued: float  # seconds from its sending to the start of its batch
    computed: float  # seconds its batch's model call took


class Link(asyncio.Protocol):
    """One connection from this HTTP process to one worker."""

    def __init__(self, model: str, worker_id: int) -> None:
        self.model, self.worker_id = model, worker_id
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.pending: dict[int, asyncio.Future] = {}
        self.uids = itertools.count()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the frames of the requests admitted in one turn of the loop leave in one write
        self.transport = CoalescingTransport(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        for answers in self.reader.feed(data):
            for answer in answers:
                future = self.pending.pop(answer.uid, None)
                if future is None or future.done():
                    continue
                if answer.failure is None:
                    future.set_result(
                        Computed(unpack(answer.outputs), answer.queued, answer.computed)
                    )
                else:
                    future.set_exception(for_reason(*answer.failure))

    def connection_lost(self, exc: Exception | None) -> None:
        died = Unavailable(
            f"model '{self.model}': its inference worker {self.worker_id} died while running "
            "this request; a new worker is starting, retry shortly"
        )
        for future in self.pending.values():
            if not future.done():
                future.set_exception(died)
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def send(
        self, inputs: Tensors, deadline: float, level: int, trace: SpanRef | None
    ) -> tuple[int, asyncio.Future]:
        uid = next(self.uids)
        future = asyncio.get_running_loop().create_future()
        self.pending[uid] = future
        message = Infer(uid, time.monotonic(), pack(inputs), deadline, level, trace)
        self.transport.write(frame(message))  # never blocks
        return uid, future

    def cancel(self, uid: int) -> None:
        if self.pending.pop(uid, None) is not None and not self.lost.done():
            self.transport.write(frame(Cancel(uid)))


class ModelLinks:
    """This HTTP process's connections to one model's workers, kept up."""

    def __init__(self, token: str, model: str, workers: int) -> None:
        self.token, self.model = token, model
        self.links: list[Link | None] = [None] * workers
        self.keepers: list[asyncio.Task | None] = [None] * workers

    def alive(self, worker_id: int) -> bool:
        link = self.links[worker_id]
        return link is not None and not link.lost.done()

    async def connect(self, worker_id: int) -> bool:
        """Connect to the worker unless connected; False while it is not listening."""
        if self.alive(worker_id):
            return True
        # The socket is connected here, not by the loop: uvloop takes no abstract address.
        # A Unix socket connects at once or fails at once (EAGAIN: backlog full, retried).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(address(self.token, self.model, worker_id))
        except OSError:  # not listening yet: still loading, or restarting
            sock.close()
            return False
        loop = asyncio.get_running_loop()
        transport, link = await loop.create_unix_connection(
            lambda: Link(self.model, worker_id), sock=sock
        )
        if self.alive(worker_id):  # another task connected meanwhile: keep one connection
            transport.close()
        else:
            self.links[worker_id] = link
        return True

    def keep(self) -> None:
        """Start keeping every connection up (once per process)."""
        for worker_id, keeper in enumerate(self.keepers):
            if keeper is None:
                self.keepers[worker_id] = asyncio.ensure_future(self._keep(worker_id))

    async def _keep(self, worker_id: int) -> None:
        while True:
            if await self.connect(worker_id):
                await self.links[worker_id].lost
            await asyncio.sleep(RECONNECT_EVERY)

    def close(self) -> None:
        """Stop keeping the connections up: the version has been retired."""
        for keeper in self.keepers:
            if keeper is not None:
                keeper.cancel()
        for link in self.links:
            if link is not None and link.transport is not None:
                link.transport.close()

    def connected(self) -> list[Link]:
        return [link for i, link in enumerate(self.links) if self.alive(i)]

    async def ready(self) -> bool:
        """Every worker is connected; tries the missing ones once, so a fresh process answers
        its first probe right."""
        for worker_id in range(len(self.links)):
            await self.connect(worker_id)
        return len(self.connected()) == len(self.links)

    async def pick(self) -> Link:
        links = self.connected()
        if not links:
            await self.ready()
            links = self.connected()
        if not links:
            raise Unavailable(
                f"model '{self.model}' has no running inference worker (loading or restarting)"
            )
        return min(links, key=lambda link: len(link.pending))


class Engine:
    def __init__(
        self,
        table: VersionTable,
        max_queue: int,
        request_timeout: float,
        drain_timeout: float,
        http_processes: int = 1,
    ) -> None:
        self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.table = table
        self.workers = 1  # inference workers per model version (EngineServer sets it)
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.http_processes = http_processes
        self.http_index = 0  # this HTTP process's row of `counts` (EngineServer sets it)
        ctx = mp.get_context("spawn")  # picklable into LitServe's spawned workers too
        # requests in flight per table slot, priority level and HTTP process (so that what a
        # dead one admitted can be let go), a slot's cells side by side; then the requests
        # answered in total
        self.per_slot = MAX_PRIORITY_LEVELS * http_processes
        self.counts = ctx.RawArray("q", table.capacity * self.per_slot + 1)
        self.counts_lock = ProcessLock()  # one lock: a synchronized Array retakes it per item
        self.drain_began = ctx.RawValue("d", 0.0)  # time.monotonic() of the drain; 0: serving
        self.stats = Stats(table.capacity)  # Triton's inference statistics
        self._seen = -1  # the table generation this process last read
        self._slots: dict[str, Slot] = {}  # this process's reading: key -> slot
        self._local: dict[str, ModelLinks] = {}  # this process's connections, per version
        self._watcher: asyncio.Task | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_seen": -1, "_slots": {}, "_local": {}, "_watcher": None}

    # -- the version table ---------------------------------------------------------------

    def slot(self, key: str) -> Slot | None:
        """The version's slot as of the table's latest generation; None when it has none."""
        if self.table.generation.value != self._seen:
            self._seen = self.table.generation.value
            self._slots = {slot.key: slot for slot in self.table.slots()}
            for gone in set(self._local) - set(self._slots):  # retired: stop reconnecting
                self._local.pop(gone).close()
        return self._slots.get(key)

    def state(self, key: str) -> State:
        slot = self.slot(key)
        return State.FREE if slot is None else slot.state

    # -- shared across processes ---------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.drain_began.value > 0

    def begin_drain(self) -> None:
        self.drain_began.value = time.monotonic()

    def in_flight(self, key: str | None = None) -> int:
        if key is None:
            return sum(self.counts[:-1])
        slot = self.slot(key)
        return 0 if slot is None else self._admitted(slot.index, MAX_PRIORITY_LEVELS)

    def answered(self) -> int:
        return self.counts[-1]

    def forget_http_process(self, index: int) -> int:
        """Let go of what a dead HTTP process had admitted (its clients saw the connection
        close); returns how many requests that was."""
        lost = 0
        with self.counts_lock:
            for cell in range(index, len(self.counts) - 1, self.http_processes):
                lost += self.counts[cell]
                self.counts[cell] = 0
        return lost

    def _cell(self, index: int, level: int, http_index: int) -> int:
        return index * self.per_slot + (level - 1) * self.http_processes + http_index

    def _admitted(self, index: int, levels: int) -> int:
        """Requests admitted to the slot at levels 1..levels, by every HTTP process."""
        first = index * self.per_slot
        return sum(self.counts[first : first + levels * self.http_processes])

    def record(
        self,
        key: str,
        outcome: Literal["success", "fail"],
        seconds: float,
        server_error: bool = False,
    ) -> None:
        """One inference request's outcome, for Triton's statistics and a canary's judge."""
        slot = self.slot(key)
        if slot is not None:
            self.stats.request(slot.index, outcome, seconds, server_error)

    def _admit(self, key: str, index: int, inputs: Tensors, urgency: Urgency) -> None:
        """Count the request in, or refuse it: the queue bound of its level (admission.py),
        and when it has a deadline of its own, the work ahead of it."""
        with self.counts_lock:
            admitted = self._admitted(index, MAX_PRIORITY_LEVELS)
            bound = queue_share(self.max_queue, urgency.level, urgency.levels)
            if admitted >= bound:
                raise Overloaded(self._full(key, admitted, bound, urgency))
            if urgency.own_deadline:
                self._check_deadline(key, index, inputs, urgency)
            self.counts[self._cell(index, urgency.level, self.http_index)] += 1

    @staticmethod
    def _full(key: str, admitted: int, bound: int, urgency: Urgency) -> str:
        if urgency.levels == 1:
            return (
                f"model version '{key}' has {admitted} requests queued or running, its limit "
                "(TENSORGATE_MAX_QUEUE, across all HTTP processes); retry shortly"
            )
        return (
            f"model version '{key}' has {admitted} requests queued or running, the limit for "
            f"priority {urgency.level} of {urgency.levels} ({bound} of TENSORGATE_MAX_QUEUE "
            "across all HTTP processes; less urgent levels are refused first); retry shortly"
        )

    def _check_deadline(self, key: str, index: int, inputs: Tensors, urgency: Urgency) -> None:
        cost = self.stats.cost(index, self.workers)
        if cost is None:
            return
        ahead = self._admitted(index, urgency.level)
        estimate = estimated_seconds(ahead, len(inputs[0]), cost, self.workers)
        if estimate > urgency.deadline - time.monotonic():
            raise DeadlineExceeded(
                f"model version '{key}' cannot answer within the request's timeout of "
                f"{urgency.timeout * 1e3:.3g} ms: {ahead} requests are ahead of it and a batch "
                f"costs {cost.fixed * 1e3:.3g} ms + {cost.per_instance * 1e3:.3g} ms per "
                f"instance (about {estimate * 1e3:.3g} ms); it was not queued"
            )

    def _release(self, index: int, level: int) -> None:
        with self.counts_lock:
            self.counts[self._cell(index, level, self.http_index)] -= 1
            self.counts[-1] += 1

    # -- this HTTP process's connections -------------------------------------------------

    def _links(self, key: str) -> ModelLinks:
        if self._watcher is None:  # first use in this HTTP process
            self._watcher = asyncio.ensure_future(self._watch_drain())
        links = self._local.get(key)
        if links is None:
            links = self._local[key] = ModelLinks(self.token, key, self.workers)
            links.keep()
        return links

    async def _watch_drain(self) -> None:
        """Once a drain begins, fail what is still waiting at its deadline with a 503."""
        while not self.draining:
            await asyncio.sleep(DRAIN_POLL)
        left = self.drain_began.value + self.drain_timeout - time.monotonic()
        await asyncio.sleep(max(0.0, left))
        late = ShuttingDown(
            f"the server is shutting down and its drain deadline of {self.drain_timeout:g} s "
            "(TENSORGATE_DRAIN_TIMEOUT) passed before this request was answered"
        )
        for links in self._local.values():
            for link in links.connected():
                for future in link.pending.values():
                    if not future.done():
                        future.set_exception(late)

    async def ready(self, key: str) -> bool:
        if self.draining or self.state(key) != State.SERVING:
            return False
        return await self._links(key).ready()

    async def submit(
        self,
        key: str,
        inputs: Tensors,
        gone: Gone | None = None,
        urgency: Urgency | None = None,
        trace: SpanRef | None = None,
    ) -> Computed:
        """The model version's outputs for `inputs` (each batch first), batched with other
        requests, under the request's deadline and priority (None: the server's timeout, one
        level), and how long it queued and its batch computed; `trace`: its server span, for
        the worker's spans.

        Raises ShuttingDown, Overloaded, Unavailable, Retired, Timeout, DeadlineExceeded or
        ClientGone (all 4xx/5xx ServiceErrors), or the worker's own error for this request.
        """
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        slot = self.slot(key)
        if slot is None or slot.state != State.SERVING:
            raise Retired(f"model version '{key}' is not serving")
        urgency = urgency or unwaited(self.request_timeout)
        self._admit(key, slot.index, inputs, urgency)
        try:
            # Read again after admitting: the main process retires a version by setting
            # RETIRING and then waiting for its admitted requests, so a request admitted
            # after that either sees RETIRING here or was counted before the wait began.
            if self.table.read(slot.index) != slot:
                raise Retired(f"model version '{key}' stopped serving")
            link = await self._links(key).pick()
            uid, future = link.send(inputs, urgency.deadline, urgency.level, trace)
            return await self._wait(key, link, uid, future, gone, urgency)
        finally:
            self._release(slot.index, urgency.level)

    def _late(self, model: str, urgency: Urgency) -> Timeout:
        if urgency.own_deadline:
            return DeadlineExceeded(
                f"model '{model}' did not answer within the request's timeout of "
                f"{urgency.timeout * 1e3:.3g} ms; it was not computed unless it had started"
            )
        return Timeout(
            f"model '{model}' did not answer within {self.request_timeout:g} s "
            "(TENSORGATE_REQUEST_TIMEOUT)"
        )

    async def _wait(
        self,
        model: str,
        link: Link,
        uid: int,
        future: asyncio.Future,
        gone: Gone | None,
        urgency: Urgency,
    ) -> Computed:
        loop = asyncio.get_running_loop()
        watch: asyncio.Future | None = None

        def expire() -> None:
            if not future.done():
                link.cancel(uid)
                future.set_exception(self._late(model, urgency))

        def disconnected(watch: asyncio.Future) -> None:
            if watch.cancelled() or future.done() or watch.exception() is not None:
                return
            link.cancel(uid)
            future.set_exception(ClientGone("the client disconnected"))

        def start_watching() -> None:
            nonlocal watch, timer
            if time.monotonic() >= urgency.deadline:
                expire()
                return
            # uvloop's clock is libuv's (milliseconds, read once per turn): a delay, not call_at
            timer = loop.call_later(urgency.deadline - time.monotonic(), expire)
            if gone is not None:
                watch = asyncio.ensure_future(gone())
                watch.add_done_callback(disconnected)

        # One timer per request: most are answered before it fires, and need no task
        # watching for their client leaving (a disconnect before then is seen when it fires).
        timer = loop.call_later(
            min(WATCH_AFTER, urgency.deadline - time.monotonic()), start_watching
        )
        try:
            return await future
        finally:
            timer.cancel()
            if watch is not None:
                watch.cancel()
            link.pending.pop(uid, None)
