"""Child processes that end with the main process, however it ends."""

import os
import signal
import threading
import time

WATCH_EVERY = 1.0  # seconds


def exit_with_parent(parent: int) -> None:
    """SIGTERM this process once `parent` (the main process) is gone. After a kill -9 or the
    OOM killer, outside a container (whose PID namespace would end them), an orphaned HTTP
    process would go on holding the port and a worker its memory. A watching thread, not
    Linux's PR_SET_PDEATHSIG, which fires when the forking *thread* ends: the supervisor's,
    for the workers it starts, and that thread ends at the start of a drain."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_EVERY)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="tensorgate-parent-watch").start()
