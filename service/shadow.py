"""Shadow traffic: a sampled fraction of a model's answered requests computed again by its
shadow version (TENSORGATE_SHADOW, or the traffic endpoint), and the outputs compared.

The copy is sent once the client's answer is computed, from a task of its own: the client
never waits for it, and its failure is only counted. It is dropped (and counted) when the
shadow version is not serving or already holds a full batch of requests, so a slow shadow
never builds a queue. Comparisons are counted in the shadow version's statistics (shared by
the HTTP processes, read by `GET /v2/repository/models/{m}/traffic`) and in the metrics.

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
from .errors import Overloaded, ServiceError
from .metrics import SHADOW_COMPARISONS, SHADOW_DIFFERENCE
from .repository import ServedModel
from .served import ModelVersions

logger = logging.getLogger(__name__)
TOLERANCE = 1e-4  # as the export's parity check allows against eager PyTorch


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


class Shadowing:
    """One HTTP process's shadow copies in flight."""

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine, self.timeout = engine, timeout
        self.tasks: set[asyncio.Task] = set()  # held, or the event loop may drop them
        self._children: dict[tuple[str, int, str], tuple] = {}  # the metrics' labelled children

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tasks": set(), "_children": {}}

    def offer(self, model: ModelVersions, answered: ServedModel, inputs: Tensors, outputs: Tensors):
        """Send a copy of an answered request to the model's shadow, if it is sampled."""
        shadow = model.shadow
        if shadow is None or answered.version == shadow.version:
            return
        if random.random() >= shadow.fraction:
            return
        target = model.versions.get(shadow.version)
        busy = target is None or self.engine.in_flight(target.key) >= target.max_batch_size
        if target is None or busy:
            self._count(model.name, shadow.version, "dropped")
            return
        labels = len(model.signatures[shadow.version].labels)
        urgency = self._urgency(model)
        task = asyncio.ensure_future(self._run(target, inputs, outputs, labels, urgency))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _urgency(self, model: ModelVersions) -> Urgency:
        """The least urgent level: a copy never takes an answer's place in the queue."""
        levels = model.priorities.levels
        return unwaited(self.timeout)._replace(level=levels, levels=levels)

    async def _run(
        self, target: ServedModel, inputs: Tensors, outputs: Tensors, labels: int, urgency: Urgency
    ) -> None:
        try:
            computed = await self.engine.submit(target.key, inputs, None, urgency)
        except Overloaded:
            self._count(target.name, target.version, "dropped")
            return
        except Exception as e:  # anything: the copy's failure never reaches a client
            if not isinstance(e, ServiceError):
                logger.warning("shadow %s failed: %s", target.key, e)
            self._count(target.name, target.version, "error")
            return
        agree, difference = compare(outputs, computed, labels)
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
