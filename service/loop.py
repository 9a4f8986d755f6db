"""The inference worker's batching loop: a LitServe loop that never makes a lone request wait.

LitServe's own BatchedLoop waits the whole batch_timeout for a batch to fill even when one
request is all there is, so an idle server pays the timeout on every request. Here:

- nothing else queued: the request runs at once;
- others queued (load): the batch fills up to max_batch_size *instances* (a request may
  carry many), waiting at most batch_timeout for more;
- a request that would overflow the batch opens the next one; a request larger than
  max_batch_size runs alone, split into max-size device calls by `ModelAPI.predict`.

Each request's payload is already a validated float32 array (the HTTP process checked it),
and every failure is answered to the requests of its own batch only. The hooks run in
LitServe's order, decode_request -> batch -> predict -> unbatch -> encode_response, with one
addition: unbatch gets each request's instance count, to split the outputs back.
"""

import logging
import time
from collections import deque
from queue import Empty, Queue
from typing import TYPE_CHECKING

from fastapi import HTTPException
from litserve import LitAPI
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .api import ModelAPI
    from .transport import PipeTransport

Item = tuple  # (response_queue_id, uid, enqueued_at (monotonic), payload (N, ...) ndarray)


class AdaptiveBatchingLoop(LitLoop):
    def __init__(self) -> None:
        super().__init__()
        self.pending: deque[Item] = deque()  # a request that did not fit the last batch

    def __call__(
        self,
        lit_api: LitAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: MessageTransport,
        workers_setup_status: dict,
        callback_runner,
        *args,
        **kwargs,
    ) -> None:
        while True:
            items, stop = self.collect(lit_api, request_queue)
            if items:
                self.run_batch(lit_api, items, transport)
            if stop:
                return

    def _take(self, queue: Queue, timeout: float | None) -> Item | None:
        """The carried-over request, else the next queued one (None when none comes in time)."""
        if self.pending:
            return self.pending.popleft()
        try:
            return queue.get(timeout=timeout) if timeout else queue.get_nowait()
        except Empty:
            return None

    def collect(self, lit_api: LitAPI, queue: Queue) -> tuple[list[Item], bool]:
        """One batch of requests, and whether the server asked the loop to stop."""
        first = None
        while first is None:  # block, waking each second to stay responsive to shutdown
            first = self._take(queue, timeout=1.0)
        if first == _SENTINEL_VALUE:
            return [], True
        items, count = [first], len(first[3])
        deadline = time.monotonic() + lit_api.batch_timeout
        while count < lit_api.max_batch_size:
            item = self._take(queue, timeout=None)
            if item is None:
                remaining = deadline - time.monotonic()
                if len(items) == 1 or remaining <= 0:
                    break  # idle, or the batch had its time: run what we have
                item = self._take(queue, timeout=remaining)
                if item is None:
                    break
            if item == _SENTINEL_VALUE:
                return items, True
            if count + len(item[3]) > lit_api.max_batch_size:
                self.pending.append(item)
                break
            items.append(item)
            count += len(item[3])
        return items, False

    def _answer(self, transport: "PipeTransport", answers: list[tuple[Item, object, str]]) -> None:
        """Send (item, data, status) answers, one message per HTTP process (see transport.py)."""
        by_consumer: dict[int, list] = {}
        for item, data, status in answers:
            message = (item[1], (data, status, LoopResponseType.REGULAR, self.worker_id))
            by_consumer.setdefault(item[0], []).append(message)
        for consumer_id, messages in by_consumer.items():
            transport.send_many(messages, consumer_id)

    def run_batch(self, lit_api: "ModelAPI", items: list[Item], transport: "PipeTransport") -> None:
        now = time.monotonic()
        live, answers = [], []
        for item in items:
            if lit_api.request_timeout and now - item[2] > lit_api.request_timeout:
                error = PickleableHTTPException(504, "request timed out in the queue")
                answers.append((item, error, LitAPIStatus.ERROR))
            else:
                live.append(item)
        try:
            if live:
                for item in live:
                    lit_api.queue_seconds.observe(now - item[2])
                inputs = [lit_api.decode_request(item[3]) for item in live]
                sizes = [len(x) for x in inputs]
                outputs = lit_api.unbatch(lit_api.predict(lit_api.batch(inputs)), sizes)
                for item, output in zip(live, outputs, strict=True):
                    answers.append((item, lit_api.encode_response(output), LitAPIStatus.OK))
        except Exception as e:  # a failing batch fails only its own requests
            logger.exception("inference failed for a batch of %d requests", len(live))
            detail = e.detail if isinstance(e, HTTPException) else f"inference failed: {e}"
            error = PickleableHTTPException(getattr(e, "status_code", 500), detail)
            answers = [a for a in answers if a[2] == LitAPIStatus.ERROR]
            answers += [(item, error, LitAPIStatus.ERROR) for item in live]
        self._answer(transport, answers)
