"""The inference worker's side: a listening socket per worker, the batching loop, the answers.

LitServe starts the worker process, runs the LitAPI's `setup` and then calls the loop; from
there the loop serves every HTTP process that connects to the worker's socket. It reads all
requests that have arrived, lets the batching policy (batching.py) decide whether to wait for
more, runs one batch of at most max_batch_size instances (a larger request runs alone, split
into max-size device calls by the LitAPI's `predict`), and answers each HTTP process with one
message per batch. Batches take the most urgent priority level first. A failing batch fails
only its own requests; a request whose deadline would pass before a batch of its own could
finish answers 504 uncomputed; a request whose client has gone (Cancel) is skipped.
"""

import gc
import itertools
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, Protocol

from ..admission import Cost
from ..errors import DeadlineExceeded, InferenceFailed, ServiceError
from ..host import usable_cores
from ..logs import LogFormat, configure
from ..metrics import BATCH_DISPATCH, DISPATCH_REASONS, QUEUE_DURATION, REJECTIONS
from ..tracing import BatchSpans, Interval, Member, provider
from .batching import BatchingPolicy
from .lit import EngineLoop
from .parent import exit_with_parent
from .stats import Stats
from .wire import Answer, Cancel, Failure, FrameReader, Infer, Tensors, address, frame, pack, unpack

logger = logging.getLogger(__name__)
READ_CHUNK = 1 << 20
EXPIRED = Failure(
    DeadlineExceeded.reason,
    "the request's deadline would have passed before its batch finished; it was not computed",
)
# A request runs only if a batch of its own would finish this much before its deadline: the
# fit's mean cost with a margin for slower batches, and the answer's trip to its HTTP process
# (whose timer, run before its socket is read, would otherwise answer 504 first).
SAFETY, TRIP = 1.25, 0.001
PUBLISH_EVERY = 0.05  # seconds between publications of the batch cost (not every batch)
POLLS_PER_LOOK = 8  # socket polls (0.6 us each) between looks at the cores (2.4 us) in a spin


class Batcher(Protocol):
    """What the loop needs of a LitAPI: its limits and LitServe's batch -> predict -> unbatch."""

    name: str  # the engine's name for the workers (a model's version)
    slot: int  # the version's slot in the version table, where its statistics are kept
    model_name: str  # the metrics' model label
    label: str  # "model 'mlp' version 1", for the logs
    max_batch_size: int
    batch_timeout: float
    fixed_shapes: bool  # no dynamic axis past the batch one: any requests can be stacked
    priority_levels: int  # queues to keep; a request's level picks one (1 is taken first)
    warmup_costs: list[tuple[int, float]]  # (instances, seconds) of the warm-up batches
    span_attributes: dict[str, str | int]  # model, version and backend, for its spans

    def batch(self, inputs: list[Tensors]) -> Tensors: ...
    def predict(self, inputs: Tensors) -> Tensors: ...
    def unbatch(self, outputs: Tensors, sizes: list[int]) -> list[Tensors]: ...


@dataclass(eq=False)
class Peer:
    """One HTTP process's connection."""

    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    cancelled: set[int] = field(default_factory=set)
    closed: bool = False


class Queued:
    __slots__ = ("peer", "request")

    def __init__(self, peer: Peer, request: Infer) -> None:
        self.peer, self.request = peer, request


class Queue:
    """The requests waiting, a first-in-first-out queue per priority level; batches take from
    the most urgent level (1) first."""

    def __init__(self, levels: int) -> None:
        self.levels: list[deque[Queued]] = [deque() for _ in range(levels)]

    def __bool__(self) -> bool:
        return any(self.levels)

    def __iter__(self) -> Iterator[Queued]:
        """In the order batches take them."""
        return itertools.chain.from_iterable(self.levels)

    def append(self, q: Queued) -> None:
        self.levels[min(max(q.request.priority, 1), len(self.levels)) - 1].append(q)

    def first(self) -> deque[Queued]:
        """The most urgent level that has a request waiting (the queue is not empty)."""
        for level in self.levels:
            if level:
                return level
        raise IndexError("the queue is empty")

    def drop(self, peer: Peer) -> None:
        self.levels = [deque(q for q in level if q.peer is not peer) for level in self.levels]


class Taken(NamedTuple):
    """What the queue gives up at once: a batch to run, and requests found expired."""

    batch: list[Queued]
    expired: list[Queued]


class Ran(NamedTuple):
    """A batch's answers, and when its model call ran (None: it failed)."""

    answers: list[tuple[Queued, Answer]]
    compute: Interval | None


class WorkerLoop(EngineLoop):
    """LitServe's loop hook: serve this model's worker socket until the process is stopped."""

    def __init__(
        self,
        token: str,
        model: str,
        logs: tuple[str, LogFormat],
        stats: Stats,
        spin: float,
        traced: bool = False,
    ) -> None:
        """`logs`: the level and format of the worker's logs (logs.configure); `traced`:
        whether spans are exported (TENSORGATE_TRACING)."""
        super().__init__()
        self.token, self.model, self.logs, self.stats = token, model, logs, stats
        self.spin, self.traced = spin, traced
        self.parent = os.getpid()  # made in the main process, called in the worker

    def serve_worker(self, lit_api: Batcher, worker_id: int, listening: Callable[[], None]) -> None:
        # Ctrl-C reaches the whole process group; the main process stops the workers itself,
        # once the HTTP processes have answered everything they accepted.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exit_with_parent(self.parent)
        configure(*self.logs)  # a spawned process does not inherit the main one's logging
        addr = address(self.token, self.model, worker_id)
        spans = None
        if self.traced:  # a provider of the worker's own: a spawned process starts bare
            spans = BatchSpans(provider(workers=True), lit_api.span_attributes, worker_id)
            signal.signal(signal.SIGTERM, partial(stopped, spans))
        worker = Worker(lit_api, addr, self.stats, worker_id, self.spin, spans)
        listening()  # LitServe said READY before this loop began; traffic may come from now on
        gc.freeze()  # the loaded model and imports live on: full collections skip them
        spin = f", polling {self.spin * 1e3:g} ms for each next request" if self.spin else ""
        logger.info("%s: worker %d serving (pid %d)%s", lit_api.label, worker_id, os.getpid(), spin)
        worker.serve()


def stopped(spans: BatchSpans, signum: int, frame: object) -> None:
    """SIGTERM, where tracing is on: the spans still buffered are exported first."""
    spans.shutdown()
    raise SystemExit(0)


class SpareCores:
    """Whether a core is free right now: the runnable tasks that /proc/loadavg counts (this
    worker among them) against the cores this process may use (a container's quota too:
    polling spends it)."""

    def __init__(self) -> None:
        self.cores = usable_cores()
        try:
            self.fd: int | None = os.open("/proc/loadavg", os.O_RDONLY)
        except OSError:  # not Linux: never spin
            self.fd = None

    def spare(self, extra: int = 0) -> bool:
        """At most `extra` more runnable tasks than cores."""
        if self.fd is None:
            return False
        runnable = int(os.pread(self.fd, 128, 0).split()[3].split(b"/")[0])  # "1.0 0.9 0.8 3/250 7"
        return runnable <= self.cores + extra


class Worker:
    def __init__(
        self,
        api: Batcher,
        addr: str,
        stats: Stats,
        worker_id: int,
        spin: float = 0.0,
        spans: BatchSpans | None = None,
    ) -> None:
        self.api, self.stats, self.worker_id = api, stats, worker_id
        self.spans = spans
        self.spin_seconds = spin
        self.cores = SpareCores()
        self.policy = BatchingPolicy(api.max_batch_size, api.batch_timeout)
        for instances, seconds in api.warmup_costs:
            self.policy.cost.add(instances, seconds)
        self.queue = Queue(api.priority_levels)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(addr)
        self.listener.listen(128)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.queue_seconds = QUEUE_DURATION.labels(api.model_name)
        self.cancelled = REJECTIONS.labels(api.model_name, "cancelled")
        self.dispatched = {r: BATCH_DISPATCH.labels(api.model_name, r) for r in DISPATCH_REASONS}
        self.publish_cost()

    def serve(self) -> None:
        while True:
            taken = self.next_batch()
            if taken.batch or taken.expired:
                self.run(taken)

    # -- reading -------------------------------------------------------------------------

    def poll(self, timeout: float | None) -> None:
        """Accept and read whatever is ready within `timeout` (None: until something is)."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                sock, _ = self.listener.accept()
                self.selector.register(sock, selectors.EVENT_READ, Peer(sock))
            else:
                self.read(key.data)

    def read(self, peer: Peer) -> None:
        try:
            chunk = peer.sock.recv(READ_CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            self.drop(peer)
            return
        for message in peer.reader.feed(chunk):
            if isinstance(message, Cancel):
                peer.cancelled.add(message.uid)
            else:
                self.queue.append(Queued(peer, message))
                self.policy.arrivals.add(message.enqueued_at, message.instances)

    def drop(self, peer: Peer) -> None:
        """Its HTTP process has gone: none of its requests can be answered, so none is run."""
        self.selector.unregister(peer.sock)
        peer.sock.close()
        peer.closed = True
        self.queue.drop(peer)

    # -- batching ------------------------------------------------------------------------

    def queued_instances(self) -> int:
        total, limit = 0, self.api.max_batch_size
        for q in self.queue:
            total += q.request.instances
            if total >= limit:
                break
        return total

    def spin(self) -> None:
        """Poll for the next request instead of sleeping, for up to spin_seconds and only
        while a core is spare (TENSORGATE_WORKER_SPIN). A sleeping worker is woken through
        the kernel, on a VM through the host, when a request comes; a polling one sees it at
        once. On a busy machine polling would take a core from the HTTP processes: it does
        not start unless a core is free, and stops once two tasks wait for a core."""
        until = time.monotonic() + self.spin_seconds
        extra = 0  # to start, a core must be spare; once polling, one more task may be runnable
        while self.cores.spare(extra):
            extra = 1
            for _ in range(POLLS_PER_LOOK):
                self.poll(0)
                if self.queue:
                    return
            if time.monotonic() > until:
                return

    def next_batch(self) -> Taken:
        """The next batch to run, and the requests found expired meanwhile."""
        if not self.queue and self.spin_seconds > 0:
            self.spin()
        while not self.queue:
            self.poll(None)
        self.poll(0)  # everything that has already arrived
        queued, now = self.queued_instances(), time.monotonic()
        wait, reason = self.policy.wait(queued, now), "waited"
        if wait > 0:
            slack = self.slack(queued, now)
            if slack < wait:  # the earliest deadline would pass: run what is queued sooner,
                wait, reason = max(0.0, slack - TRIP), "deadline"  # a poll's overshoot spare
        until = now + wait
        while queued < self.api.max_batch_size and (left := until - time.monotonic()) > 0:
            self.poll(left)
            queued = self.queued_instances()
        if queued >= self.api.max_batch_size:
            reason = "full"
        elif wait == 0 and reason != "deadline":
            reason = "idle"
        self.dispatched[reason].inc()
        return self.take()

    def slack(self, queued: int, now: float) -> float:
        """Seconds the queued requests can wait and still be answered by the earliest
        deadline among them, given the cost of running them (with take()'s margins)."""
        cost = self.policy.cost
        earliest = min(q.request.deadline for q in self.queue)
        return earliest - now - SAFETY * (cost.fixed + cost.per_instance * queued) - TRIP

    def take(self) -> Taken:
        """Requests, most urgent level first and in arrival order within one, up to
        max_batch_size instances (at least one request), as long as their inputs' shapes past
        the batch axis agree (a model with a dynamic axis besides the batch one may get
        requests that cannot be stacked). A request whose deadline would pass before a batch
        of its own could finish is not run: it is returned as expired."""
        batch, expired, count, shapes = [], [], 0, None
        fixed, per_instance = self.policy.cost.fixed, self.policy.cost.per_instance
        soonest = time.monotonic() + SAFETY * fixed + TRIP  # a deadline must be past this
        while self.queue:
            level = self.queue.first()
            q = level[0]
            size = q.request.instances
            if batch and count + size > self.api.max_batch_size:
                break
            if not self.api.fixed_shapes:
                shapes = shapes or q.request.shapes
                if q.request.shapes != shapes:
                    break
            level.popleft()
            if q.request.uid in q.peer.cancelled:
                q.peer.cancelled.discard(q.request.uid)
                self.cancelled.inc()
            elif q.request.deadline < soonest + SAFETY * per_instance * size:
                expired.append(q)
            else:
                batch.append(q)
                count += size
        return Taken(batch, expired)

    # -- running and answering -----------------------------------------------------------

    def run(self, taken: Taken) -> None:
        started, batch = time.monotonic(), taken.batch
        answers = [(q, Answer(q.request.uid, None, EXPIRED)) for q in taken.expired]
        instances = sum(q.request.instances for q in batch)
        compute = None
        if batch:
            queued = [started - q.request.enqueued_at for q in batch]
            for seconds in queued:
                self.queue_seconds.observe(seconds)
            ran = self.infer(batch, queued)
            answers += ran.answers
            compute = ran.compute
            took = time.monotonic() - started
            self.stats.batch(self.api.slot, self.worker_id, queued, took, instances)
        self.answer(answers)
        ended = time.monotonic()
        if self.spans is not None:
            self.trace(taken, Interval(started, ended), compute, instances)
        if batch:
            self.policy.cost.add(instances, ended - started)
            self.policy.sizes.add(instances, len(batch))
            if ended - self.published > PUBLISH_EVERY:
                self.publish_cost()

    def trace(self, taken: Taken, run: Interval, compute: Interval | None, size: int) -> None:
        """The spans of the batch's sampled requests, once they are answered."""
        members = [
            Member(
                q.request.trace,
                q.request.enqueued_at,
                q.request.instances,
                q.request.priority,
                expired,
            )
            for qs, expired in ((taken.batch, False), (taken.expired, True))
            for q in qs
            if q.request.trace is not None
        ]
        if members:
            self.spans.record(members, run, compute, size)

    def publish_cost(self) -> None:
        """The batch cost fit, where the HTTP processes estimate a deadline's chances."""
        cost, size = self.policy.cost, self.policy.sizes.mean
        measured = Cost(cost.fixed, cost.per_instance, self.api.max_batch_size, size)
        self.stats.set_cost(self.api.slot, self.worker_id, measured)
        self.published = time.monotonic()

    def infer(self, live: list[Queued], queued: list[float]) -> Ran:
        api = self.api
        try:
            inputs = [unpack(q.request.inputs) for q in live]
            sizes = [q.request.instances for q in live]
            batched = api.batch(inputs)
            began = time.monotonic()
            computed = api.predict(batched)
            compute = Interval(began, time.monotonic())
            outputs = api.unbatch(computed, sizes)
            took = compute.end - compute.start
            return Ran(
                [
                    (q, Answer(q.request.uid, pack(out), None, wait, took))
                    for q, out, wait in zip(live, outputs, queued, strict=True)
                ],
                compute,
            )
        except Exception as e:  # a failing batch fails only its own requests
            logger.exception("inference failed for a batch of %d requests", len(live))
            failure = (
                Failure(e.reason, e.message)
                if isinstance(e, ServiceError)
                else Failure(InferenceFailed.reason, f"inference failed: {e}")
            )
            return Ran([(q, Answer(q.request.uid, None, failure)) for q in live], None)

    def answer(self, answers: list[tuple[Queued, Answer]]) -> None:
        """One message per HTTP process for the whole batch."""
        by_peer: dict[Peer, list[Answer]] = {}
        for q, a in answers:
            q.peer.cancelled.discard(a.uid)
            by_peer.setdefault(q.peer, []).append(a)
        for peer, messages in by_peer.items():
            if peer.closed:
                continue
            try:
                peer.sock.sendall(frame(messages))
            except OSError:
                self.drop(peer)
