"""Which serving version answers a request that names none, and when a canary is rolled back.

Weights split a model's unversioned requests among its serving versions (TENSORGATE_TRAFFIC
at start, `POST /v2/repository/models/{m}/traffic` in explicit mode): `{1: 90, 2: 10}` sends
a tenth to version 2. A version without a weight gets none; a model without weights sends
everything to its highest serving version. A request that names a version is never
rerouted, and a shadow version (shadow.py) takes only the requests that name it.

A canary is every weighted version but the primary (the largest weight; a tie: the lower
version). With TENSORGATE_CANARY_MAX_ERROR_RATE or TENSORGATE_CANARY_MAX_P99 set, the main
process (lifecycle.py) sets a canary's weight to 0 once its answers over the last
TENSORGATE_CANARY_WINDOW seconds break either limit.

Pure: the engine's version table keeps the weights, shared by every HTTP process.
"""

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any, NamedTuple

# Sub-millisecond to 30 s: small models answer in well under a millisecond on the CPU. The
# latency histograms' buckets (metrics.py), here so that a canary is judged in the buckets the
# dashboards show, and so that the settings, which import this module, load no
# prometheus_client before `python -m service` has set its multiprocess folder.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
MAX_WEIGHTED = 8  # versions with a weight, per model
MAX_WEIGHT = 1_000_000
MIN_REQUESTS = 20  # a canary's answers in the window before it is judged

Weights = dict[int, int]  # version -> weight


class Shadow(NamedTuple):
    """A model's shadow version and the fraction of its answered requests it computes too."""

    version: int
    fraction: float


def version_number(version: Any, where: str) -> int:
    """A version given as 2 or "2", or ValueError."""
    text = str(version)
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise ValueError(f"{where}: version {version!r} is not a version number (1, 2, ...)")
    return int(text)


def primary(weights: Mapping[int, int]) -> int | None:
    """The weighted version that speaks for the model: the largest weight, on a tie the lower
    version; None without a weight above 0."""
    live = [(v, w) for v, w in weights.items() if w > 0]
    return max(live, key=lambda p: (p[1], -p[0]))[0] if live else None


def check_weights(weights: Mapping[Any, Any], where: str) -> Weights:
    """Version numbers to integer weights, or ValueError saying what is wrong."""
    checked: Weights = {}
    for version, weight in weights.items():
        text = str(version_number(version, where))
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"{where}: the weight of version {text} must be an integer")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"{where}: the weight of version {text} must be 0 to {MAX_WEIGHT}")
        checked[int(text)] = weight
    if len(checked) > MAX_WEIGHTED:
        raise ValueError(f"{where}: at most {MAX_WEIGHTED} versions may have a weight")
    if checked and not any(checked.values()):
        raise ValueError(f"{where}: at least one weight must be above 0")
    return checked


def parse_traffic(setting: list[str]) -> dict[str, Weights]:
    """TENSORGATE_TRAFFIC's entries, `mlp:1=90`, `2=10`, `resnet:3=1`: an entry with a colon
    starts a model, one without adds a version to the model before it."""
    found: dict[str, dict[str, int]] = {}
    model = None
    for item in setting:
        if ":" in item:
            model, _, item = item.partition(":")
        version, equals, weight = item.partition("=")
        if model is None or not equals or not weight.strip().isdigit():
            raise ValueError(
                f"TENSORGATE_TRAFFIC entry {item!r}: expected MODEL:VERSION=WEIGHT followed by "
                "VERSION=WEIGHT entries, e.g. mlp:1=90,2=10"
            )
        found.setdefault(model, {})[version.strip()] = int(weight)
    return {m: check_weights(w, f"TENSORGATE_TRAFFIC for '{m}'") for m, w in found.items()}


def parse_shadows(setting: list[str]) -> dict[str, Shadow]:
    """TENSORGATE_SHADOW's entries, `mlp:2@0.1`: model, version, fraction (0 to 1]."""
    found = {}
    for item in setting:
        model, _, rest = item.partition(":")
        version, _, fraction = rest.partition("@")
        try:
            number = float(fraction) if fraction.strip() else None
            found[model] = check_shadow(version, number, f"TENSORGATE_SHADOW for '{model}'")
        except ValueError as e:
            raise ValueError(
                f"TENSORGATE_SHADOW entry {item!r}: {e}; expected MODEL:VERSION@FRACTION, "
                "e.g. mlp:2@0.1"
            ) from None
    return found


def check_shadow(version: Any, fraction: Any, where: str) -> Shadow:
    number = version_number(version, where)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"{where}: the fraction must be a number")
    if not 0 < fraction <= 1:
        raise ValueError(f"{where}: the fraction must be above 0 and at most 1")
    return Shadow(number, float(fraction))


class Router:
    """Where a model's unversioned requests go, given its serving versions and weights."""

    def __init__(self, serving: Sequence[int], weights: Weights, shadow: int | None) -> None:
        candidates = [v for v in serving if v != shadow] or list(serving)
        weighted = [(v, weights[v]) for v in candidates if weights.get(v, 0) > 0]
        if not weighted and candidates:
            weighted = [(max(candidates), 1)]
        self.versions = [v for v, _ in weighted]
        self.weights = [w for _, w in weighted]
        self.bounds = list(accumulate(w for _, w in weighted))
        # the version that speaks for the model where one must (metadata, V1 status)
        self.primary = primary(dict(weighted))

    def pick(self, draw: float) -> int | None:
        """The version for a uniform draw in [0, 1); None when no version serves."""
        if not self.versions:
            return None
        return self.versions[bisect_right(self.bounds, draw * self.bounds[-1])]

    def shares(self) -> dict[int, float]:
        """Each routed version's share of the unversioned requests."""
        return {v: w / self.bounds[-1] for v, w in zip(self.versions, self.weights, strict=True)}


def canaries(weights: Weights) -> list[int]:
    """The weighted versions that are not the primary."""
    first = primary(weights)
    return sorted(v for v, w in weights.items() if w > 0 and v != first)


class Limits(NamedTuple):
    """When a canary is rolled back (TENSORGATE_CANARY_*); None: that limit is off."""

    max_error_rate: float | None
    max_p99: float | None  # seconds
    window: float  # seconds

    @property
    def on(self) -> bool:
        return self.max_error_rate is not None or self.max_p99 is not None


class Answers(NamedTuple):
    """A version's answers (cumulative, or over a window): how many, how many were 5xx, and
    how many fell in each latency bucket (metrics.LATENCY_BUCKETS, then +Inf)."""

    requests: int
    server_errors: int
    buckets: tuple[int, ...]

    def __sub__(self, earlier: "Answers") -> "Answers":  # type: ignore[override]
        return Answers(
            self.requests - earlier.requests,
            self.server_errors - earlier.server_errors,
            tuple(a - b for a, b in zip(self.buckets, earlier.buckets, strict=True)),
        )


def p99(buckets: Sequence[int]) -> float:
    """The 99th percentile of answers counted per latency bucket, interpolated within its
    bucket as Prometheus's histogram_quantile does (the last finite bound past it)."""
    rank = 0.99 * sum(buckets)
    lower, seen = 0.0, 0
    for upper, count in zip(LATENCY_BUCKETS, buckets, strict=False):
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        lower, seen = upper, seen + count
    return LATENCY_BUCKETS[-1]


def verdict(answers: Answers, limits: Limits) -> str | None:
    """Why a canary with these answers over the window is rolled back; None: it is not."""
    if answers.requests < MIN_REQUESTS:
        return None
    rate = answers.server_errors / answers.requests
    if limits.max_error_rate is not None and rate > limits.max_error_rate:
        return (
            f"{answers.server_errors} of its {answers.requests} answers in the last "
            f"{limits.window:g} s were 5xx ({rate:.1%}, above "
            f"TENSORGATE_CANARY_MAX_ERROR_RATE={limits.max_error_rate:g})"
        )
    slow = p99(answers.buckets)
    if limits.max_p99 is not None and slow > limits.max_p99:
        return (
            f"the p99 latency of its {answers.requests} answers in the last {limits.window:g} s "
            f"was {slow:.3g} s (TENSORGATE_CANARY_MAX_P99={limits.max_p99:g} s)"
        )
    return None
