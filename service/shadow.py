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
from itertools import pairwise
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


class Comparison(NamedTuple):
    agree: bool
    difference: float  # the largest absolute difference of any numeric output element


def compare(primary: Tensors, shadow: Tensors, labels: int) -> Comparison:
    """The shadow's outputs against the answer's (`labels`: the model's number of classes)."""
    if len(primary) != len(shadow):
        return Comparison(False, math.inf)
    agree, largest = True, 0.0
    for a, b in zip(primary, shadow, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            return Comparison(False, math.inf)
        if a.dtype.kind not in "fiu" or a.size == 0:
            agree = agree and bool(np.array_equal(a, b))
            continue
        largest = max(largest, float(np.abs(a.astype(np.float64) - b).max()))
        if a.dtype.kind == "f" and labels > 1 and a.ndim >= 2 and a.shape[-1] == labels:
            agree = agree and bool(np.array_equal(a.argmax(-1), b.argmax(-1)))
        else:
            agree = agree and bool(np.allclose(a, b, rtol=0, atol=TOLERANCE))
    return Comparison(agree, largest)


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
        if len(self.inputs) == 1:
            return self.inputs[0]
        return [np.concatenate(parts) for parts in zip(*self.inputs, strict=True)]

    def split(self, computed: Tensors) -> list[Tensors]:
        """The shadow's outputs for the joined batch, per copy."""
        bounds = np.cumsum([0, *(len(inputs[0]) for inputs in self.inputs)])
        return [[out[a:b] for out in computed] for a, b in pairwise(bounds)]


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
            for _ in copies.inputs:
                self._count(target.name, target.version, "dropped")
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
            for _ in copies.inputs:
                self._count(target.name, target.version, result)
            return
        for answer, shadowed in zip(copies.answers, copies.split(computed.outputs), strict=True):
            agree, difference = compare(answer, shadowed, copies.labels)
            self._count(target.name, target.version, "agree" if agree else "disagree", difference)

    def _count(self, model: str, version: int, result: str, difference: float = 0.0) -> None:
        children = self._children.get((model, version, result))
        if children is None:  # labels() is a lookup per call: kept, made on first use
            children = self._children[(model, version, result)] = (
                SHADOW_COMPARISONS.labels(model, str(version), result),
                SHADOW_DIFFERENCE.labels(model, str(version)),
            )
        children[0].inc()
        if result in ("agree", "disagree"):
            children[1].observe(difference)
        slot = self.engine.slot(version_key(model, version))
        if slot is not None:
            self.engine.stats.shadowed(slot.index, result, difference)
