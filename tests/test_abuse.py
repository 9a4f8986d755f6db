"""What an attacker on the public internet sends, over raw sockets, to a service with its
default limits and short read and keep-alive timeouts: each test asserts the answer, that
the service is still ready, and that its process group's memory is back within 50 MB."""

import contextlib
import json
import select
import socket
import time
from pathlib import Path

import pytest
from helpers import rows

from load_tests.servers import running_service

TIMEOUT = 1.0  # the service's read and keep-alive timeouts here, in seconds
MEMORY_SLACK = 50 << 20  # bytes of RSS a test may leave behind
HEADERS_LIMIT = 64 * 1024  # TENSORGATE_MAX_HEADER_BYTES's default


@pytest.fixture(scope="module")
def service(exported, tmp_path_factory):
    logs = tmp_path_factory.mktemp("abuse")
    with running_service(
        exported, logs, models="mlp", read_timeout=TIMEOUT, keep_alive_timeout=TIMEOUT
    ) as running:
        yield running


def group_rss(pgid: int) -> int:
    """Bytes resident in every process of the group (the service starts its own)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0]) * 1024
    return total


@pytest.fixture
def guarded(service):
    """The service; after the test, it is ready and its memory is back within 50 MB."""
    before = group_rss(service.process.pid)
    yield service
    assert service.get("/v2/health/ready").status_code == 200
    deadline = time.monotonic() + 10  # freed memory can take a moment to leave
    while (grown := group_rss(service.process.pid) - before) > MEMORY_SLACK:
        assert time.monotonic() < deadline, f"RSS grew by {grown >> 20} MB"
        time.sleep(0.2)


def connect(service) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the response the server sent before closing."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def stream(sock: socket.socket, chunk: bytes, total: int) -> int:
    """Send `chunk` until `total` bytes are out or the server closes; returns bytes sent."""
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    return sent


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.1\r\n" + b"X-H: v\r\n" * 100_000 + b"\r\n",
        b"GET /v2/health/ready?" + b"q" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["one 16 MB header", "100,000 headers", "a 1 MB request line"],
)
def test_headers_over_the_limit_answer_431_and_close(guarded, head):
    with connect(guarded) as sock:
        stream(sock, head[: 2 * HEADERS_LIMIT], 2 * HEADERS_LIMIT)  # all of it read: no reset
        status, body = answer(sock)
    assert status == 431, body
    assert "TENSORGATE_MAX_HEADER_BYTES" in json.loads(body)["error"]


def test_connections_streaming_an_endless_header_are_answered_431_and_hold_nothing(guarded):
    """8 connections each sending 32 MiB of one unfinished header: past the limit the server
    answers, reads on without keeping anything for a moment (so the answer is not lost to a
    reset), and closes."""
    before = guarded.metric("tensorgate_connections_closed_total", reason="header_too_large")
    socks = [connect(guarded) for _ in range(8)]
    statuses = []
    try:
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
        for sock in socks:
            stream(sock, b"a" * 65536, 32 << 20)
            with contextlib.suppress(ConnectionResetError):
                statuses.append(answer(sock)[0])
    finally:
        for sock in socks:
            sock.close()
    assert set(statuses) == {431}, statuses
    after = guarded.metric("tensorgate_connections_closed_total", reason="header_too_large")
    assert after == before + 8


def test_slow_headers_get_408_and_idle_connections_close(guarded):
    """50 connections sending their headers a byte every 0.1 s and 20 sending nothing: all
    of them closed once the read or keep-alive timeout passes."""
    slow = [connect(guarded) for _ in range(50)]
    idle = [connect(guarded) for _ in range(20)]
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 100
    answers: dict[socket.socket, tuple[int, bytes] | None] = {}
    started = time.monotonic()
    for i in range(len(request)):
        open_ = [s for s in slow + idle if s not in answers]
        if not open_ or time.monotonic() - started > 5 * TIMEOUT:
            break
        readable, _, _ = select.select(open_, [], [], 0)
        for sock in readable:
            answers[sock] = answer(sock) if sock in slow else (0, sock.recv(1))
        for sock in set(slow) - set(answers):
            sock.sendall(request[i : i + 1])
        time.sleep(0.1)
    took = time.monotonic() - started
    for sock in slow + idle:
        sock.close()
    assert len(answers) == 70, f"{70 - len(answers)} connections still open after {took:.1f} s"
    assert {answers[s][0] for s in slow} == {408}
    assert all(answers[s] == (0, b"") for s in idle)  # closed without a word
    assert "TENSORGATE_READ_TIMEOUT" in json.loads(answers[slow[0]][1])["error"]


def test_a_body_that_goes_silent_is_cut_off_and_counted_as_a_client_gone(guarded):
    before = guarded.metric("tensorgate_requests_total", model="mlp", code="499")
    with connect(guarded) as sock:
        sock.sendall(
            b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: 100000\r\n\r\n" + b'{"instances": ['
        )
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed, with nothing to say to a client that is silent
        waited = time.monotonic() - started
    assert TIMEOUT * 0.8 < waited < TIMEOUT + 3, waited
    assert guarded.metric("tensorgate_connections_closed_total", reason="read_timeout") >= 1
    assert guarded.metric("tensorgate_requests_total", model="mlp", code="499") == before + 1


def test_a_256_mib_chunked_body_to_the_repository_index_is_refused_as_it_streams(guarded):
    started = time.monotonic()
    with connect(guarded) as sock:
        sock.sendall(
            b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        stream(sock, b"10000\r\n" + b" " * 65536 + b"\r\n", 256 << 20)
        status, body = answer(sock)
    assert status == 413, body
    assert time.monotonic() - started < 10  # cut off, not read to the end at the client's pace


def test_an_output_requested_20000_times_is_a_400_not_a_large_answer(guarded):
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 30],
                "datatype": "FP32",
                "data": rows("mlp", 1).ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}] * 20_000,
    }
    r = guarded.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 400 and "more than once" in r.json()["error"], r.text[:200]
    assert len(r.content) < 1000


def raw_post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


HUGE_SHAPE = {
    "inputs": [{"name": "input", "shape": [2**32, 2**32, 30], "datatype": "FP32", "data": []}]
}
ONE_ROW = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]}
).encode()


@pytest.mark.parametrize(
    ("request_bytes", "named"),
    [
        (b"GET /v2/models/mlp/versions/%C2%B2/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "not a version number"),
        (raw_post("/v2/models/mlp/versions/" + "9" * 5000 + "/infer", ONE_ROW), "not a version number"),
        (raw_post("/v2/models/mlp/infer", json.dumps(HUGE_SHAPE).encode()), "integers from 0 to 2147483647"),
    ],
    ids=["a Unicode-digit version", "a 5,000-digit version", "a shape of 2**32 x 2**32 x 30"],
)  # fmt: skip
def test_malformed_versions_and_shapes_answer_400_naming_the_problem(guarded, request_bytes, named):
    with connect(guarded) as sock:
        sock.sendall(request_bytes)
        status, body = answer(sock)
    assert status == 400 and named in json.loads(body)["error"], body


def test_a_client_leaving_halfway_through_its_body_is_counted_499(guarded):
    before = guarded.metric("tensorgate_requests_total", model="mlp", code="499")
    with connect(guarded) as sock:
        sock.sendall(raw_post("/v1/models/mlp:predict", b"[" * 100_000)[:2000])
        time.sleep(0.2)  # the server reads what came, then the client leaves
    deadline = time.monotonic() + 10
    while guarded.metric("tensorgate_requests_total", model="mlp", code="499") == before:
        assert time.monotonic() < deadline, "the request left no count"
        time.sleep(0.1)
