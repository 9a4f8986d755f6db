"""The response pipe between inference workers and the HTTP process, on uvloop as uvicorn runs it."""

import asyncio
import multiprocessing as mp

import numpy as np
import pytest
import uvloop

from service.transport import PipeTransport


def receive_after_send(transport: PipeTransport, item: object) -> object:
    async def main() -> object:
        receiving = asyncio.ensure_future(transport.areceive(0))
        await asyncio.sleep(0.05)  # the reader now waits on the pipe's fd
        transport.send(item, 0)
        return await asyncio.wait_for(receiving, timeout=10)

    return uvloop.run(main())


def test_a_response_longer_than_the_pipe_buffer_arrives_whole():
    big = np.arange(4_000_000, dtype=np.float32)  # 16 MB against a 64 KiB pipe buffer
    transport = PipeTransport([mp.get_context("spawn").Queue()])
    for i in range(3):  # the fd must stay readable whole after each wait
        uid, got = receive_after_send(transport, (f"uid-{i}", big + i))
        assert uid == f"uid-{i}"
        np.testing.assert_array_equal(got, big + i)


def test_a_closed_transport_stops_the_reader():
    transport = PipeTransport([mp.get_context("spawn").Queue()])
    transport.close(send_sentinel=False)
    with pytest.raises(asyncio.CancelledError):
        uvloop.run(transport.areceive(0))


def test_a_batch_of_responses_sent_as_one_message_is_received_one_by_one():
    transport = PipeTransport([mp.get_context("spawn").Queue()])
    transport.send_many([("a", 1), ("b", 2)], 0)
    transport.send(("c", 3), 0)
    transport.send_many([("d", 4)], 0)

    async def main() -> list:
        return [await asyncio.wait_for(transport.areceive(0), timeout=10) for _ in range(4)]

    assert uvloop.run(main()) == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
