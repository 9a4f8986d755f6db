"""service/writes.py: a response's writes leave together, over a real socket."""

import asyncio
import socket

import uvloop

from service.writes import CoalescingTransport


class Counted:
    """A real transport that counts the writes reaching it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.writes = transport, []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


async def exchange() -> tuple[list[bytes], bytes]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    inner = Counted(transport)
    coalescing = CoalescingTransport(inner)
    coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")  # as uvicorn: start,
    coalescing.write(b"{}")  # then body, in one callback
    assert inner.writes == []  # nothing has left before the callback ends
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    coalescing.write(b"late")
    coalescing.close()  # closing sends what is pending first
    await asyncio.sleep(0.05)
    theirs.setblocking(False)
    received = theirs.recv(1000)
    theirs.close()
    return inner.writes, received


def test_writes_in_one_callback_leave_as_one_and_close_sends_what_is_pending():
    writes, received = uvloop.run(exchange())
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"late"]
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}late"
