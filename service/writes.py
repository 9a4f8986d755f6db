"""Writes joined per turn of the event loop: one system call, and one wake-up of the reader,
where there were several; and after a write, the loop polls for a moment before it sleeps.

- uvicorn writes a response's status line and headers, then its body: two writes for a few
  hundred bytes (strace: 125 + 75 bytes per mlp answer). `CoalescingHttpToolsProtocol` is
  httptools' protocol, as uvicorn's `http="httptools"` runs it, on a joining transport.
- An HTTP process writes one frame per request to a worker (engine/client.py); at 64
  connections many requests are admitted in one turn, and their frames leave together.
- `BusyPoll`: after a write the answer to it (a worker's) or the next request (a keep-alive
  client's) usually comes within a few hundred microseconds, and a loop asleep in epoll by
  then pays a wake-up for it.
"""

import asyncio
import os
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class BusyPoll:
    """Keeps an event loop polling, not sleeping, for `window` seconds after each write.

    On the benchmark's 2-core VM a ping-pong over a Unix socket pair takes 40 us when both
    sides sleep between messages and 19 us when one side polls, and a process that slept
    comes back to cold caches; polling took 43 us off mlp's 0.51 ms at one connection. Each
    turn of polling yields the CPU (sched_yield), so a runnable process there (the worker,
    another HTTP process) goes first: what polling spends is idle CPU, at most `window` per
    write when traffic is sparse. 0: sleep at once, for hosts where CPU time is billed or
    capped (Kubernetes counts polling against a CPU limit).
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop kept polling, while it is

    def hold(self) -> None:
        """Poll until `window` from now."""
        if self.window <= 0:
            return
        self._until = time.monotonic() + self.window
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            loop.call_soon(self._poll)

    def _poll(self) -> None:
        # a callback that is ready makes the loop's next epoll wait return at once
        if time.monotonic() < self._until:
            os.sched_yield()
            self._loop.call_soon(self._poll)
        else:
            self._loop = None


class CoalescingTransport:
    """A transport whose writes in one turn of the event loop go out as one."""

    def __init__(self, transport: asyncio.Transport, poll: BusyPoll | None = None) -> None:
        self.inner = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._poll = poll

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []  # one item: joined without a copy
        if not self.inner.is_closing():
            self.inner.write(data)
            if self._poll is not None:
                self._poll.hold()

    def close(self) -> None:
        self._flush()
        self.inner.close()

    def __getattr__(self, name: str):  # everything but writing and closing: the transport's
        return getattr(self.inner, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, poll: BusyPoll | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poll = poll

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined = CoalescingTransport(transport, self.poll)
        super().connection_made(joined)  # type: ignore[arg-type]
