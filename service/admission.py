"""What a request asks for besides its inputs (a deadline, a priority) and the rules that
admit it: pure functions, used by the data plane and the engine.

- The deadline is the tightest of Triton's `timeout` parameter (microseconds, as tritonclient
  sends it over HTTP and gRPC), the `Request-Timeout` header (seconds, a decimal number, like
  TENSORGATE_REQUEST_TIMEOUT), a gRPC call's own deadline, and TENSORGATE_REQUEST_TIMEOUT,
  which is the default and the cap.
- The priority is Triton's `priority` parameter or the `Inference-Priority` header: 1 is the
  most urgent, 0 or none the model's default level (TENSORGATE_PRIORITY_LEVELS). With one level
  (the default) priorities are off and any priority is accepted and ignored, as Triton does.
- The queue bound is shared by the levels, and the lower levels are cut off first: level p of
  L may fill a version's queue to ceil(max_queue * (L - p + 1) / L), so under overload the
  least urgent level is refused first and the most urgent keeps the whole bound.
- A request with a deadline of its own is refused at admission when the work ahead of it
  (estimated_seconds) cannot finish in time; the engine then answers 504 without queueing it.
"""

import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import BadRequest

TIMEOUT_HEADER = "request-timeout"  # seconds
PRIORITY_HEADER = "inference-priority"
MAX_PRIORITY_LEVELS = 8  # the engine keeps a count per level; Triton's configs rarely use more


class Asked(NamedTuple):
    """What a request asked for: a timeout in seconds (None: none), a priority (0: default)."""

    timeout: float | None = None
    priority: int = 0

    def tighter(self, other: "Asked") -> "Asked":
        """The shorter timeout of the two, and this one's priority unless it gave none."""
        timeouts = [t for t in (self.timeout, other.timeout) if t is not None]
        return Asked(min(timeouts) if timeouts else None, self.priority or other.priority)


NOTHING_ASKED = Asked()


class Priorities(NamedTuple):
    """A model's priority levels (Triton's priority_levels; 1: off) and its default level."""

    levels: int = 1
    default: int = 1


class Urgency(NamedTuple):
    """A request's admission terms, resolved for its model."""

    timeout: float  # seconds from its arrival: the client's or the server's cap
    deadline: float  # time.monotonic() of its arrival + timeout
    level: int  # 1 (most urgent) .. levels
    levels: int
    own_deadline: bool  # the client's timeout is tighter than the server's


class Cost(NamedTuple):
    """A version's measured batch cost, fixed + per_instance * instances seconds (its workers'
    fit, batching.BatchCost), its largest batch and its requests' mean instances."""

    fixed: float
    per_instance: float
    max_batch_size: int
    instances_per_request: float = 1.0


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{what} must be a non-negative integer, got {value!r}")
    return value


def from_parameters(parameters: Mapping[str, Any]) -> Asked:
    """Triton's request parameters: `timeout` in microseconds, `priority`."""
    timeout = parameters.get("timeout")
    if timeout is not None:
        timeout = _integer(timeout, 'parameter "timeout" (microseconds)') / 1e6
    priority = parameters.get("priority")
    return Asked(timeout, 0 if priority is None else _integer(priority, 'parameter "priority"'))


def from_headers(headers: Mapping[str, str]) -> Asked:
    """`Request-Timeout: 0.25` (seconds) and `Inference-Priority: 1`."""
    timeout = headers.get(TIMEOUT_HEADER)
    seconds = None
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not (0 <= seconds < math.inf):
            raise BadRequest(f"Request-Timeout must be a number of seconds, got {timeout!r}")
    priority = headers.get(PRIORITY_HEADER)
    if priority is None:
        return Asked(seconds)
    if not (priority.isascii() and priority.isdigit()):
        raise BadRequest(f"Inference-Priority must be a non-negative integer, got {priority!r}")
    return Asked(seconds, int(priority))


def resolve(
    asked: Asked, priorities: Priorities, cap: float, arrived: float, model: str
) -> Urgency:
    """The request's terms: its timeout capped by the server's, counted from its arrival
    (time.monotonic()), and its level (400 for a level the model does not have)."""
    if asked is NOTHING_ASKED and priorities.levels == 1:  # most requests
        return Urgency(cap, arrived + cap, 1, 1, False)
    own = asked.timeout is not None and asked.timeout < cap
    timeout = asked.timeout if own else cap
    if priorities.levels == 1:
        return Urgency(timeout, arrived + timeout, 1, 1, own)
    level = asked.priority or priorities.default
    if level > priorities.levels:
        raise BadRequest(
            f"priority {level} is beyond model '{model}''s {priorities.levels} levels "
            "(1 is the most urgent; 0 or none: its default)"
        )
    return Urgency(timeout, arrived + timeout, level, priorities.levels, own)


def queue_share(max_queue: int, level: int, levels: int) -> int:
    """The most requests a version may hold when admitting one of this level."""
    return math.ceil(max_queue * (levels - level + 1) / levels)


def unwaited(timeout: float) -> Urgency:
    """The terms of a request that asked for nothing, arriving now."""
    return Urgency(timeout, time.monotonic() + timeout, 1, 1, False)


def estimated_seconds(ahead: int, instances: int, cost: Cost, workers: int) -> float:
    """How long until a request of `instances` is answered with `ahead` requests (of its
    level or more urgent) admitted before it, each of the mean size: the batches each worker
    runs until its own, each paying the fixed cost, and every instance's share."""
    queued = ahead * cost.instances_per_request / workers  # instances ahead, per worker
    rounds = int(queued // cost.max_batch_size) + 1
    return rounds * cost.fixed + (queued + instances) * cost.per_instance
