"""Which versions each model serves while the server runs, as Triton's model control modes
have it: the main process's controller, run by the engine's supervisor every round.

- none: the versions chosen at start, until the server stops;
- poll: every TENSORGATE_REPOSITORY_POLL seconds each model's folder is read again and its
  version policy applied: new versions are loaded, versions gone or no longer chosen are
  unloaded, a model whose folder is gone is unloaded, and a new model folder is served
  (unless TENSORGATE_MODELS names the models to serve);
- explicit: `POST /v2/repository/models/{m}/load` does that for one model, one added to the
  repository since start included (and serves it again after an unload); `.../unload`
  unloads every version of it.

A model added while serving is named in the version table, where every process finds it
(an HTTP process adds its routes when it first meets it: dataplane.py).

A version is verified (its manifest, every file's sha256) before its workers start, and
takes traffic once they are warm; only then are the versions it replaces retired, which
answer what they admitted before their workers stop. A version that fails stays out: the
old ones keep serving, the failure is logged naming the file or error, counted in
`tensorgate_model_load_failures_total` and shown in the repository index. It is tried
again when its files change (poll) or when a load asks for it (explicit).
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from artifacts.manifest import ManifestError, versions

from .engine import Action, EngineServer, LitAPI, StartupError, State, VersionTable
from .metrics import LOAD_FAILURES
from .repository import ServedModel, describe, model_folders
from .rollback import CanaryWatch
from .settings import Settings, VersionPolicy

logger = logging.getLogger(__name__)

MakeAPI = Callable[[ServedModel, int], LitAPI]  # (version, table slot) -> its LitAPI


DIGEST = re.compile(r"\b[0-9a-f]{64}\b")


def public(reason: str, repository: Path) -> str:
    """A failure as clients read it (the repository index, a load's 400): paths relative to the
    repository and no file digests; the log keeps the whole of it."""
    for prefix in sorted({str(repository.resolve()), str(repository)}, key=len, reverse=True):
        reason = reason.replace(prefix + "/", "")
    return DIGEST.sub("<sha256>", reason)


def stamp(folder: Path) -> int:
    """When the version's files last changed (so a failed version is retried once fixed)."""
    try:
        return max((p.stat().st_mtime_ns for p in folder.iterdir()), default=0)
    except FileNotFoundError:
        return 0


@dataclass
class Ask:
    """A load asked for through the API, answered once the model's loads have settled."""

    request: int
    failed: bool = False


@dataclass
class Lifecycle:
    settings: Settings
    table: VersionTable
    policies: dict[str, VersionPolicy]  # every model named in the version table
    make_api: MakeAPI
    # the versions each model is to serve: those served at start, until a sync reads the
    # repository again (poll mode, or a load); never the repository read behind its back
    targets: dict[str, tuple[int, ...]]
    loading: dict[int, ServedModel] = field(default_factory=dict)  # slot -> version
    failed: dict[tuple[str, int], int] = field(default_factory=dict)  # -> stamp at failure
    asks: dict[str, Ask] = field(default_factory=dict)  # model -> its load being answered
    unnamed: set[str] = field(default_factory=set)  # folders the table refused a name
    canaries: CanaryWatch | None = None  # rolls canaries back (TENSORGATE_CANARY_*)
    next_poll: float = 0.0

    def __post_init__(self) -> None:
        self.next_poll = time.monotonic() + self.settings.repository_poll
        for model in self.policies:
            self._route(model)
        named = {*self.settings.traffic_weights, *self.settings.shadows}
        for model in sorted(named - set(self.policies)):
            logger.warning(
                "TENSORGATE_TRAFFIC or TENSORGATE_SHADOW names model '%s', which is not served; "
                "it applies if the model is added while serving",
                model,
            )

    def step(self, server: EngineServer) -> None:
        polled = self.settings.model_control == "poll" and time.monotonic() >= self.next_poll
        if polled and self.settings.pinned is None:
            self._name_new_folders()
        self._adopt()
        for model in self.policies:
            self._take_request(server, model)
        if polled:
            self.next_poll = time.monotonic() + self.settings.repository_poll
            for model in self.policies:
                self.sync(server, model)
        self._progress(server)
        for model in self.policies:
            self._retire_replaced(server, model)
        self._answer()
        if self.canaries is not None:
            self.canaries.step()

    # -- which models ----------------------------------------------------------------------

    def _name_new_folders(self) -> None:
        """Name in the table each model folder with a complete version that it lacks."""
        repository = self.settings.repository
        for name in model_folders(repository):
            if name in self.table.models or name in self.unnamed:
                continue
            if not versions(repository / name):
                continue
            try:
                self.table.add_model(name)
            except (ValueError, RuntimeError) as e:
                logger.error("model folder '%s' not served: %s", name, e)
                self.unnamed.add(name)  # said once, not every poll

    def _adopt(self) -> None:
        """Take on the models named since the last round (by the poller, or by an HTTP
        process asking for an explicit load): the settings' version policy, nothing wanted
        until a sync reads their folders."""
        for name in self.table.models:
            if name not in self.policies:
                self.policies[name] = self.settings.policy(name)
                self.targets[name] = ()
                self._route(name)
                logger.info("model '%s': new in the repository", name)

    def _route(self, model: str) -> None:
        """The model's traffic weights and shadow as the settings give them (traffic.py)."""
        weights = self.settings.traffic_weights.get(model)
        if weights:
            self.table.set_weights(model, weights)
        shadow = self.settings.shadows.get(model)
        if shadow:
            self.table.set_shadow(model, shadow)

    # -- what to serve -------------------------------------------------------------------

    def wanted(self, model: str) -> tuple[int, ...]:
        """The versions the model's policy picks among those in the repository that have
        not failed (since their files last changed); none once it is unloaded."""
        if self.table.is_unloaded(model):
            return ()
        folder = self.settings.repository / model

        def healthy(version: int) -> bool:
            failed_at = self.failed.get((model, version))
            return failed_at is None or failed_at != stamp(folder / str(version))

        candidates = tuple(filter(healthy, versions(folder)))
        return tuple(v for v in self.policies[model].select(candidates) if v in candidates)

    def placed(self, model: str, *states: State) -> dict[int, int]:
        """{version: slot} of the model's versions in these states."""
        slots = self.table.slots()
        return {s.version: s.index for s in slots if s.model == model and s.state in states}

    def sync(self, server: EngineServer, model: str) -> None:
        """Start loading every version the policy picks that has no workers yet."""
        while True:
            self.targets[model] = self.wanted(model)
            placed = self.placed(model, State.LOADING, State.SERVING)
            new = [v for v in self.targets[model] if v not in placed]
            if not new:
                return
            for version in new:
                if not self._load(server, model, version):
                    break  # a failure changes what is wanted: choose again

    def _load(self, server: EngineServer, model: str, version: int) -> bool:
        try:
            served = describe(self.settings, model, version, self.policies[model])
            slot = self.table.claim(model, version)
        except (ManifestError, RuntimeError) as e:
            self._fail(model, version, str(e))
            return False
        server.place(self.make_api(served, slot))
        self.loading[slot] = served
        logger.info("model '%s' version %d: verified; loading", model, version)
        return True

    def _progress(self, server: EngineServer) -> None:
        for slot, served in list(self.loading.items()):
            try:
                ready = server.progress(slot)
            except StartupError as e:
                del self.loading[slot]
                server.discard(slot)
                self._fail(served.name, served.version, str(e))
                self.sync(server, served.name)  # e.g. serve the previous version again
                continue
            if ready:
                del self.loading[slot]
                self.table.set_state(slot, State.SERVING)
                logger.info("model '%s' version %d: serving", served.name, served.version)

    def _retire_replaced(self, server: EngineServer, model: str) -> None:
        """Once none of the model's versions is loading, retire the serving ones that the
        last sync no longer picked."""
        if self.placed(model, State.LOADING):
            return
        for version, slot in self.placed(model, State.SERVING).items():
            if version not in self.targets[model]:
                server.retire(slot)
                logger.info("model '%s' version %d: unloading", model, version)

    def _fail(self, model: str, version: int, reason: str) -> None:
        logger.error("model '%s' version %d not loaded: %s", model, version, reason)
        LOAD_FAILURES.labels(model, str(version)).inc()
        self.failed[(model, version)] = stamp(self.settings.repository / model / str(version))
        self.table.fail(model, version, public(reason, self.settings.repository))
        if model in self.asks:
            self.asks[model].failed = True

    # -- the repository API's load and unload ----------------------------------------------

    def _take_request(self, server: EngineServer, model: str) -> None:
        pending = self.table.pending(model)
        if pending is None or (model in self.asks and self.asks[model].request == pending[1]):
            return
        action, request = pending
        if action == Action.UNLOAD:
            self.table.set_unloaded(model, True)
            self.targets[model] = ()  # its versions retire from now on
            self.table.answer(model, request, ok=True)
            return
        self.table.set_unloaded(model, False)
        self.failed = {k: v for k, v in self.failed.items() if k[0] != model}  # try again
        self.asks[model] = ask = Ask(request)
        if not versions(self.settings.repository / model):
            self._fail(model, 0, f"{self.settings.repository / model}: no complete version")
        self.sync(server, model)
        ask.failed = ask.failed or not self.targets[model]

    def _answer(self) -> None:
        for model, ask in list(self.asks.items()):
            if not self.placed(model, State.LOADING):
                self.table.answer(model, ask.request, ok=not ask.failed)
                del self.asks[model]
