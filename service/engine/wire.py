"""What crosses the socket between an HTTP process and an inference worker, and how it is framed.

Each (HTTP process, worker) pair has its own Unix stream socket, so every byte stream has
one writer and one reader: no locks, no feeder threads, and a worker's death is seen by the
HTTP process as the end of that stream, failing exactly the requests that were sent on it.
A frame is a 4-byte big-endian length and a pickle (protocol 5) of one message. Tensors
travel packed as (dtype, shape, bytes): pickling an ndarray goes through numpy's Python-level
reduce, several times slower for a small array than its packed form.
"""

import math
import pickle
from typing import NamedTuple

import numpy as np

from artifacts.runtimes import Tensors

from ..tracing import SpanRef

Packed = tuple[tuple[str, tuple[int, ...], bytes], ...]  # (dtype, shape, C-order data) each

HEADER = 4  # bytes of frame length
MAX_FRAME = 1 << 31  # a length beyond this is a corrupt stream, not a message


class Infer(NamedTuple):
    """HTTP process -> worker: one validated request (a batch of instances)."""

    uid: int  # unique on its connection
    enqueued_at: float  # time.monotonic() in the HTTP process (one clock per machine)
    inputs: Packed  # pack() of one array per model input, in the manifest's order
    deadline: float = math.inf  # time.monotonic() after which nobody waits for the answer
    priority: int = 1  # its level: 1 is the most urgent (admission.py)
    trace: SpanRef | None = None  # its server span, where the request is traced (tracing.py)

    @property
    def instances(self) -> int:
        return self.inputs[0][1][0]

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Each input's shape past the batch axis: only requests alike batch together."""
        return tuple(shape[1:] for _, shape, _ in self.inputs)


class Cancel(NamedTuple):
    """HTTP process -> worker: the client of `uid` has gone; do not compute it."""

    uid: int


class Failure(NamedTuple):
    reason: str  # the ServiceError's reason (errors.py), which names its class
    message: str


class Answer(NamedTuple):
    """Worker -> HTTP process: the outcome of one request; a batch's answers go as a list."""

    uid: int
    outputs: Packed | None  # pack() of one array per model output, in order; None: failed
    failure: Failure | None = None
    queued: float = 0.0  # seconds from its sending to the start of its batch (answered)
    computed: float = 0.0  # seconds its batch's model call took (answered)


def pack(tensors: Tensors) -> Packed:
    """Numeric arrays only: the manifest's datatypes have no object dtype."""
    return tuple((x.dtype.str, x.shape, x.tobytes()) for x in tensors)


def unpack(packed: Packed) -> Tensors:
    """Read-only arrays over the message's bytes, without a copy."""
    return tuple(np.frombuffer(data, dtype).reshape(shape) for dtype, shape, data in packed)


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=5)
    return len(body).to_bytes(HEADER, "big") + body


class FrameReader:
    """Reassembles messages from the chunks a stream delivers, in order."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> list[object]:
        self.buffer += chunk
        messages, start = [], 0
        while len(self.buffer) - start >= HEADER:
            size = int.from_bytes(self.buffer[start : start + HEADER], "big")
            if size >= MAX_FRAME:
                raise ValueError(f"corrupt stream: frame of {size} bytes")
            end = start + HEADER + size
            if len(self.buffer) < end:
                break
            messages.append(pickle.loads(self.buffer[start + HEADER : end]))
            start = end
        del self.buffer[:start]
        return messages


def address(token: str, model: str, worker_id: int) -> str:
    """The worker's listening socket: Linux's abstract namespace, so no file is left behind
    and a restarted worker binds the same name the moment its predecessor is gone."""
    return f"\0tensorgate-{token}-{model}-{worker_id}"
