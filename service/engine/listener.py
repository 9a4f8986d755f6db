"""The listening socket at a drain: new connections stop, and those the kernel has already
completed are taken by an HTTP process before it closes, so that none is reset unanswered.

Closing a listening socket resets every connection still in its accept queue. To its client
each of those was open: it sent its request and read a reset (10 to 15 a SIGTERM under 32
clients reconnecting after their `Connection: close` answers). So a drain first attaches a
socket filter that drops every packet reaching the listener: a new client's SYN goes
unanswered, it retries a second later and meets the closed port (refused: nothing was sent).
Then it waits for the HTTP processes to accept what is queued, and only then closes.

Linux only (SO_ATTACH_FILTER and TCP_INFO's accept queue); elsewhere, or where a seccomp
profile refuses the filter (buildah's container runtime does), the drain closes at once.
"""

import ctypes
import logging
import socket
import struct
import sys
import time

logger = logging.getLogger(__name__)

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant, here 0: keep no byte of the packet
TCP_INFO_QUEUED = 24  # tcp_info.tcpi_unacked: a listener's accept queue (tcp_get_info)
WAIT_EVERY = 0.01  # seconds between looks at the accept queue


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def refuse_new_connections(sock: socket.socket) -> None:
    """Drop every packet the listener receives from now on: no connection joins its queue."""
    drop = (SockFilter * 1)(SockFilter(BPF_RET_K, 0, 0, 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(SockFprog(1, drop)))


def queued(sock: socket.socket) -> int:
    """Connections the kernel has completed and no process has accepted yet."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_QUEUED + 4)
    return struct.unpack_from("I", info, TCP_INFO_QUEUED)[0]


def empty_before_close(sockets: list[socket.socket], within: float) -> int:
    """Stop new connections and wait, at most `within` seconds, until the accepting processes
    have taken every queued one; returns how many were left (reset when the sockets close)."""
    if not sys.platform.startswith("linux"):
        return 0
    deadline = time.monotonic() + within
    try:
        for sock in sockets:
            refuse_new_connections(sock)
        while (left := sum(queued(sock) for sock in sockets)) and time.monotonic() < deadline:
            time.sleep(WAIT_EVERY)
    except OSError as e:  # a seccomp profile may refuse the filter (buildah's does)
        logger.warning("the listener closes at once, resetting any connection still queued: %s", e)
        return 0
    if left:
        logger.warning("%d connections were still queued at the drain; they are reset", left)
    return left
