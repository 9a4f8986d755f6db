"""Shadow traffic: a sampled fraction of a model's answered requests computed again by its
shadow version (TENSORGATE_SHADOW, or the traffic endpoint), and the outputs compared.

The copies are sent once the client's answer is computed, from a task of their own: the
client never waits for them, and their failure is only counted. Each HTTP process gathers
its copies for up to FLUSH_AFTER seconds, or a full batch, and sends them as one request, so
a shadow costs a worker wake-up and a socket round trip per flush rather than per copy. They
are dropped (and counted) when the shadow version is not serving or already holds a full
batch of requests, so a slow shadow never builds a queue. Comparisons are counted in the
shadow version's statistics (shared by the HTTP processes, read by
`GET /v2/repository/models/{m}/traffic`) and in the metrics.

Agreement, per output: for a classifier's outputs (one value per label) the same argmax for
every instance; for any other float output every element within TOLERANCE; else equal.
"""

import asyncio
import logging
import math
import random
from typing import NamedTuple

import numpy as np

from artifacts.runtimes import Tensors

from .admission import Urgency, unwaited
from .engine import Engine, version_key
from .errors import ServiceError
from .metrics import SHADOW_COMPARISONS, SHADOW_DIFFERENCE
from .repository import ServedModel
from .served import ModelVersions

logger = logging.getLogger(__name__)
TOLERANCE = 1e-4  # as the export's parity check allows against eager PyTorch
FLUSH_AFTER = 0.02  # seconds a sampled copy may wait for others to go with it


class Verdicts(NamedTuple):
    """Each copy's comparison."""

    agree: np.ndarray  # bool, per copy
    difference: np.ndarray  # the largest absolute difference of its numeric outputs, per copy


def compare(primary: Tensors, shadow: Tensors, labels: int, starts: np.ndarray) -> Verdicts:
    """The shadow's outputs against the answers, for a flush of copies at once: the outputs
    of all copies joined along the batch axis, copy i's rows beginning at starts[i]
    (`labels`: the model's number of classes). One pass of numpy over the flush: per copy,
    it cost about 9 us of Python."""
    n = len(starts)
    if len(primary) != len(shadow):
        return Verdicts(np.zeros(n, bool), np.full(n, math.inf))
    agree, largest = np.ones(n, bool), np.zeros(n)
    for a, b in zip(primary, shadow, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            return Verdicts(np.zeros(n, bool), np.full(n, math.inf))
        if a.size == 0:
            continue
        rows, other = a.reshape(len(a), -1), b.reshape(len(b), -1)
        if a.dtype.kind not in "fiu":
            agree &= np.logical_and.reduceat((rows == other).all(axis=1), starts)
            continue
        difference = np.abs(rows.astype(np.float64) - other).max(axis=1)  # per row
        largest = np.maximum(largest, np.maximum.reduceat(difference, starts))
        if a.dtype.kind == "f" and labels > 1 and a.ndim >= 2 and a.shape[-1] == labels:
            same = (a.argmax(-1) == b.argmax(-1)).reshape(len(a), -1).all(axis=1)
        else:
            same = difference <= TOLERANCE  # NaN: never
        agree &= np.logical_and.reduceat(same, starts)
    return Verdicts(agree, largest)


class Copies:
    """Sampled requests for one shadow version, of one input signature, waiting to be sent
    together as one request: a worker woken once per flush, not once per copy."""

    def __init__(self, target: ServedModel, labels: int, urgency: Urgency) -> None:
        self.target, self.labels, self.urgency = target, labels, urgency
        self.inputs: list[Tensors] = []
        self.answers: list[Tensors] = []  # what each request was answered
        self.instances = 0

    def add(self, inputs: Tensors, answer: Tensors) -> None:
        self.inputs.append(inputs)
        self.answers.append(answer)
        self.instances += len(inputs[0])

    def joined(self) -> Tensors:
        """The copies' inputs as one batch."""
        return join(self.inputs)

    def joined_answers(self) -> Tensors:
        """What they were answered, as one batch (of one signature's outputs: they stack)."""
        return join(self.answers)

    def starts(self) -> np.ndarray:
        """Where each copy's rows begin in the joined batch."""
        return np.cumsum([0, *(len(inputs[0]) for inputs in self.inputs[:-1])])


def join(parts: list[Tensors]) -> Tensors:
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(tensors) for tensors in zip(*parts, strict=True)]


class Shadowing:
    """One HTTP process's shadow copies: waiting up to FLUSH_AFTER seconds (or a full batch)
    to go together, then in flight."""

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine, self.timeout = engine, timeout
        self.waiting: dict[tuple, Copies] = {}  # by shadow version and input signature
        self.tasks: set[asyncio.Task] = set()  # held, or the event loop may drop them
        self._children: dict[tuple[str, int, str], tuple] = {}  # the metrics' labelled children

    def __getstate__(self) -> dict:
        return {**self.__dict__, "waiting": {}, "tasks": set(), "_children": {}}

    def offer(
        self, model: ModelVersions, answered: ServedModel, inputs: Tensors, outputs: Tensors
    ) -> None:
        """Queue a copy of an answered request for the model's shadow, if it is sampled."""
        shadow = model.shadow
        if shadow is None or answered.version == shadow.version:
            return
        if random.random() >= shadow.fraction:
            return
        target = model.versions.get(shadow.version)
        if target is None:
            self._count(model.name, shadow.version, "dropped")
            return
        signature = model.signatures[shadow.version]
        if signature.max_instances == 1:  # no batch axis: each copy goes alone
            alone = Copies(target, len(signature.labels), self._urgency(model))
            alone.add(inputs, outputs)
            self._send(alone)
            return
        key = (target.key, tuple((a.dtype.str, a.shape[1:]) for a in inputs))
        copies = self.waiting.get(key)
        if copies is None:
            copies = self.waiting[key] = Copies(target, len(signature.labels), self._urgency(model))
            asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush, key, copies)
        copies.add(inputs, outputs)
        if copies.instances >= target.max_batch_size:
            self._flush(key, copies)

    def _urgency(self, model: ModelVersions) -> Urgency:
        """The least urgent level: a copy never takes an answer's place in the queue."""
        levels = model.priorities.levels
        return unwaited(self.timeout)._replace(level=levels, levels=levels)

    def _flush(self, key: tuple, copies: Copies) -> None:
        if self.waiting.get(key) is copies:  # else sent already, as a full batch
            del self.waiting[key]
            self._send(copies)

    def _send(self, copies: Copies) -> None:
        target = copies.target
        if self.engine.in_flight(target.key) >= target.max_batch_size:  # busy: no queue for it
            self._count(target.name, target.version, "dropped", len(copies.inputs))
            return
        task = asyncio.ensure_future(self._run(copies))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, copies: Copies) -> None:
        target = copies.target
        try:
            computed = await self.engine.submit(target.key, copies.joined(), None, copies.urgency)
        except Exception as e:  # anything: a copy's failure never reaches a client
            if not isinstance(e, ServiceError):
                logger.warning("shadow %s failed: %s", target.key, e)
            # refused (full, draining, restarting, retired): dropped; else it failed
            refused = isinstance(e, ServiceError) and e.status == 503
            result = "dropped" if refused else "error"
            self._count(target.name, target.version, result, len(copies.inputs))
            return
        verdicts = compare(
            copies.joined_answers(), computed.outputs, copies.labels, copies.starts()
        )
        agreed = int(verdicts.agree.sum())
        self._count(target.name, target.version, "agree", agreed, verdicts.difference)
        self._count(target.name, target.version, "disagree", len(verdicts.agree) - agreed)

    def _count(
        self,
        model: str,
        version: int,
        result: str,
        n: int = 1,
        differences: np.ndarray | None = None,
    ) -> None:
        """`n` comparisons came to `result`; `differences`: every compared copy's largest
        difference, agreeing or not (counted once, with the agreements)."""
        if not n and differences is None:  # e.g. no copy of the flush disagreed
            return
        children = self._children.get((model, version, result))
        if children is None:  # labels() is a lookup per call: kept, made on first use
            children = self._children[(model, version, result)] = (
                SHADOW_COMPARISONS.labels(model, str(version), result),
                SHADOW_DIFFERENCE.labels(model, str(version)),
            )
        if n:
            children[0].inc(n)
        largest = 0.0
        if differences is not None:
            for difference in differences.tolist():
                children[1].observe(difference)
            largest = float(differences.max())
        slot = self.engine.slot(version_key(model, version))
        if slot is not None:
            self.engine.stats.shadowed(slot.index, result, n, largest)
