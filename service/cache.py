"""Triton's response cache, per model (TENSORGATE_RESPONSE_CACHE), in shared memory, so that
every HTTP process reads what any of them stored, and a request answered from it never
crosses to a worker.

Each model's cache is one block of shared memory of its bound, all of it preallocated: an
index (a slot per 128 bytes of log, about 18%) and a log, the rest. A record (key, outputs)
is appended at the log's head, which wraps around and overwrites the oldest records; the
index finds a record by its key in a few probes and knows one overwritten by its position.
A record read in the older half of the log is appended again, and the index makes room by
dropping records never read before those read (as a segmented LRU protects what was read
twice), so what is read often survives: an approximation of LRU with one lock and no
per-entry list to keep. Memory cannot pass the
bound, however many distinct inputs come.

The key is a 128-bit blake2b (the standard library's hashlib: no dependency, and fast enough
that hashing is a few percent of a hit) of the version, each input's datatype and shape, and
its bytes. The value is every output, packed as the engine's wire packs them, so V1, V2 and
gRPC share records whatever outputs a request asks for. A new version's key differs: it
never reads the previous version's records.
"""

import hashlib
import multiprocessing as mp
import pickle
import struct
from typing import NamedTuple

import numpy as np

from artifacts.runtimes import Tensors

from .engine.locks import ProcessLock
from .engine.wire import pack, unpack

HEADER = struct.Struct("<QQI")  # a record's key (two halves) and its payload's length
SLOT_BYTES = 8 + 8 + 8 + 4  # an index slot: key halves, position, length
RECORD_BYTES = 128  # a small classifier's record, about: the log gets one slot per this
PROBES = 8  # index slots tried per key


class Key(NamedTuple):
    high: int
    low: int


def key(version: int, inputs: Tensors) -> Key:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((version, [(x.dtype.str, x.shape) for x in inputs])).encode())
    for x in inputs:
        digest.update(np.ascontiguousarray(x).data)
    value = digest.digest()
    return Key(int.from_bytes(value[:8], "little"), int.from_bytes(value[8:], "little"))


class ResponseCache:
    """Made in the main process before the HTTP processes fork; they share its memory."""

    def __init__(self, bound: int) -> None:
        ctx = mp.get_context("spawn")
        self.bound = bound
        self.slots = bound // (SLOT_BYTES + RECORD_BYTES)
        self.capacity = bound - self.slots * SLOT_BYTES  # the log's bytes
        self.keys = ctx.RawArray("Q", 2 * self.slots)
        self.positions = ctx.RawArray("q", [-1] * self.slots)  # where a record starts; -1: none
        self.lengths = ctx.RawArray("I", self.slots)
        self.read = ctx.RawArray("B", self.slots)  # 1: its record has been read
        self.log = ctx.RawArray("B", self.capacity)
        self.head = ctx.RawValue("q", 0)  # the next record's position; grows without end
        self.lock = ProcessLock()
        self._view: memoryview | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_view": None}

    @property
    def view(self) -> memoryview:
        if self._view is None:
            self._view = memoryview(self.log).cast("B")
        return self._view

    @property
    def used(self) -> int:
        """Bytes of the log written so far (at most its capacity), plus the index."""
        return min(self.head.value, self.capacity) + self.slots * SLOT_BYTES

    def get(self, k: Key) -> Tensors | None:
        with self.lock:
            slot = self._find(k)
            if slot is None:
                return None
            start, length = self.positions[slot], self.lengths[slot]
            payload = bytes(self._payload(start, length))
            self.read[slot] = 1
            if start + self.capacity // 2 < self.head.value:  # in the older half: keep it
                self._append(k, payload, slot)
        return unpack(pickle.loads(payload))

    def put(self, k: Key, outputs: Tensors) -> None:
        payload = pickle.dumps(pack(outputs), protocol=5)
        if HEADER.size + len(payload) > self.capacity // 4:
            return  # a record that large would evict a quarter of the cache at once
        with self.lock:
            slot = self._find(k)
            if slot is None:
                slot = self._victim(k)
            self._append(k, payload, slot)

    def _live(self, slot: int) -> bool:
        start = self.positions[slot]
        return start >= 0 and start + self.capacity >= self.head.value

    def _find(self, k: Key) -> int | None:
        for i in range(PROBES):
            slot = (k.low + i) % self.slots
            if (
                self.keys[2 * slot] == k.high
                and self.keys[2 * slot + 1] == k.low
                and self._live(slot)
            ):
                return slot
        return None

    def _victim(self, k: Key) -> int:
        """The slot for a new key: a free one among its probes, else the oldest record's
        among those never read, else the oldest's."""
        probes = [(k.low + i) % self.slots for i in range(PROBES)]
        for slot in probes:
            if not self._live(slot):
                break
        else:
            unread = [slot for slot in probes if not self.read[slot]] or probes
            slot = min(unread, key=lambda slot: self.positions[slot])
        self.read[slot] = 0
        return slot

    def _payload(self, start: int, length: int) -> memoryview:
        at = start % self.capacity + HEADER.size
        return self.view[at : at + length]

    def _append(self, k: Key, payload: bytes, slot: int) -> None:
        size = HEADER.size + len(payload)
        start = self.head.value
        if start % self.capacity + size > self.capacity:  # no record wraps: skip the tail
            start += self.capacity - start % self.capacity
        at = start % self.capacity
        self.view[at : at + size] = HEADER.pack(k.high, k.low, len(payload)) + payload
        self.head.value = start + size
        self.keys[2 * slot], self.keys[2 * slot + 1] = k.high, k.low
        self.positions[slot], self.lengths[slot] = start, len(payload)
