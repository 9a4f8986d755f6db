"""An in-process data plane for unit tests: a real engine, real inference workers serving on
their sockets in threads (a model that doubles its input), and a model repository of real
manifests; no HTTP server."""

import threading
from pathlib import Path

import numpy as np

from artifacts.manifest import Files, Manifest, TensorSpec, file_entry, write_manifest
from service.dataplane import DataPlane
from service.engine import Engine, State, VersionTable
from service.engine.wire import address
from service.engine.worker import Worker
from service.repository import describe
from service.served import ModelVersions
from service.settings import Settings, VersionPolicy
from service.tracing import BatchSpans, ServerSpans, model_attributes

MODEL = "doubler"
KEY = {"x-api-key": "s3cret"}


def publish(repository: Path, version: int, name: str = MODEL) -> None:
    """A version folder as export writes it: a file and its manifest (the file is never run
    here: the workers below compute in Python)."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"doubler %d" % version)
    spec = [-1, 3]
    manifest = Manifest(
        name=name,
        version=version,
        task="imported",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=spec)],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=spec)],
        files=Files(onnx=file_entry(folder / "model.onnx")),
        versions={},
        created="2026-12-07T00:00:00Z",
    )
    write_manifest(folder, manifest)


class Doubler:
    """A real Batcher for one version: doubles its input, plus the version number / 10, so
    an answer says which version computed it."""

    model_name = MODEL
    max_batch_size = 8
    batch_timeout = 0.0
    fixed_shapes = True
    priority_levels = 1
    warmup_costs: tuple = ()

    def __init__(self, version: int, slot: int) -> None:
        self.name, self.slot, self.version = f"{MODEL}:{version}", slot, version
        self.label = f"model '{MODEL}' version {version}"
        self.computed = 0  # instances

    def batch(self, inputs):
        return (np.concatenate([x for (x,) in inputs]),)

    def predict(self, inputs):
        (x,) = inputs
        self.computed += len(x)
        with np.errstate(over="ignore"):  # a test sends values whose double is Inf
            return (x * 2 + self.version / 10,)

    def unbatch(self, outputs, sizes):
        return [(out,) for out in np.split(outputs[0], np.cumsum(sizes)[:-1])]


class Plane:
    """A data plane over two served versions of the doubler, each with a worker thread."""

    def __init__(
        self, repository: Path, api_key: str | None = None, traced=None, sampled=None, **settings
    ) -> None:
        """`traced`: an OpenTelemetry TracerProvider, where the data plane records the spans
        of requests whose client sampled them,
        and `sampled` the workers' (which sample everything they are given, as in the
        service); `settings`: more Settings."""
        for version in (1, 2):
            publish(repository, version)
        self.settings = Settings(
            repository=repository, api_key=api_key, model_control="explicit", **settings
        )
        self.table = VersionTable([MODEL])
        self.engine = Engine(self.table, max_queue=4, request_timeout=5, drain_timeout=1)
        policy = VersionPolicy("all", ())
        served = [describe(self.settings, MODEL, v, policy) for v in (1, 2)]
        self.workers = {}
        for model in served:
            slot = self.table.claim(MODEL, model.version)
            self.table.set_state(slot, State.SERVING)
            self.workers[model.version] = api = Doubler(model.version, slot)
            spans = None
            if traced is not None:
                attributes = model_attributes(MODEL, model.version, model.backend)
                spans = BatchSpans(sampled, attributes, 0)
            addr = address(self.engine.token, model.key, 0)
            worker = Worker(api, addr, self.engine.stats, 0, spans=spans)
            threading.Thread(target=worker.serve, daemon=True).start()
        self.models = ModelVersions(served, self.settings, self.engine)
        self.plane = DataPlane([self.models], self.settings, self.engine, "cpu")
        if traced is not None:
            self.plane.spans = ServerSpans(traced, ratio=0.0)  # only what clients sample

    def slot(self, version: int) -> int:
        return self.workers[version].slot
