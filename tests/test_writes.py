"""service/writes.py: a response's writes leave together, over a real socket, and the loop
polls for its window after a write."""

import asyncio
import socket
import time

import uvloop

from service.writes import BusyPoll, CoalescingTransport


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


async def cpu_during(poll: BusyPoll, seconds: float) -> tuple[float, float]:
    """This thread's CPU time while a written-to loop waits `seconds`, then `seconds` more."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    CoalescingTransport(transport, poll).write(b"ping")
    spans = []
    for _ in range(2):
        began = time.thread_time()
        await asyncio.sleep(seconds)
        spans.append(time.thread_time() - began)
    transport.close()
    theirs.close()
    return spans[0], spans[1]


def test_a_loop_polls_for_the_window_after_a_write_and_then_sleeps():
    polling, after = uvloop.run(cpu_during(BusyPoll(0.1), 0.1))
    assert polling > 0.02, "the loop slept instead of polling"
    assert after < 0.01, "the loop kept polling past its window"
    sleeping, _ = uvloop.run(cpu_during(BusyPoll(0), 0.1))
    assert sleeping < 0.01, "a window of 0 still polled"
