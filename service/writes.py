"""Writes joined per turn of the event loop: one system call, and one wake-up of the reader,
where there were several.

- uvicorn writes a response's status line and headers, then its body: two writes for a few
  hundred bytes (strace: 125 + 75 bytes per mlp answer). Each HTTP connection's transport is
  a `CoalescingTransport` (connections.py).
- An HTTP process writes one frame per request to a worker (engine/client.py); at 64
  connections many requests are admitted in one turn, and their frames leave together.
"""

import asyncio


class CoalescingTransport:
    """A transport whose writes in one turn of the event loop go out as one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.inner = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

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

    def close(self) -> None:
        self._flush()
        self.inner.close()

    def __getattr__(self, name: str):  # everything but writing and closing: the transport's
        return getattr(self.inner, name)
