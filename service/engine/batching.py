"""The batching policy: no request waits unless waiting pays.

A free worker runs at once whatever is queued (up to max_batch_size instances); requests that
arrive while a batch runs form the next batch, so batches grow by themselves with load. It
waits for a fuller batch only when the measured cost of batches says the requests finish
sooner on average, which is the case where a batch has a large fixed cost (a GPU's launches
and copies, a heavy model's per-call overhead) and requests arrive fast.

The cost of a batch of n instances is fitted as `fixed + per_instance * n` (exponentially
weighted least squares over recent batches, seeded by the warm-up), and instances arrive at
rate `lam`. Waiting w for the lam*w instances that arrive meanwhile, instead of running the n
queued now and those in a batch of their own, saves them one fixed cost and delays the n by
w. The mean completion time of the n + lam*w requests falls when

    fixed > n * (1 / lam + per_instance)

and is lowest at w = (fixed - n * (1 / lam + per_instance)) / (2 * (1 + per_instance * lam)),
capped by batch_timeout. For mlp on a CPU (fixed about 0.1 ms, requests 0.3 ms apart even at
64 connections) this never waits, which is what batch_timeout=0 measured best; where fixed
costs dominate it waits a fraction of a millisecond.
"""

from collections import deque


class BatchCost:
    """A batch's wall time as fixed + per_instance * instances, fitted online."""

    def __init__(self, decay: float = 0.97) -> None:
        self.decay = decay  # weight of the past per new batch: about the last 30 batches count
        self.w = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, instances: int, seconds: float) -> None:
        d, x = self.decay, float(instances)
        self.w = d * self.w + 1
        self.sx = d * self.sx + x
        self.sy = d * self.sy + seconds
        self.sxx = d * self.sxx + x * x
        self.sxy = d * self.sxy + x * seconds

    @property
    def per_instance(self) -> float:
        spread = self.w * self.sxx - self.sx * self.sx
        if self.w == 0 or spread <= 1e-9 * self.w * self.sxx:
            return 0.0  # one batch size seen so far: no slope to fit
        return max(0.0, (self.w * self.sxy - self.sx * self.sy) / spread)

    @property
    def fixed(self) -> float:
        if self.w == 0:
            return 0.0
        return max(0.0, (self.sy - self.per_instance * self.sx) / self.w)


class ArrivalRate:
    """Instances per second over the most recent arrivals."""

    def __init__(self, window: int = 32, stale: float = 1.0) -> None:
        self.arrivals: deque[tuple[float, int]] = deque(maxlen=window)
        self.stale = stale  # seconds without an arrival after which the rate counts as 0

    def add(self, at: float, instances: int) -> None:
        self.arrivals.append((at, instances))

    def rate(self, now: float) -> float:
        if len(self.arrivals) < 2 or now - self.arrivals[-1][0] > self.stale:
            return 0.0
        span = self.arrivals[-1][0] - self.arrivals[0][0]
        later = sum(n for _, n in list(self.arrivals)[1:])
        return later / span if span > 0 else 0.0


class RequestSize:
    """Instances per request, averaged over recent batches (for the admission's estimate of
    the work queued ahead, which is counted in requests)."""

    def __init__(self, decay: float = 0.97) -> None:
        self.decay = decay
        self.instances = self.requests = 0.0

    def add(self, instances: int, requests: int) -> None:
        self.instances = self.decay * self.instances + instances
        self.requests = self.decay * self.requests + requests

    @property
    def mean(self) -> float:
        return self.instances / self.requests if self.requests else 1.0


class BatchingPolicy:
    def __init__(self, max_batch_size: int, batch_timeout: float) -> None:
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout  # the most a batch ever waits to fill
        self.cost = BatchCost()
        self.arrivals = ArrivalRate()
        self.sizes = RequestSize()

    def wait(self, queued: int, now: float) -> float:
        """Seconds to wait for more instances before running the `queued` ones (0: run now)."""
        if queued >= self.max_batch_size or self.batch_timeout <= 0:
            return 0.0
        lam = self.arrivals.rate(now)
        if lam <= 0:
            return 0.0
        fixed, per_instance = self.cost.fixed, self.cost.per_instance
        gain = fixed - queued * (1 / lam + per_instance)
        return min(self.batch_timeout, max(0.0, gain / (2 * (1 + per_instance * lam))))
