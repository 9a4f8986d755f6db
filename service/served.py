"""One served model's versions as this process sees them: which serve, their signatures, their
readiness, their slots in the engine's version table, and which one a request names.

Which versions serve changes while the server runs (lifecycle.py, in the main process): each
process reads the engine's version table again when its generation has changed, and reads the
manifest of a version it has not seen (the main process verified it before loading it).
"""

import random
import re

from artifacts.manifest import TensorSpec, versions

from .engine import Engine, Slot, State
from .errors import BadRequest, NotFound, Unavailable
from .protocol import Signature, Tensor
from .repository import ServedModel, describe
from .settings import Settings, VersionPolicy
from .traffic import Router, Shadow


def signature(model: ServedModel, max_instances: int) -> Signature:
    """What a version takes and gives, for validating and encoding its requests."""
    manifest = model.manifest

    def tensors(specs: list[TensorSpec]) -> tuple[Tensor, ...]:
        return tuple(Tensor(t.name, t.datatype, tuple(t.shape[1:])) for t in specs)

    return Signature(
        model=model.name,
        version=model.version,
        inputs=tensors(manifest.inputs),
        outputs=tensors(manifest.outputs),
        labels=tuple(manifest.labels),
        max_instances=max_instances if manifest.batched else 1,
    )


VERSION = re.compile(r"[1-9][0-9]{0,17}")  # what export writes: 1, 2, ...


def version_number(text: str) -> int:
    """A version as a request names it: ASCII decimal, no leading zero, below 10**18."""
    if VERSION.fullmatch(text) is None:
        shown = text if len(text) <= 24 else text[:21] + "..."
        raise BadRequest(
            f"version {shown!r} is not a version number: versions are 1, 2, ... in ASCII "
            "decimal, without leading zeros"
        )
    return int(text)


class ModelVersions:
    """A model's served versions; the unversioned and V1 routes answer with the highest, or
    as the model's traffic weights split them (traffic.py)."""

    def __init__(self, served: list[ServedModel], settings: Settings, engine: Engine) -> None:
        highest = max(served, key=lambda m: m.version)
        self.name: str = highest.name
        self.policy: VersionPolicy = highest.policy
        self.settings, self.engine = settings, engine
        self.priorities = settings.priorities(self.name)
        self.known = {m.version: m for m in served}  # every version read, served or not
        self.signatures = {m.version: signature(m, settings.max_instances) for m in served}
        self.at_start = highest  # its LitAPI carries the model's routes; OpenAPI shows it
        self.versions: dict[int, ServedModel] = {}  # the serving ones, ascending
        self.highest: ServedModel | None = None  # the highest serving one
        self.router = Router([], {}, None)  # where unversioned requests go
        self.shadow: Shadow | None = None  # the version that shadows the others (shadow.py)
        self._generation = -1

    def refresh(self) -> None:
        """Serve what the version table says, once per change of the table."""
        generation = self.engine.table.generation.value
        if generation == self._generation:
            return
        self._generation = generation
        serving = sorted(v for v, slot in self.slots().items() if slot.state == State.SERVING)
        for version in serving:
            if version not in self.known:  # loaded since start: verified by the main process
                model = describe(self.settings, self.name, version, self.policy, verify=False)
                self.known[version] = model
                self.signatures[version] = signature(model, self.settings.max_instances)
        self.versions = {v: self.known[v] for v in serving}
        self.highest = self.versions[serving[-1]] if serving else None
        self.shadow = self.engine.table.shadow(self.name)
        weights = self.engine.table.weights(self.name)
        self.router = Router(serving, weights, self.shadow and self.shadow.version)

    def slots(self) -> dict[int, Slot]:
        """This model's slots in the version table, by version: serving, loading or retiring."""
        return {s.version: s for s in self.engine.table.slots() if s.model == self.name}

    def placed_keys(self) -> list[str]:
        """The engine's keys of the versions with workers: serving, loading or retiring."""
        return [slot.key for slot in self.slots().values()]

    def is_unloaded(self) -> bool:
        return self.engine.table.is_unloaded(self.name)

    def failure(self) -> tuple[int, str]:
        """The version whose load failed last and why; (0, "") when none did."""
        return self.engine.table.failure(self.name)

    def routed(self) -> ServedModel:
        """The version for an inference request that names none: drawn by the weights."""
        self.refresh()
        version = self.router.pick(random.random())
        if version is None:
            raise Unavailable(self.none_serving())
        return self.versions[version]

    def served(self, version: str | None) -> ServedModel:
        """The version a request names (None: the primary, the highest serving unless
        weights say otherwise), or BadRequest for what is no version number, NotFound, or
        Unavailable when none serves."""
        self.refresh()
        if version is None:
            if self.router.primary is None:
                raise Unavailable(self.none_serving())
            return self.versions[self.router.primary]
        number = version_number(version)
        if number in self.versions:
            return self.versions[number]
        served = ", ".join(map(str, self.versions)) or "none"
        if number in versions(self.settings.repository / self.name):
            raise NotFound(
                f"model '{self.name}' version {version} is in the repository but not served "
                f"(the repository index says why); served: {served}"
            )
        raise NotFound(f"model '{self.name}' has no version '{version}'; served: {served}")

    def none_serving(self) -> str:
        """Why no version serves."""
        if self.is_unloaded():
            return (
                f"model '{self.name}' is unloaded; "
                f"POST /v2/repository/models/{self.name}/load serves it again"
            )
        folder = self.settings.repository / self.name
        if not versions(folder):
            return f"model '{self.name}' has no version in the repository any more"
        return f"model '{self.name}' has no version serving yet (the repository index says why)"

    async def ready(self, version: int | None = None) -> bool:
        """Every inference worker of the version (when None: of every serving version) has
        loaded and warmed it and is reachable from this process."""
        self.refresh()
        if version is not None:
            return version in self.versions and await self.engine.ready(self.versions[version].key)
        return all([await self.engine.ready(m.key) for m in self.versions.values()])

    def stats(self, model: ServedModel | None = None) -> list[dict]:
        """Triton's statistics entries: the version's (none if it was retired a moment ago),
        or, for None, every serving version's."""
        self.refresh()
        chosen = list(self.versions.values()) if model is None else [model]
        entries = []
        for served in chosen:
            slot = self.engine.slot(served.key)
            if slot is not None:
                entries.append(self.engine.stats.triton(slot.index, self.name, served.version))
        return entries
