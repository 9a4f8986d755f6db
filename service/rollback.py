"""Canary rollback, in the main process: each supervision round (at most once a second) every
canary's answers over the last TENSORGATE_CANARY_WINDOW seconds are judged (traffic.verdict),
and a canary that breaks a limit gets weight 0: its share goes to the other weighted
versions, the log says why, `tensorgate_canary_rollbacks_total` counts it and the traffic
endpoint shows the reason until the weights are next set.

The answers come from the engine's statistics (every HTTP process adds to them), so a
version's window counts every request it answered, those that named it included.
"""

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .engine import State, VersionTable, version_key
from .engine.stats import Stats
from .metrics import CANARY_ROLLBACKS
from .traffic import Answers, Limits, canaries, verdict

logger = logging.getLogger(__name__)
CHECK_EVERY = 1.0  # seconds between judgements


class Snapshot(NamedTuple):
    at: float  # time.monotonic()
    answers: Answers  # cumulative, since the version took its slot


@dataclass
class CanaryWatch:
    table: VersionTable
    stats: Stats
    limits: Limits
    # per canary (slot, version key): its snapshots, the oldest the window's start
    history: dict[tuple[int, str], deque[Snapshot]] = field(default_factory=dict)
    next_check: float = 0.0

    def step(self) -> None:
        now = time.monotonic()
        if not self.limits.on or now < self.next_check:
            return
        self.next_check = now + CHECK_EVERY
        serving = {s.key: s.index for s in self.table.slots() if s.state == State.SERVING}
        watched = set()
        for model in self.table.models:
            weights = self.table.weights(model)
            for version in canaries(weights):
                key = version_key(model, version)
                if key not in serving:
                    continue
                watched.add((serving[key], key))
                window = self._window((serving[key], key), now, self.stats.answers(serving[key]))
                reason = verdict(window, self.limits)
                if reason is not None:
                    self._roll_back(model, version, weights, reason)
        for gone in set(self.history) - watched:
            del self.history[gone]

    def _window(self, canary: tuple[int, str], now: float, answers: Answers) -> Answers:
        """The canary's answers since the oldest snapshot still within the window."""
        snapshots = self.history.setdefault(canary, deque())
        snapshots.append(Snapshot(now, answers))
        while len(snapshots) > 1 and snapshots[1].at <= now - self.limits.window:
            snapshots.popleft()
        return answers - snapshots[0].answers

    def _roll_back(self, model: str, version: int, weights: dict[int, int], reason: str) -> None:
        self.table.set_weights(model, {**weights, version: 0}, f"version {version}: {reason}")
        CANARY_ROLLBACKS.labels(model, str(version)).inc()
        logger.warning("model '%s' version %d rolled back to weight 0: %s", model, version, reason)
