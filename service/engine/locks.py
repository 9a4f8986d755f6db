"""A lock shared by processes that the death of its holder releases.

multiprocessing's Lock is a POSIX semaphore: a process SIGKILLed while holding it holds it
for ever, and every process that takes it next blocks for ever. HTTP processes die and are
replaced now, and each takes shared locks on every request (the admission count, Triton's
statistics): the chaos test froze the whole service once an HTTP process was killed inside
one. `ProcessLock` is a POSIX record lock (`fcntl.lockf`) on a file of its own, which the
kernel releases when the process holding it dies, under a thread lock, since a record lock
belongs to a process and not to one of its threads.

It pickles by path into spawned processes, which open the file as they unpickle it; forked ones use
the descriptor they inherit (record locks are not inherited, so nothing is held twice). The
process that made it removes the file at exit.
"""

import atexit
import fcntl
import os
import tempfile
import threading


class ProcessLock:
    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="tensorgate-lock-")
        self._open(fd)
        maker = os.getpid()
        atexit.register(lambda: os.getpid() == maker and os.unlink(self.path))

    def _open(self, fd: int) -> None:
        self._fd = fd
        self._threads = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._threads = threading.Lock()  # a thread of the parent may have held it at fork

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open(os.open(self.path, os.O_RDWR))

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._threads.release()
