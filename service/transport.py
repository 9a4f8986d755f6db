"""The queues between LitServe's HTTP process and its inference workers: plain pipes, read
from the event loop itself.

LitServe 0.2.19 sends every request and response through a Manager process (a proxy call,
that is an extra process hop each way), and its HTTP process reads responses with a
blocking `queue.get` in a thread (`asyncio.to_thread`) per response. Here the queues are
`multiprocessing` queues (pipes straight between the processes) and responses are read
when the event loop sees the pipe readable, so no thread hop is paid per response. A worker
sends one batch's responses to an HTTP process as one message (`send_many`): one pickle,
one pipe write and one read for the batch, not one per request.
"""

import asyncio
import os
from collections import deque
from multiprocessing.queues import Queue
from queue import Empty
from typing import Any

from litserve.transport.process_transport import MPQueueTransport


class Responses(list):
    """Several responses for one HTTP process, sent as one message."""


class PipeTransport(MPQueueTransport):
    """Workers `send` (or `send_many`); the HTTP process awaits readability, then reads."""

    def __init__(self, queues: list[Queue]) -> None:
        super().__init__(None, queues)
        self._received: deque = deque()  # the rest of the last Responses message read

    def send_many(self, items: list, consumer_id: int) -> None:
        self._queues[consumer_id].put(Responses(items))

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True):
        """The next response for this HTTP process; waits without a thread for one to arrive."""
        queue = self._queues[consumer_id]
        while not self._received:
            if self._closed:
                raise asyncio.CancelledError("Transport closed")
            try:
                message = queue.get_nowait()
            except Empty:
                await _readable(queue._reader.fileno())
                continue
            if not isinstance(message, Responses):
                return message
            self._received.extend(message)
        return self._received.popleft()

    def __reduce__(self) -> tuple[Any, tuple]:
        return (PipeTransport, (self._queues,))


async def _readable(fd: int) -> None:
    """Return once `fd` has data to read (or the waiting task is cancelled).

    uvloop makes a watched fd non-blocking and leaves it so; the fd is set blocking again,
    because `Queue.get` must read a message longer than one pipe buffer to its end (EAGAIN
    midway killed LitServe's response reader, and every later request timed out).
    """
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        os.set_blocking(fd, True)
