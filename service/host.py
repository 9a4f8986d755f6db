"""The host's CPU idle policy, read from sysfs: what a request pays to wake a process.

A request crosses processes twice (HTTP process -> inference worker -> HTTP process), and at
low concurrency each crossing wakes a process whose CPU has gone idle. On a KVM guest with
the `haltpoll` cpuidle driver, an idle vCPU polls for up to `guest_halt_poll_ns` before it
halts; 0 (as on the benchmark's VM) halts at once, so every wake-up is a trip through the
host: docs/benchmarks/haltpoll.md measures what that costs against the naive one-process server.
"""

from pathlib import Path
from typing import NamedTuple

HALT_POLL = "module/haltpoll/parameters/guest_halt_poll_ns"  # under /sys
KERNEL_DEFAULT_HALT_POLL_NS = 200_000


class IdlePolicy(NamedTuple):
    driver: str | None  # the cpuidle driver: "haltpoll" (a KVM guest), "intel_idle", ...
    halt_poll_ns: int | None  # haltpoll's guest_halt_poll_ns; None: another driver

    def describe(self) -> str:
        if self.driver is None:
            return "cpuidle: unknown"
        if self.halt_poll_ns is None:
            return f"cpuidle: {self.driver}"
        return f"cpuidle: {self.driver}, guest_halt_poll_ns={self.halt_poll_ns}"

    def warning(self) -> str | None:
        """Why latency at low concurrency suffers on this host, or None."""
        if self.halt_poll_ns != 0:
            return None
        return (
            "this VM's idle vCPUs halt at once (haltpoll guest_halt_poll_ns=0), so each of a "
            "request's two process hops pays a wake-up through the host (0.05-0.25 ms more "
            "p50 at one connection, measured). The kernel's default polls first: echo "
            f"{KERNEL_DEFAULT_HALT_POLL_NS} > /sys/{HALT_POLL} (docs/production.md)"
        )


def idle_policy(sys_root: Path = Path("/sys")) -> IdlePolicy:
    try:
        driver = (sys_root / "devices/system/cpu/cpuidle/current_driver").read_text().strip()
    except OSError:
        return IdlePolicy(None, None)
    if driver != "haltpoll":
        return IdlePolicy(driver, None)
    try:
        return IdlePolicy(driver, int((sys_root / HALT_POLL).read_text()))
    except (OSError, ValueError):
        return IdlePolicy(driver, None)
