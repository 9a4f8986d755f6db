"""The data plane: every operation of the service, for any transport, with plain arguments and
plain errors (errors.py). HTTP (rest.py, app.py, fastpath.py) and gRPC (grpc_server.py) only
decode a request, call one method here and encode what it returns.

This is where a request is authorised, its model and version are resolved, it is admitted to
the engine (which bounds the queue, batches and answers) and accounted for: the request
metrics, labelled by transport (`v1`, `v2`, `grpc`) and by the transport's own status (an HTTP
code, or a gRPC status name), and Triton's statistics.
"""

import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from artifacts.manifest import ARTIFACTS, ManifestError
from artifacts.runtimes import Tensors

from . import control, tracing
from .admission import Urgency, resolve
from .auth import check_key
from .cache import ResponseCache, key
from .engine import Action, Computed, Engine, Gone, version_key
from .engine.stats import ShadowCounts
from .errors import BadRequest, ClientGone, NotFound, Retired, ServiceError
from .logs import Access, access, level, printable
from .metrics import CACHE_REQUESTS, REJECTIONS, REQUEST_DURATION, REQUESTS
from .protocol import Decoded, Signature
from .repository import ServedModel, describe
from .served import ModelVersions
from .settings import Settings
from .shadow import Shadowing
from .tracing import ServerSpans, Span
from .traffic import Shadow, check_shadow, check_weights
from .triton import model_config

Transport = Literal["v1", "v2", "grpc"]  # the metrics' protocol label
Credentials = Mapping[str, str]  # HTTP headers or gRPC metadata, lower-case keys
Decode = Callable[[Signature], Awaitable[Decoded]]
SERVER = {"name": "tensorgate", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


NO_COMPARISONS = ShadowCounts(0, 0, 0, 0, 0.0)
UNCHANGED = object()  # a traffic body without "shadow"


class Readiness(NamedTuple):
    ready: bool
    why: str = ""  # what is not ready, for a 503's message


@dataclass(frozen=True)
class Inference:
    """A computed request: the version that computed it, its signature, the request as
    decoded for that signature, and one array per output."""

    model: ServedModel
    signature: Signature
    request: Decoded
    outputs: Tensors


def status_label(transport: Transport, error: Exception | None) -> str:
    """The code label of tensorgate_requests_total: the answer's HTTP status, or for gRPC its
    status code's name."""
    if transport == "grpc":
        return "OK" if error is None else getattr(error, "grpc", "INTERNAL")
    return "200" if error is None else str(getattr(error, "status", 500))


@dataclass
class Call:
    """One inference request being answered: the version it runs on, what it is called, its
    time in the worker, its span, and how it ended."""

    model: ServedModel | None
    body_id: str | None = None  # the request's own V2/gRPC `id`, once decoded
    computed: Computed | None = None  # None: not computed (a cache hit, an error)
    span: Span | None = None  # the server span, where tracing is on
    error: Exception | None = None


def request_ids() -> Iterator[str]:
    """Ids for requests that bring none: unique for the process's life, and cheap."""
    prefix = secrets.token_hex(4)
    return (f"{prefix}-{n}" for n in itertools.count(1))


def finite(outputs: Tensors, model: str) -> None:
    """A 400 for non-finite floats: e.g. inputs near the limits of float32."""
    for out in outputs:
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise BadRequest(
                f"model '{model}' computes non-finite outputs for these inputs; "
                "they are far outside the range of its training data"
            )


def shares(model: ModelVersions) -> dict[int, float]:
    """Each serving version's share of the model's requests that name no version."""
    model.refresh()
    routed = model.router.shares()
    return {version: routed.get(version, 0.0) for version in model.versions}


def no_routes(model: ModelVersions) -> None:
    """DataPlane.on_model where nothing routes requests (the workers' copy, the tests')."""


class DataPlane:
    """Made once in the main process before the HTTP processes fork: each process then uses
    its own copy, over the engine's shared memory."""

    def __init__(
        self,
        models: list[ModelVersions],
        settings: Settings,
        engine: Engine,
        device: str,
        caches: dict[str, ResponseCache] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.settings, self.engine = settings, engine
        self.caches = caches or {}  # the response caches (TENSORGATE_RESPONSE_CACHE), by model
        # called with each model this process takes on while serving (discover): the HTTP
        # app adds its routes
        self.on_model: Callable[[ModelVersions], None] = no_routes
        self.device = device  # "cpu" or "cuda", for Triton's model configuration
        self.shadowing = Shadowing(engine, settings.request_timeout)
        self.spans: ServerSpans | None = None  # set in each HTTP process where tracing is on
        self._ids: Iterator[str] | None = None  # made in the HTTP process that uses it
        # prometheus_client's labels() is a lookup per call, so the children are kept, made
        # on first use in the HTTP process (they cannot be pickled into the workers)
        self._children: dict[tuple[str, Transport, str, int], tuple] = {}

    def __getstate__(self) -> dict:
        # the app stays in its process; the workers read no cache
        return {**self.__dict__, "on_model": no_routes, "caches": {}}

    def authorise(self, credentials: Credentials) -> None:
        check_key(credentials, self.settings.api_key)

    def discover(self) -> None:
        """Take on the models named in the version table since start that have a version
        placed (loading, serving or retiring), reading that version's manifest."""
        if len(self.models) == len(self.engine.table.models):
            return
        placed = {}
        for slot in self.engine.table.slots():
            if slot.model not in self.models:
                placed[slot.model] = max(slot.version, placed.get(slot.model, 0))
        for name, version in placed.items():
            policy = self.settings.policy(name)
            try:
                first = describe(self.settings, name, version, policy, verify=False)
            except ManifestError:  # removed meanwhile: the main process unloads it
                continue
            self.models[name] = model = ModelVersions([first], self.settings, self.engine)
            self.on_model(model)

    def every_model(self) -> list[ModelVersions]:
        self.discover()
        return list(self.models.values())

    def model(self, name: str, credentials: Credentials | None = None) -> ModelVersions:
        """The model, or NotFound; the served models are named only to a caller who may read
        metadata (with an API key set: one who gave it)."""
        if name not in self.models:
            self.discover()
        if name not in self.models:
            if credentials is not None:
                self.authorise(credentials)  # a 401 first: no names to a caller without it
            named = credentials is not None or self.settings.api_key is None
            served = f"; served: {', '.join(sorted(self.models))}" if named else ""
            raise NotFound(f"unknown model {name!r}{served}")
        return self.models[name]

    # -- server --------------------------------------------------------------------------

    async def server_ready(self) -> Readiness:
        if self.engine.draining:
            return Readiness(False, "not ready: the server is shutting down")
        loading = [m.name for m in self.every_model() if not await m.ready()]
        if loading:
            return Readiness(False, f"not ready: {', '.join(loading)} loading or restarting")
        return Readiness(True)

    def server_metadata(self, credentials: Credentials) -> dict:
        self.authorise(credentials)
        return SERVER

    def model_names(self, credentials: Credentials) -> list[str]:
        self.authorise(credentials)
        return sorted(m.name for m in self.every_model())

    def in_flight(self, name: str) -> int:
        """The model's requests admitted and not yet answered, every version's, across every
        HTTP process (for the queue metrics)."""
        return sum(self.engine.in_flight(key) for key in self.model(name).placed_keys())

    # -- models --------------------------------------------------------------------------

    async def model_ready(self, name: str, version: str | None) -> Readiness:
        """Open, like the health endpoints (probes carry no key)."""
        model = self.model(name)
        model.refresh()
        if version is None and model.highest is None:
            return Readiness(False, model.none_serving())
        served = model.served(version)
        if not await model.ready(served.version):
            return Readiness(False, f"model '{name}' is loading or restarting")
        return Readiness(True)

    async def model_status(self, name: str) -> dict:
        """KServe V1's model status, the highest serving version's readiness: open like the
        V2 readiness route, for the same probes."""
        model = self.model(name)
        return {"name": name, "ready": await model.ready(model.served(None).version)}

    def model_metadata(self, name: str, version: str | None, credentials: Credentials) -> dict:
        self.authorise(credentials)
        model = self.model(name, credentials)
        served = model.served(version)
        manifest = served.manifest
        return {
            "name": name,
            "versions": [str(v) for v in model.versions],
            "platform": ARTIFACTS[served.backend].platform,
            "inputs": [t.model_dump() for t in manifest.inputs],
            "outputs": [t.model_dump() for t in manifest.outputs],
            "labels": list(manifest.labels),
        }

    def model_config(self, name: str, version: str | None, credentials: Credentials) -> dict:
        """Triton's model configuration."""
        self.authorise(credentials)
        model = self.model(name, credentials)
        return model_config(model.served(version), self.settings, self.device)

    def statistics(
        self, name: str | None, version: str | None, credentials: Credentials
    ) -> list[dict]:
        """Triton's statistics: every model's (name None), a model's every served version's,
        or the one version named."""
        self.authorise(credentials)
        if name is None:
            return [entry for m in self.every_model() for entry in m.stats()]
        model = self.model(name, credentials)
        return model.stats(model.served(version) if version else None)

    # -- the repository extension ----------------------------------------------------------

    async def repository_index(self, ready_only: bool, credentials: Credentials) -> list[dict]:
        self.authorise(credentials)
        return await control.index(self.every_model(), self.settings, ready_only)

    async def model_control(self, name: str, action: Action, credentials: Credentials) -> None:
        """Load or unload a model (explicit model control), one new to the repository too."""
        self.authorise(credentials)
        known = name in self.models
        await control.load_or_unload(self.settings, self.engine, name, action, known)
        if action == Action.LOAD:
            self.discover()
            await control.until_ready(self.models[name])

    # -- traffic between versions (traffic.py, shadow.py) ----------------------------------

    def traffic(self, name: str, credentials: Credentials) -> dict:
        """The model's weights, where its unversioned requests go now, why a canary was last
        rolled back, and its shadow with the comparisons so far."""
        self.authorise(credentials)
        model = self.model(name, credentials)
        table = self.engine.table
        return {
            "weights": {str(v): w for v, w in table.weights(name).items()},
            "routed": {str(v): round(share, 6) for v, share in shares(model).items()},
            "rollback": table.rollback(name) or None,
            "shadow": self._shadow_summary(model),
        }

    def traffic_shares(self) -> dict[str, dict[int, float]]:
        """Every model's shares, for tensorgate_traffic_weight."""
        return {model.name: shares(model) for model in self.every_model()}

    def _shadow_summary(self, model: ModelVersions) -> dict | None:
        if model.shadow is None:
            return None
        slot = self.engine.slot(version_key(model.name, model.shadow.version))
        counts = self.engine.stats.shadow_counts(slot.index) if slot else NO_COMPARISONS
        largest = counts.max_difference
        return {
            "version": str(model.shadow.version),
            "fraction": model.shadow.fraction,
            **counts._asdict(),
            "max_difference": largest if math.isfinite(largest) else None,  # inf: shapes differ
        }

    def set_traffic(self, name: str, body: object, credentials: Credentials) -> dict:
        """Replace the model's weights and/or its shadow (explicit model control only):
        `{"weights": {"1": 90, "2": 10}, "shadow": {"version": 2, "fraction": 0.1}}`, either
        key alone; `{}` weights or a null shadow clears them. Answers as traffic() does."""
        self.authorise(credentials)
        model = self.model(name, credentials)
        if self.settings.model_control != "explicit":
            raise BadRequest(
                f"cannot change the traffic of '{name}': the model control mode is "
                f"{self.settings.model_control} (TENSORGATE_MODEL_CONTROL=explicit allows it)"
            )
        weights, shadow = self._traffic_body(model, body)
        if weights is not None:
            self.engine.table.set_weights(name, weights)
        if shadow is not UNCHANGED:
            self.engine.table.set_shadow(name, shadow)
        return self.traffic(name, credentials)

    def _traffic_body(self, model: ModelVersions, body: object) -> tuple:
        """(the new weights, or None: unchanged; the new shadow, None or UNCHANGED)."""
        if not isinstance(body, dict) or not set(body) <= {"weights", "shadow"}:
            raise BadRequest('the body must be {"weights": {...}, "shadow": {...}}, either key')
        weights, shadow = None, body.get("shadow", UNCHANGED)
        try:
            if "weights" in body:
                if not isinstance(body["weights"], dict):
                    raise ValueError('"weights" must be an object of version: weight')
                weights = check_weights(body["weights"], "weights")
            if isinstance(shadow, dict):
                shadow = check_shadow(shadow.get("version"), shadow.get("fraction"), "shadow")
            elif shadow is not None and shadow is not UNCHANGED:
                raise ValueError('"shadow" must be {"version": V, "fraction": F} or null')
        except ValueError as e:
            raise BadRequest(str(e)) from None
        model.refresh()
        named = [v for v, w in (weights or {}).items() if w]
        for version in named + ([shadow.version] if isinstance(shadow, Shadow) else []):
            if version not in model.versions:
                served = ", ".join(map(str, model.versions)) or "none"
                raise BadRequest(
                    f"model '{model.name}' version {version} is not serving; serving: {served}"
                )
        after = model.shadow if shadow is UNCHANGED else shadow
        weighted = self.engine.table.weights(model.name) if weights is None else weights
        if after and weighted.get(after.version):
            raise BadRequest(f"version {after.version} is the shadow: it takes no weight")
        return weights, shadow

    # -- inference -----------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        transport: Transport,
        credentials: Credentials,
        decode: Decode,
        gone: Gone | None = None,
    ) -> Inference:
        """Authorise, resolve the version (None: as the model's traffic weights route it),
        decode the request for its signature (`decode`, the transport's), run it and account
        for it; a sampled share goes on to the model's shadow. A request for no version in
        particular whose version was retired before it was admitted (a new version took
        over) runs again on one serving now. `gone` returns once the client has left, so that
        a request nobody waits for is not computed."""
        arrived = time.monotonic()  # a deadline counts from here, the body's reading included
        model = self.model(name, credentials)
        async with self._accounted(model, transport, credentials) as call:
            self.authorise(credentials)
            # a 404 before the body is read
            call.model = model.routed() if version is None else model.served(version)
            try:
                done = await self._run(model, call, decode, gone, arrived)
            except Retired:
                if version is not None:
                    raise
                call.model = model.routed()
                done = await self._run(model, call, decode, gone, arrived)
        if model.shadow is not None:
            self.shadowing.offer(model, done.model, done.request.inputs, done.outputs)
        return done

    async def _run(
        self, model: ModelVersions, call: Call, decode: Decode, gone: Gone | None, arrived: float
    ) -> Inference:
        sig = model.signatures[call.model.version]
        request = await decode(sig)
        call.body_id = request.id
        cap = self.settings.request_timeout
        urgency = resolve(request.asked, model.priorities, cap, arrived, model.name)
        cache = self.caches.get(model.name)
        if cache is None or self.engine.draining:
            outputs = await self._compute(call, request.inputs, gone, urgency)
        else:
            outputs = await self._cached(cache, call, request.inputs, gone, urgency)
        return Inference(call.model, sig, request, outputs)

    async def _compute(
        self, call: Call, inputs: Tensors, gone: Gone | None, urgency: Urgency
    ) -> Tensors:
        """The worker's outputs for the request, its time there kept for the access log."""
        traced = None if call.span is None else tracing.ref(call.span)
        call.computed = await self.engine.submit(call.model.key, inputs, gone, urgency, traced)
        finite(call.computed.outputs, call.model.name)
        return call.computed.outputs

    async def _cached(
        self,
        cache: ResponseCache,
        call: Call,
        inputs: Tensors,
        gone: Gone | None,
        urgency: Urgency,
    ) -> Tensors:
        """The outputs from the model's response cache, or computed and stored there; counted
        in Triton's cache statistics (a miss: its lookup and insertion time) and the metrics."""
        served = call.model
        started = time.perf_counter()
        k = key(served.version, inputs)
        outputs = cache.get(k)
        slot = self.engine.slot(served.key)
        if outputs is not None:
            if slot is not None:
                self.engine.stats.cache(slot.index, True, time.perf_counter() - started)
            CACHE_REQUESTS.labels(served.name, "hit").inc()
            return outputs
        looked = time.perf_counter() - started
        outputs = await self._compute(call, inputs, gone, urgency)
        stored = time.perf_counter()
        cache.put(k, outputs)
        if slot is not None:
            took = looked + time.perf_counter() - stored
            self.engine.stats.cache(slot.index, False, took)
        CACHE_REQUESTS.labels(served.name, "miss").inc()
        return outputs

    @asynccontextmanager
    async def _accounted(
        self, model: ModelVersions, transport: Transport, credentials: Credentials
    ) -> AsyncIterator[Call]:
        """Count one inference request in the metrics and Triton's statistics, whatever its
        outcome, trace it and log it: the caller sets the call's version."""
        model.refresh()
        call, started = Call(model.highest), time.perf_counter()
        if self.spans is not None:
            call.span = self.spans.start(credentials, transport, model.name)
        try:
            yield call
        except Exception as e:
            call.error = e
            if isinstance(e, ServiceError) and not isinstance(e, ClientGone):
                REJECTIONS.labels(model.name, e.reason).inc()  # the worker counts ClientGone
            raise
        finally:
            served = call.model
            label = served.version if served is not None else 0  # 0: no version serving
            code = status_label(transport, call.error)
            answered, latency = self._metrics(model.name, transport, code, label)
            took = time.perf_counter() - started
            answered.inc()
            latency.observe(took)
            failed = call.error is not None and getattr(call.error, "status", 500) >= 500
            if served is not None:
                outcome = "success" if call.error is None else "fail"
                self.engine.record(served.key, outcome, took, server_error=failed)
            if call.span is not None:
                tracing.finish(call.span, self._traced(call), code, call.error)
            if self.settings.access_log or level(call.error) == logging.ERROR:  # a fault
                self._log(call, model.name, transport, code, took, credentials)

    def _request_id(self) -> str:
        if self._ids is None:
            self._ids = request_ids()
        return next(self._ids)

    @staticmethod
    def _traced(call: Call) -> dict:
        """The server span's attributes, once the request is answered."""
        found = (
            {}
            if call.model is None
            else {tracing.VERSION: call.model.version, tracing.BACKEND: call.model.backend}
        )
        if call.computed is not None:
            found["tensorgate.queue_ms"] = call.computed.queued * 1e3
            found["tensorgate.compute_ms"] = call.computed.computed * 1e3
        return found

    def _log(
        self,
        call: Call,
        model: str,
        transport: Transport,
        code: str,
        took: float,
        credentials: Credentials,
    ) -> None:
        """The request's access record (or a server fault's, with the access log off); its
        id the client's X-Request-ID, else its body's id, else one made here."""
        computed = call.computed
        given = credentials.get("x-request-id") or call.body_id
        record = Access(
            request_id=printable(given or self._request_id()),
            model=model,
            version=call.model.version if call.model is not None else 0,
            protocol=transport,
            status=code,
            ms=took * 1e3,
            queue_ms=None if computed is None else computed.queued * 1e3,
            compute_ms=None if computed is None else computed.computed * 1e3,
            trace_id=tracing.trace_id(call.span),
        )
        access(record, call.error)

    def _metrics(self, name: str, transport: Transport, code: str, version: int) -> tuple:
        """(requests counter, latency histogram) children for these labels."""
        key = (name, transport, code, version)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                REQUESTS.labels(name, str(version), transport, code),
                REQUEST_DURATION.labels(name, str(version), transport),
            )
        return children
