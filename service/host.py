"""What the host gives this process: the cores it may use, and the CPU idle policy, what a
request pays to wake a process.

Cores: os.cpu_count() counts the machine's, but a container gets a CPU quota (`docker run
--cpus`, a Kubernetes CPU limit) on a larger node, or a set of cores. A default sized by the
node's cores would start more HTTP processes than the quota runs, and the kernel throttles
a cgroup that spends its quota early in a period for the rest of it (100 ms by default).

Idle policy: a request crosses processes twice (HTTP process -> inference worker -> HTTP
process), and at low concurrency each crossing wakes a process whose CPU has gone idle. On a
KVM guest with the `haltpoll` cpuidle driver, an idle vCPU polls for up to
`guest_halt_poll_ns` before it halts; 0 (as on the benchmark's VM) halts at once, so every
wake-up is a trip through the host: docs/benchmarks/haltpoll.md measures what that costs
against the naive one-process server.
"""

import math
import os
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


def usable_cores(proc: Path = Path("/proc/self")) -> int:
    """The cores this process may run on, capped by its cgroups' CPU quota (rounded up)."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(proc)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cpu_quota(proc: Path = Path("/proc/self")) -> float | None:
    """CPUs' worth of time per period that this process's cgroup and its ancestors allow (the
    least of them), cgroup v2 or v1; None: no quota, or no cgroup file system to read."""
    quotas = []
    for top, path in _cpu_cgroups(proc):
        here = top / path.relative_to("/")
        while True:
            if (quota := _quota_at(here)) is not None:
                quotas.append(quota)
            if here == top:
                break
            here = here.parent
    return min(quotas, default=None)


def _cpu_cgroups(proc: Path) -> list[tuple[Path, Path]]:
    """(mount point, path below it) of each mounted hierarchy holding this process's CPU
    controller: cgroup2's, or v1's `cpu` one."""
    try:
        groups = (proc / "cgroup").read_text().splitlines()  # "id:controllers:/path"
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    paths = {}  # file system type -> this process's cgroup in it
    for group in groups:
        _, controllers, path = group.split(":", 2)
        if controllers == "":
            paths["cgroup2"] = path
        elif "cpu" in controllers.split(","):
            paths["cgroup"] = path
    found = []
    for line in mounts:
        fields, _, fs = line.partition(" - ")  # "... root mount-point ..." - "type source options"
        fields, fs = fields.split(), fs.split()
        if len(fields) < 5 or len(fs) < 3 or fs[0] not in paths:
            continue
        if fs[0] == "cgroup" and "cpu" not in fs[2].split(","):
            continue
        root, path = fields[3], paths[fs[0]]  # a container's mount shows its own cgroup as /
        if path == root or path.startswith(root.rstrip("/") + "/"):
            found.append((Path(fields[4]), Path("/") / Path(path).relative_to(root)))
    return found


def _quota_at(cgroup: Path) -> float | None:
    try:
        if (cgroup / "cpu.max").exists():  # v2: "max 100000" or "150000 100000"
            quota, period = (cgroup / "cpu.max").read_text().split()
        else:  # v1: -1 when unlimited
            quota = (cgroup / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return int(quota) / int(period)
