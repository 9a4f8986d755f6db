"""uvicorn's HTTP protocol with each response leaving in one write.

uvicorn writes a response's status line and headers, then its body, as two writes on the
socket: two system calls and two wake-ups of the client for a few hundred bytes (strace: a
125-byte and a 75-byte write per mlp answer). Here the writes made while one callback of
the event loop runs are joined and leave together right after it. Everything else is
httptools' protocol, as uvicorn's `http="httptools"` would run it.
"""

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self.inner.is_closing():
            self.inner.write(data)

    def close(self) -> None:
        self._flush()
        self.inner.close()

    def __getattr__(self, name: str):  # everything but writing and closing: the transport's
        return getattr(self.inner, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
