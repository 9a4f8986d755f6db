"""The queues between LitServe's HTTP process and its inference workers: plain pipes, read
from the event loop itself.

LitServe 0.2.19 sends every request and response through a Manager process (a proxy call,
that is an extra process hop each way), and its HTTP process reads responses with a
blocking `queue.get` in a thread (`asyncio.to_thread`) per response. Here the queues are
`multiprocessing` queues (pipes straight between the processes) and responses are read
when the event loop sees the pipe readable, so no thread hop is paid per response.
"""

import asyncio
import os
from multiprocessing.queues import Queue
from queue import Empty
from typing import Any

from litserve.transport.process_transport import MPQueueTransport


class PipeTransport(MPQueueTransport):
    """Workers `send` as LitServe's MPQueueTransport does; the HTTP process awaits readability."""

    def __init__(self, queues: list[Queue]) -> None:
        super().__init__(None, queues)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True):
        """The next response for this HTTP process; waits without a thread for one to arrive."""
        queue = self._queues[consumer_id]
        while True:
            if self._closed:
                raise asyncio.CancelledError("Transport closed")
            try:
                return queue.get_nowait()
            except Empty:
                await _readable(queue._reader.fileno())

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
