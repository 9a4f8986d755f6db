"""How each HTTP connection is held: the limits a public endpoint needs, and a drain that
answers every request reaching a connection that is already open.

`GuardedProtocol` is httptools' protocol as uvicorn's `http="httptools"` runs it, with:

- limits: a request's line and headers over `max_header_bytes` answer 431; headers that take
  longer than `read_timeout` to arrive, or a body that goes silent that long, answer 408;
  either closes the connection. A connection that never sends a byte is closed after
  uvicorn's keep-alive timeout, as an idle one is between requests (uvicorn times out only
  the latter, and reads headers without a bound or a deadline);
- a lingering close: a connection closed while its client is still sending (a refusal
  above, or a 413 with `Connection: close`) first sends its answer and a FIN, then reads and
  drops what arrives for `LINGER` seconds. Closed at once, the unread bytes would make the
  kernel send a reset, and the client could lose the answer before reading it;
- a drain (uvicorn's `shutdown`, once the listener is closed): a request in progress, or one
  arriving later on an open connection, is answered with `Connection: close`; an idle
  connection is closed only once it has been idle for `DRAIN_IDLE`, since a client that
  sends back to back may have its next request on the wire already (uvicorn closes idle
  connections at once, and 5-14 requests a SIGTERM were lost to that under 32 keep-alive
  clients);
- its writes joined per turn of the event loop (writes.py's `CoalescingTransport`).
"""

import asyncio
import json
from collections.abc import Callable
from typing import NamedTuple

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .metrics import CONNECTIONS_CLOSED
from .writes import CoalescingTransport

DRAIN_IDLE = 1.0  # seconds: an idle connection quieter than this may have a request coming
# seconds a refused connection is still read, and what arrives discarded, before it closes:
# closing with unread bytes sends a reset, which can destroy the answer before it is read
LINGER = 1.0


class ConnectionLimits(NamedTuple):
    max_header_bytes: int  # the request line and headers
    read_timeout: float  # seconds for the headers, and the longest silence inside a body


def guarded_protocol(limits: ConnectionLimits) -> type["GuardedProtocol"]:
    """The protocol class uvicorn is given (`http=`), with these limits."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class LingeringTransport(CoalescingTransport):
    """Closing while the client is still sending (`unread()`) lingers; see the module."""

    def __init__(self, transport: asyncio.Transport, unread: Callable[[], bool]) -> None:
        super().__init__(transport)
        self.unread = unread
        self.lingering = False

    def close(self) -> None:
        if self.lingering or self.inner.is_closing():
            return
        if not self.unread():
            super().close()
            return
        self.lingering = True
        self._flush()
        self.inner.write_eof()
        self._loop.call_later(LINGER, self.inner.close)

    def is_closing(self) -> bool:
        return self.lingering or self.inner.is_closing()


class GuardedProtocol(HttpToolsProtocol):
    limits: ConnectionLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self._unread))  # type: ignore[arg-type]
        self.header_bytes = 0  # of the request being read; counted until its headers end
        self.reading_headers = True
        self.read_timer: asyncio.TimerHandle | None = None
        self.draining = False
        self.idle_since = self.loop.time()
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # type: ignore[attr-defined]
            return
        if not self.reading_headers:
            self._restart_read_timer()  # a body: the silence between its reads is bounded
            super().data_received(data)
            return
        if self.header_bytes == 0:
            self._restart_read_timer()  # the headers' first byte: they have read_timeout
        room = self.limits.max_header_bytes - self.header_bytes
        if len(data) <= room:
            self.header_bytes += len(data)
            super().data_received(data)
            return
        super().data_received(data[:room])  # may end the headers, and the rest is body
        self.header_bytes = self.limits.max_header_bytes
        if self.reading_headers and not self.transport.is_closing():
            self._refuse(431, "header_too_large", self._too_large())
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        super().on_headers_complete()
        if self.draining:
            self.cycle.keep_alive = False  # answered with Connection: close

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_read_timer()
        self.header_bytes, self.reading_headers = 0, True

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        super().on_response_complete()  # arms uvicorn's keep-alive timeout

    def shutdown(self) -> None:
        """A drain: answer what is in progress or arrives, then close (see the module)."""
        self.draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self.header_bytes == 0:  # idle: a request may be on its way
            quiet = self.loop.time() - self.idle_since
            self.loop.call_later(max(0.0, DRAIN_IDLE - quiet), self._close_if_idle)

    def _unread(self) -> bool:
        """Whether the client is in the middle of sending a request."""
        if self.reading_headers:
            return self.header_bytes > 0
        return self.cycle is not None and self.cycle.more_body

    def _close_if_idle(self) -> None:
        if self.header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    def _wait_for_request(self) -> None:
        """uvicorn arms its keep-alive timeout after each answer; a new connection gets it
        too, and data_received disarms it."""
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _restart_read_timer(self) -> None:
        self._stop_read_timer()
        self.read_timer = self.loop.call_later(self.limits.read_timeout, self._read_timed_out)

    def _stop_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if self.transport.is_closing():
            return
        if self.reading_headers:
            message = f"the request's headers took longer than {self.limits.read_timeout:g} s"
            self._refuse(408, "read_timeout", message + " (TENSORGATE_READ_TIMEOUT)")
        elif self.flow.read_paused:  # the app has not taken what came: not the client's doing
            self._restart_read_timer()
        elif self.cycle is not None and self.cycle.more_body:
            # the app is reading the body: it sees the client gone (499), and nothing is sent
            CONNECTIONS_CLOSED.labels("read_timeout").inc()
            self.transport.inner.close()  # type: ignore[attr-defined]  (a silent client: no linger)

    def _too_large(self) -> str:
        return (
            f"the request line and headers exceed {self.limits.max_header_bytes} bytes "
            "(TENSORGATE_MAX_HEADER_BYTES)"
        )

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer before any app sees the request, then close the connection (lingering)."""
        CONNECTIONS_CLOSED.labels(reason).inc()
        self._stop_read_timer()
        body = json.dumps({"error": message}).encode()
        head = b"".join(
            [
                STATUS_LINE[status],
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(head + body)
        self.transport.close()
