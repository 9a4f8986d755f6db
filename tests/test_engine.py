"""The engine's parts without a server: the wire format, the batching policy, the worker's loop
on a real socket, the version table, the LitServe version check, that no other module
reaches into LitServe, the locks a killed process releases, and the listener at a drain."""

import ast
import asyncio
import inspect
import math
import multiprocessing as mp
import os
import re
import signal
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from service.admission import Cost, Urgency
from service.engine.batching import ArrivalRate, BatchCost, BatchingPolicy
from service.engine.client import Engine
from service.engine.listener import empty_before_close, refuse_new_connections
from service.engine.listener import queued as listener_queue
from service.engine.lit import LITSERVE_VERSION, LitServer, StatusKey, check_litserve_version
from service.engine.locks import ProcessLock
from service.engine.stats import Stats
from service.engine.table import Action, State, VersionTable
from service.engine.wire import Answer, Cancel, FrameReader, Infer, frame, pack, unpack
from service.engine.worker import SpareCores, Worker
from service.errors import DeadlineExceeded, Overloaded, Retired
from service.host import usable_cores
from service.metrics import BATCH_DISPATCH

# -- the version table ---------------------------------------------------------------------


def test_slots_are_claimed_freed_and_reused_and_every_write_is_a_new_generation():
    table = VersionTable(["mlp", "resnet"], capacity=2)
    first = table.claim("mlp", 1)
    second = table.claim("resnet", 3)
    assert [s.key for s in table.slots()] == ["mlp:1", "resnet:3"]
    assert table.read(second).state == State.LOADING
    with pytest.raises(RuntimeError, match="2 versions are loaded already"):
        table.claim("mlp", 2)
    generation = table.generation.value
    table.set_state(first, State.FREE)
    assert table.generation.value == generation + 1
    assert table.claim("mlp", 2) == first  # the freed slot
    assert table.read(first).key == "mlp:2"


def test_a_load_is_asked_answered_and_its_failure_reason_read_back():
    table = VersionTable(["mlp"])
    request = table.ask("mlp", Action.LOAD)
    assert table.pending("mlp") == (Action.LOAD, request)
    table.fail("mlp", 3, "model.onnx: sha256 does not match")
    table.answer("mlp", request, ok=False)
    assert table.pending("mlp") is None
    outcome = asyncio.run(table.outcome("mlp", request, timeout=1))
    assert outcome == (False, "model.onnx: sha256 does not match")
    assert table.failure("mlp") == (3, "model.onnx: sha256 does not match")
    assert asyncio.run(table.outcome("mlp", request + 1, timeout=0.1)) is None  # never asked


def test_a_version_retired_while_a_request_is_admitted_refuses_it_and_releases_its_count():
    """The race Engine.submit closes: the main process retires the version between the
    request's lookup and its admission, so the request must not reach the old workers."""
    table = VersionTable(["mlp"])
    slot = table.claim("mlp", 1)
    table.set_state(slot, State.SERVING)
    engine = Engine(table, max_queue=8, request_timeout=5, drain_timeout=5)
    admit = engine._admit

    def admit_then_retire(*args) -> None:
        admit(*args)
        table.set_state(slot, State.RETIRING)  # what EngineServer.retire does

    engine._admit = admit_then_retire
    with pytest.raises(Retired, match="stopped serving"):
        asyncio.run(engine.submit("mlp:1", (np.zeros((1, 3), np.float32),)))
    assert engine.in_flight("mlp:1") == 0 and engine.answered() == 1
    with pytest.raises(Retired, match="is not serving"):  # and every request after it
        asyncio.run(engine.submit("mlp:1", (np.zeros((1, 3), np.float32),)))


def test_the_queue_bound_refuses_the_least_urgent_level_first():
    """Two levels and TENSORGATE_MAX_QUEUE 4: level 2 may fill the queue to 2, level 1 to 4."""
    table = VersionTable(["mlp"])
    slot = table.claim("mlp", 1)
    engine = Engine(table, max_queue=4, request_timeout=5, drain_timeout=5)
    one = (np.zeros((1, 3), np.float32),)
    later = time.monotonic() + 5
    low, urgent = Urgency(5, later, 2, 2, False), Urgency(5, later, 1, 2, False)
    engine._admit("mlp:1", slot, one, low)
    engine._admit("mlp:1", slot, one, low)
    with pytest.raises(Overloaded, match="the limit for priority 2 of 2 \\(2 of"):
        engine._admit("mlp:1", slot, one, low)
    engine._admit("mlp:1", slot, one, urgent)
    engine._admit("mlp:1", slot, one, urgent)
    with pytest.raises(Overloaded, match="priority 1 of 2 \\(4 of"):
        engine._admit("mlp:1", slot, one, urgent)
    engine._release(slot, 2)
    assert engine._admitted(slot, 1) == 2 and engine._admitted(slot, 2) == 3


def test_a_dead_http_process_admissions_are_let_go_and_no_others():
    table = VersionTable(["mlp"])
    slot = table.claim("mlp", 1)
    engine = Engine(table, max_queue=8, request_timeout=5, drain_timeout=5, http_processes=3)
    one = (np.zeros((1, 3), np.float32),)
    for http_index, level in ((1, 2), (1, 1), (2, 2)):
        engine.http_index = http_index
        engine._admit("mlp:1", slot, one, Urgency(5, time.monotonic() + 5, level, 3, False))
    assert engine.forget_http_process(1) == 2
    assert engine.in_flight("mlp:1") == 1 and engine._admitted(slot, 1) == 0


def test_a_deadline_the_work_ahead_cannot_meet_is_refused_at_admission():
    """A batch costs 10 ms + 1 ms per instance, 4 instances at most: with 8 requests ahead a
    request waits for two batches and its own, 3 * 10 + (8 + 1) * 1 = 39 ms."""
    table = VersionTable(["mlp"])
    slot = table.claim("mlp", 1)
    engine = Engine(table, max_queue=64, request_timeout=5, drain_timeout=5)
    engine.stats.set_cost(slot, 0, Cost(0.010, 0.001, 4))
    one = (np.zeros((1, 3), np.float32),)

    def within(seconds: float, own: bool = True) -> Urgency:
        return Urgency(seconds, time.monotonic() + seconds, 1, 1, own)

    for _ in range(8):
        engine._admit("mlp:1", slot, one, within(5, own=False))
    engine._admit("mlp:1", slot, one, within(0.041))  # 39 ms: in time
    engine._release(slot, 1)
    with pytest.raises(DeadlineExceeded, match=r"8 requests are ahead .*\(about 39 ms\)"):
        engine._admit("mlp:1", slot, one, within(0.038))
    engine._admit("mlp:1", slot, one, within(0.038, own=False))  # the server's cap: queued


# -- wire ----------------------------------------------------------------------------------


def test_frames_split_anywhere_are_reassembled_in_order():
    messages = [request(i, 1.5, np.full((i + 1, 3), i, np.float32)) for i in range(5)]
    messages.append(Cancel(9))
    stream = b"".join(frame(m) for m in messages)
    reader, got = FrameReader(), []
    for start in range(0, len(stream), 7):  # 7-byte chunks cut through headers and bodies
        got += reader.feed(stream[start : start + 7])
    assert [type(m) for m in got] == [Infer] * 5 + [Cancel]
    for sent, received in zip(messages[:5], got[:5], strict=True):
        assert received.uid == sent.uid
        np.testing.assert_array_equal(unpack(received.inputs)[0], unpack(sent.inputs)[0])
    assert reader.buffer == bytearray()


def test_a_corrupt_length_is_an_error_not_a_huge_allocation():
    with pytest.raises(ValueError, match="corrupt stream"):
        FrameReader().feed(b"\xff\xff\xff\xff" + b"x" * 10)


# -- batching policy -----------------------------------------------------------------------


def test_the_cost_fit_recovers_fixed_and_per_instance_cost():
    cost = BatchCost()
    for n in (1, 64, 8, 32, 1, 16):
        cost.add(n, 0.002 + 0.0001 * n)
    assert cost.fixed == pytest.approx(0.002, rel=1e-6)
    assert cost.per_instance == pytest.approx(0.0001, rel=1e-6)


def test_one_batch_size_alone_gives_no_slope():
    cost = BatchCost()
    for _ in range(5):
        cost.add(4, 0.001)
    assert cost.per_instance == 0 and cost.fixed == pytest.approx(0.001)


def test_the_arrival_rate_counts_instances_per_second_and_goes_stale():
    rate = ArrivalRate(stale=1.0)
    for i in range(11):
        rate.add(10.0 + i * 0.001, 2)  # 2 instances every millisecond
    assert rate.rate(10.011) == pytest.approx(2000)
    assert rate.rate(12.0) == 0  # nothing for a second


def policy(fixed: float, per_instance: float, gap: float, timeout: float = 0.005):
    p = BatchingPolicy(max_batch_size=64, batch_timeout=timeout)
    p.cost.add(1, fixed + per_instance)
    p.cost.add(64, fixed + 64 * per_instance)
    for i in range(32):
        p.arrivals.add(100 + i * gap, 1)
    return p, 100 + 31 * gap


def test_a_cheap_model_never_waits_even_under_load():
    # mlp on a CPU: ~0.1 ms fixed, ~1 us per instance, requests 0.3 ms apart at 64 connections
    p, now = policy(fixed=1e-4, per_instance=1e-6, gap=3e-4)
    assert p.wait(1, now) == 0 and p.wait(8, now) == 0


def test_a_large_fixed_cost_with_fast_arrivals_waits_but_never_past_the_timeout():
    # a GPU-like batch: 2 ms to launch, 10 us per instance, a request every 50 us
    p, now = policy(fixed=2e-3, per_instance=1e-5, gap=5e-5)
    waited = p.wait(4, now)
    assert 0 < waited <= 0.005
    expected = (2e-3 - 4 * (5e-5 + 1e-5)) / (2 * (1 + 1e-5 / 5e-5))
    assert waited == pytest.approx(expected, rel=1e-3)
    assert p.wait(4, now) > p.wait(16, now)  # the more is queued, the less waiting pays
    assert p.wait(64, now) == 0  # full
    slow_arrivals, later = policy(fixed=2e-3, per_instance=1e-5, gap=5e-3)
    assert slow_arrivals.wait(1, later) == 0  # nothing would come in time
    capped, now = policy(fixed=1.0, per_instance=0, gap=5e-5, timeout=0.003)
    assert capped.wait(1, now) == 0.003


def test_batch_timeout_zero_turns_waiting_off():
    p, now = policy(fixed=2e-3, per_instance=1e-5, gap=5e-5, timeout=0)
    assert p.wait(1, now) == 0


# -- the worker's loop on a real socket ------------------------------------------------------


class Doubler:
    """A real Batcher: its "model" doubles the input; a row of -1s makes the batch fail."""

    name = "doubler"
    slot = 0
    model_name = "doubler"
    label = "model 'doubler' version 1"
    max_batch_size = 8
    batch_timeout = 0.0
    fixed_shapes = False  # as if its input had a dynamic axis past the batch one
    priority_levels = 2
    warmup_costs: tuple = ()

    def __init__(self) -> None:
        self.batches: list[int] = []  # instances per batch run
        self.stats = Stats(capacity=1)  # what the worker counts for Triton's statistics

    def batch(self, inputs):
        return (np.concatenate([x for (x,) in inputs]),)

    def predict(self, inputs):
        (x,) = inputs
        if (x == -1).all(axis=1).any():
            raise RuntimeError("a poisoned row")
        self.batches.append(len(x))
        return (x * 2,)

    def unbatch(self, outputs, sizes):
        return [(out,) for out in np.split(outputs[0], np.cumsum(sizes)[:-1])]


class Peer:
    def __init__(self, addr: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(addr)
        self.sock.settimeout(10)
        self.reader = FrameReader()

    def send(self, *messages) -> None:
        self.sock.sendall(b"".join(frame(m) for m in messages))

    def answers(self, n: int) -> dict[int, Answer]:
        got: dict[int, Answer] = {}
        while len(got) < n:
            for batch in self.reader.feed(self.sock.recv(1 << 20)):
                got.update(
                    (a.uid, a._replace(outputs=a.outputs and unpack(a.outputs))) for a in batch
                )
        return got


@pytest.fixture
def worker():
    addr = f"\0tensorgate-test-{uuid.uuid4().hex}"
    api = Doubler()
    w = Worker(api, addr, api.stats, worker_id=0)
    started = threading.Event()

    def serve():
        started.wait()
        w.serve()

    threading.Thread(target=serve, daemon=True).start()
    yield addr, api, started


def request(
    uid: int, enqueued_at: float, *inputs: np.ndarray, deadline: float = math.inf, level: int = 1
) -> Infer:
    return Infer(uid, enqueued_at, pack(inputs), deadline, level)


def _dispatched(reason: str) -> float:
    return BATCH_DISPATCH.labels("doubler", reason)._value.get()


def x(rows: int, value: float = 1.0) -> np.ndarray:
    return np.full((rows, 3), value, np.float32)


def test_requests_whose_shapes_differ_past_the_batch_axis_run_in_separate_batches(worker):
    """A dynamic axis besides the batch one (a sequence length): rows of 3 and of 5 values
    cannot be stacked, so each run of alike requests is its own batch, in arrival order."""
    addr, api, started = worker
    peer = Peer(addr)
    now = time.monotonic()
    wide = np.ones((1, 5), np.float32)
    peer.send(request(0, now, x(1)), request(1, now, x(1)), request(2, now, wide),
              request(3, now, x(1)))  # fmt: skip
    time.sleep(0.2)
    started.set()
    answers = peer.answers(4)
    assert api.batches == [2, 1, 1]
    np.testing.assert_array_equal(answers[2].outputs[0], wide * 2)


def test_what_is_queued_when_the_worker_is_free_runs_as_one_batch(worker):
    addr, api, started = worker
    peer = Peer(addr)
    now = time.monotonic()
    peer.send(*(request(i, now, x(2, i)) for i in range(6)))  # 12 instances, max batch 8
    time.sleep(0.2)  # all of it has arrived before the worker looks
    started.set()
    answers = peer.answers(6)
    assert api.batches == [8, 4]  # four requests fill the first batch; the rest run next
    for i in range(6):
        np.testing.assert_array_equal(answers[i].outputs[0], x(2, 2 * i))
    entry = api.stats.triton(api.slot, "doubler", 3)
    assert (entry["name"], entry["version"]) == ("doubler", "3")
    assert (entry["inference_count"], entry["execution_count"]) == (12, 2)
    stats = entry["inference_stats"]
    assert stats["queue"]["count"] == stats["compute_infer"]["count"] == 6
    assert stats["queue"]["ns"] >= 6 * 0.2e9  # each waited the 0.2 s before the worker looked
    assert 0 < stats["compute_infer"]["ns"] < stats["queue"]["ns"]
    assert stats["success"] == {"count": 0, "ns": 0}  # the HTTP side counts those
    assert entry["last_inference"] > 0


def test_a_cancelled_request_is_not_computed_and_an_expired_one_answers_504(worker):
    addr, api, started = worker
    peer = Peer(addr)
    now = time.monotonic()
    expired = request(2, now, x(1), deadline=now + 0.1)  # passes while the worker is busy
    peer.send(request(0, now, x(1)), request(1, now, x(1)), Cancel(0), expired)
    time.sleep(0.2)
    started.set()
    answers = peer.answers(2)
    assert set(answers) == {1, 2}
    assert answers[2].failure.reason == "deadline"
    assert "not computed" in answers[2].failure.message
    assert api.batches == [1]  # request 1 alone: 0 was cancelled, 2 expired


def test_batches_take_the_most_urgent_level_first_and_arrival_order_within_it(worker):
    addr, api, started = worker
    peer = Peer(addr)
    now = time.monotonic()
    low = [request(i, now, x(4, i), level=2) for i in range(3)]  # 12 instances of level 2
    urgent = [request(10 + i, now, x(4, 10 + i), level=1) for i in range(2)]  # 8 of level 1
    peer.send(*low, *urgent)
    time.sleep(0.2)
    started.set()
    order: list[list[int]] = []  # the uids of each batch's answers
    while sum(map(len, order)) < 5:
        for batch in peer.reader.feed(peer.sock.recv(1 << 20)):
            order.append([a.uid for a in batch])
    assert order[0] == [10, 11]  # the urgent ones fill the first batch of 8
    assert [uid for batch in order[1:] for uid in batch] == [0, 1, 2]
    assert api.batches == [8, 8, 4]


class CostlyBatches(Doubler):
    """A batch costs 50 ms + 0.1 ms per instance (its warm-up says so), and may wait 50 ms to
    fill: three requests 1 ms apart make the policy wait about 21 ms for more."""

    batch_timeout = 0.05
    warmup_costs = ((1, 0.0501), (8, 0.0508))


def test_the_earliest_deadline_cuts_the_policy_s_wait_short():
    addr = f"\0tensorgate-test-{uuid.uuid4().hex}"
    api = CostlyBatches()
    w = Worker(api, addr, api.stats, worker_id=0)
    peer = Peer(addr)
    now = time.monotonic()
    # the last must start within 80 ms: 1.25 x 50.3 ms + 1 ms of it is the batch's
    peer.send(request(0, now - 0.002, x(1)), request(1, now - 0.001, x(1)),
              request(2, now, x(1), deadline=now + 0.08))  # fmt: skip
    before = _dispatched("deadline")
    w.poll(1)
    taken = w.next_batch()
    assert [q.request.uid for q in taken.batch] == [0, 1, 2] and taken.expired == []
    assert _dispatched("deadline") - before == 1
    assert time.monotonic() - now < 0.0205  # it waited less than the policy's 21 ms


def test_dispatch_reasons_count_why_each_batch_left_the_queue(worker):
    """A worker free when requests are queued runs them at once (idle); a batch that
    reaches max_batch_size is full."""
    addr, _, started = worker
    peer = Peer(addr)
    before = {r: _dispatched(r) for r in ("idle", "full")}
    now = time.monotonic()
    peer.send(request(0, now, x(8)), request(1, now, x(3)))
    time.sleep(0.2)
    started.set()
    peer.answers(2)
    assert _dispatched("full") - before["full"] == 1
    assert _dispatched("idle") - before["idle"] == 1


def test_a_failing_batch_fails_only_its_own_requests(worker):
    addr, _, started = worker
    peer = Peer(addr)
    now = time.monotonic()
    peer.send(request(0, now, x(4, -1)), request(1, now, x(4)), request(2, now, x(3)))
    time.sleep(0.2)
    started.set()
    answers = peer.answers(3)
    assert (
        answers[0].failure.reason == "inference_error"
        and "a poisoned row" in answers[0].failure.message
    )
    assert answers[1].failure == answers[0].failure  # same batch of 8
    np.testing.assert_array_equal(answers[2].outputs[0], x(3, 2))


def test_each_http_process_gets_its_own_answers(worker):
    addr, _, started = worker
    a, b = Peer(addr), Peer(addr)
    started.set()
    a.send(request(0, time.monotonic(), x(1, 3)))
    b.send(request(0, time.monotonic(), x(1, 5)))
    np.testing.assert_array_equal(a.answers(1)[0].outputs[0], x(1, 6))
    np.testing.assert_array_equal(b.answers(1)[0].outputs[0], x(1, 10))


def spinning_worker(spin: float) -> tuple[str, Worker]:
    addr = f"\0tensorgate-test-{uuid.uuid4().hex}"
    api = Doubler()
    return addr, Worker(api, addr, api.stats, worker_id=0, spin=spin)


def test_the_spare_cores_are_read_from_the_runnable_tasks():
    cores = SpareCores()
    assert cores.cores == usable_cores()  # the affinity, capped by a cgroup quota (test_host.py)
    assert cores.spare(extra=10**6)
    cores.cores = 0  # the test itself is runnable: never fewer tasks than that
    assert not cores.spare()


def test_a_spinning_worker_sees_a_request_without_sleeping_and_gives_up_in_time():
    addr, w = spinning_worker(spin=0.2)
    w.cores.cores = 10**6  # a core always spare
    began = time.monotonic()
    w.spin()  # nothing comes: it polls for its 0.2 s, then the worker would sleep
    assert 0.2 <= time.monotonic() - began < 2
    peer = Peer(addr)
    peer.send(request(7, time.monotonic(), x(1, 4)))
    w.spin()  # connects and reads within the spin
    assert [q.request.uid for q in w.queue] == [7]
    w.run(w.take())
    np.testing.assert_array_equal(peer.answers(1)[7].outputs[0], x(1, 8))


def test_a_worker_does_not_spin_when_no_core_is_spare():
    _, w = spinning_worker(spin=5.0)
    w.cores.cores = 0
    began = time.monotonic()
    w.spin()
    assert time.monotonic() - began < 1  # it returns to sleep in epoll instead of for 5 s


# -- the one seam ----------------------------------------------------------------------------


def test_another_litserve_version_is_refused_with_the_fix():
    check_litserve_version(LITSERVE_VERSION)
    with pytest.raises(ImportError, match=r"pip install litserve==0\.2\.19"):
        check_litserve_version("0.3.0")


LITSERVE_INTERNALS = re.compile(
    r"litserve\.(loops|transport|utils|specs\.base)|_init_manager|_start_server|_perform_graceful_shutdown"
    r"|_start_worker_monitoring|_inference_workers_config|workers_setup_status|response_buffer"
    r"|_prepare_app_run|_transport\b|_SENTINEL"
)


def test_only_the_engine_reaches_into_litserve():
    root = Path(__file__).resolve().parents[1]
    engine = root / "service" / "engine"
    offenders = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for folder in ("service", "export", "training", "load_tests")
        for path in (root / folder).rglob("*.py")
        if engine not in path.parents
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if LITSERVE_INTERNALS.search(line)
    ]
    assert offenders == []


def test_inside_the_engine_only_lit_imports_litserve():
    """The version check in lit.py runs before any LitServe name is looked up."""
    engine = Path(__file__).resolve().parents[1] / "service" / "engine"
    importers = sorted(
        path.name
        for path in engine.glob("*.py")
        if re.search(r"^\s*(import|from) litserve\b", path.read_text(), re.MULTILINE)
    )
    assert importers == ["lit.py"]


# What LitServe 0.2.19 documents as its API for a server and a loop: the rest is internals,
# which lit.py alone may touch.
PUBLIC = {"LitServer": {"__init__", "run", "app"}, "LitLoop": {"__init__"}}


def litserve_names(cls: type) -> set[str]:
    """Every attribute a LitServe class and its LitServe bases have or set on `self`."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        if klass.__module__.startswith("litserve"):
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
            names |= {node.attr for node in ast.walk(tree) if _on_self(node)}
    return names


def _on_self(node: ast.AST) -> bool:
    """`self.x` or `super().x`."""
    if not isinstance(node, ast.Attribute):
        return False
    value = node.value
    return (isinstance(value, ast.Name) and value.id == "self") or (
        isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super"
    )


def touched(cls: type) -> set[str]:
    """The attributes a class's own source defines or reaches on `self` or `super()`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    defined = {node.name for node in tree.body[0].body if hasattr(node, "name")}
    return defined | {node.attr for node in ast.walk(tree) if _on_self(node)}


def test_outside_lit_py_the_engine_touches_only_litserves_public_names():
    from service.engine.lit import EngineLoop, LitLoop, ServerHooks
    from service.engine.server import EngineServer
    from service.engine.worker import WorkerLoop

    for ours, seam, theirs in (
        (EngineServer, ServerHooks, LitServer),
        (WorkerLoop, EngineLoop, LitLoop),
    ):
        internal = litserve_names(theirs) - PUBLIC[theirs.__name__]
        dunder = {n for n in internal if n.startswith("__") and n.endswith("__")}
        offenders = sorted(touched(ours) & (internal - dunder))
        assert offenders == [], f"{ours.__name__} touches LitServe's {offenders}: go through lit.py"
        assert issubclass(ours, seam)
    # the check sees what it must: the seam itself touches LitServer's internals
    assert {"_init_manager", "launch_inference_worker", "workers_setup_status"} <= touched(
        ServerHooks
    ) & litserve_names(LitServer)


def test_a_workers_status_key_parses_back_even_with_underscores_in_the_endpoint():
    key = str(StatusKey.of("/v2/models/my_model/versions/slot_3", 12))
    assert key == "slot_3_12"
    assert StatusKey.parse(key) == StatusKey("slot_3", 12)


# -- locks that a killed holder releases; the listener at a drain ----------------------------


def hold_then_wait(lock: ProcessLock, held) -> None:
    with lock:
        held.set()
        time.sleep(60)  # killed before this ends


def test_a_process_killed_holding_a_process_lock_releases_it():
    """multiprocessing's own Lock stays taken for ever; this one the kernel lets go."""
    lock = ProcessLock()
    ctx = mp.get_context("spawn")  # unpickled by path in the child, as in the workers
    held = ctx.Event()
    child = ctx.Process(target=hold_then_wait, args=(lock, held))
    child.start()
    assert held.wait(30)
    taken = threading.Event()
    waiter = threading.Thread(target=lambda: (lock.__enter__(), taken.set()), daemon=True)
    waiter.start()
    assert not taken.wait(0.3)  # the child holds it
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert taken.wait(5)
    lock.__exit__(None, None, None)


def test_a_drained_listener_refuses_new_connections_and_keeps_the_queued_ones():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        queued = [socket.create_connection(address) for _ in range(3)]
        assert listener_queue(listener) == 3
        refuse_new_connections(listener)
        late = socket.socket()
        late.settimeout(0.3)
        with pytest.raises(TimeoutError):  # its SYN is dropped: nothing was sent
            late.connect(address)
        late.close()
        accepted = []
        taker = threading.Thread(
            target=lambda: accepted.extend(listener.accept() for _ in range(3))
        )
        taker.start()
        assert empty_before_close([listener], within=5) == 0
        taker.join(5)
        for client, (conn, _) in zip(queued, accepted, strict=True):  # in order, none reset
            client.sendall(b"hi")
            assert conn.recv(2) == b"hi"
            conn.close()
            client.close()
