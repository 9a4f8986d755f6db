"""One LitAPI per served model: loads its backend in the inference worker and runs batches."""

import time

import numpy as np

from artifacts.manifest import TensorSpec
from artifacts.runtimes import Tensors, load_runtime

from .engine import Engine, LitAPI, LitSpec, WorkerLoop
from .metrics import BATCH_COMPUTE, BATCH_SIZE, INSTANCES, MODEL_INFO, MODEL_LOAD
from .repository import ServedModel
from .settings import Settings
from .tracing import model_attributes

WARMUP_ROUNDS = 3  # TorchScript's profiling executor optimises a graph after a few runs


class ModelAPI(LitAPI):
    """The LitServe lifecycle for one served version of a model.

    setup: load and warm the runtime (the worker reports ready only after it), timing the
    warm-up batches for the batching policy; batch -> predict -> unbatch: concatenate the
    requests input by input, run max-size device calls, split every output back. Requests
    arrive already validated as arrays of the inputs' datatypes (protocol.py, in the HTTP
    process), so there is nothing to decode.
    """

    def __init__(
        self, model: ServedModel, settings: Settings, engine: Engine, spec: LitSpec, slot: int
    ) -> None:
        """`slot`: the version's slot in the engine's version table, claimed for it."""
        super().__init__(
            max_batch_size=model.max_batch_size,
            batch_timeout=model.batch_timeout,
            spec=spec,  # the model's ModelRoutes for its highest version, else a VersionSpec
            loop=WorkerLoop(
                engine.token,
                model.key,
                (settings.log_level, settings.log_format),
                engine.stats,
                settings.worker_spin,
                traced=settings.tracing == "otlp",
            ),
        )
        self.model = model
        self.name = model.key  # the engine's name for this version's workers
        self.slot = slot
        self.model_name = model.name  # the metrics' model label
        self.label = f"model '{model.name}' version {model.version}"  # for the logs
        self.span_attributes = model_attributes(model.name, model.version, model.backend)
        self.threads = settings.threads
        self.fixed_shapes = all(-1 not in t.shape[1:] for t in model.manifest.inputs)
        self.priority_levels = settings.priorities(model.name).levels
        self.warmup_costs: list[tuple[int, float]] = []

    async def authorize(self) -> None:
        """LitServe's auth hook for this model's routes: deliberately a no-op coroutine.

        The API key is checked inside each endpoint, so that 401s are counted in the request
        metrics. Without this hook LitServe installs a sync no-op, which FastAPI runs in its
        thread pool on every request (about 5% of the HTTP process's CPU at 64 connections).
        """

    def setup(self, device: str) -> None:
        started = time.perf_counter()
        self.runtime = load_runtime(self.model.backend, self.model.artifact, device, self.threads)
        for size in sorted({1, self.max_batch_size}):
            inputs = warmup_inputs(self.model.manifest.inputs, size)
            for _ in range(WARMUP_ROUNDS):
                began = time.perf_counter()
                self.runtime.infer(inputs)
            self.warmup_costs.append((size, time.perf_counter() - began))  # the warm one
        name, version = self.model_name, str(self.model.version)
        MODEL_LOAD.labels(name, version).set(time.perf_counter() - started)
        MODEL_INFO.labels(name, version, self.model.backend, device).set(1)
        self.compute_seconds = BATCH_COMPUTE.labels(name, self.model.backend, device)
        self.batch_instances = BATCH_SIZE.labels(name)
        self.instances_total = INSTANCES.labels(name)

    def batch(self, inputs: list[Tensors]) -> Tensors:
        if len(inputs) == 1:
            return inputs[0]
        return tuple(np.concatenate(column) for column in zip(*inputs, strict=True))

    def predict(self, inputs: Tensors) -> Tensors:
        """N instances -> every output for them, in device calls of at most max_batch_size."""
        started = time.perf_counter()
        step, n = self.max_batch_size, len(inputs[0])
        calls = [
            self.runtime.infer(tuple(x[i : i + step] for x in inputs)) for i in range(0, n, step)
        ]
        self.compute_seconds.observe(time.perf_counter() - started)
        self.batch_instances.observe(n)
        self.instances_total.inc(n)
        if len(calls) == 1:
            return calls[0]
        return tuple(np.concatenate(column) for column in zip(*calls, strict=True))

    def unbatch(self, outputs: Tensors, sizes: list[int]) -> list[Tensors]:
        if len(sizes) == 1:
            return [outputs]
        cuts = np.cumsum(sizes)[:-1]
        return list(zip(*(np.split(out, cuts) for out in outputs), strict=True))


def warmup_inputs(specs: list[TensorSpec], instances: int) -> Tensors:
    """Zeros of each input's datatype and shape (a dynamic axis past the batch one: 1)."""
    return tuple(
        np.zeros((instances, *(max(d, 1) for d in spec.shape[1:])), dtype=spec.dtype)
        for spec in specs
    )
