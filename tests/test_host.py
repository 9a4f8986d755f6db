"""What service/host.py reads of the host: the idle policy, from a sysfs tree, and the
startup warning; the usable cores, from cgroup trees as v1 and v2 lay them out and from a real
cgroup with a CPU quota that the service's default number of HTTP processes follows."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from service.host import (
    HALT_POLL,
    KERNEL_DEFAULT_HALT_POLL_NS,
    IdlePolicy,
    _cpu_cgroups,
    cpu_quota,
    idle_policy,
)


def sysfs(root: Path, driver: str | None, halt_poll_ns: str | None = None) -> Path:
    if driver is not None:
        (root / "devices/system/cpu/cpuidle").mkdir(parents=True)
        (root / "devices/system/cpu/cpuidle/current_driver").write_text(driver + "\n")
    if halt_poll_ns is not None:
        (root / HALT_POLL).parent.mkdir(parents=True)
        (root / HALT_POLL).write_text(halt_poll_ns + "\n")
    return root


def test_a_kvm_guest_that_halts_at_once_is_warned_of(tmp_path):
    policy = idle_policy(sysfs(tmp_path, "haltpoll", "0"))
    assert policy == IdlePolicy("haltpoll", 0)
    assert policy.describe() == "cpuidle: haltpoll, guest_halt_poll_ns=0"
    assert f"echo {KERNEL_DEFAULT_HALT_POLL_NS} > /sys/{HALT_POLL}" in policy.warning()


@pytest.mark.parametrize(
    ("driver", "halt_poll_ns", "expected"),
    [
        ("haltpoll", "200000", IdlePolicy("haltpoll", 200_000)),  # polls first: no warning
        ("intel_idle", "0", IdlePolicy("intel_idle", None)),  # the parameter does not apply
        ("haltpoll", None, IdlePolicy("haltpoll", None)),  # unreadable: nothing claimed
        (None, None, IdlePolicy(None, None)),  # no cpuidle at all (a container's masked /sys)
    ],
)
def test_other_hosts_are_not_warned_of(tmp_path, driver, halt_poll_ns, expected):
    policy = idle_policy(sysfs(tmp_path, driver, halt_poll_ns))
    assert policy == expected
    assert policy.warning() is None


def test_the_service_warns_at_startup_on_such_a_host(service):
    warning = idle_policy().warning()
    if warning is None:
        pytest.skip("this host's idle CPUs do not halt at once (no haltpoll with 0): no warning")
    assert warning in service.log.read_text()


V2_MOUNT = "30 23 0:26 {root} {mount} rw,nosuid - cgroup2 cgroup2 rw\n"
V1_MOUNT = "35 25 0:31 {root} {mount} rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"


def proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cgroup").write_text(cgroup)
    (tmp_path / "proc/mountinfo").write_text(mountinfo)
    return tmp_path / "proc"


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text + "\n")


def test_a_v2_container_quota_is_read_at_its_own_root(tmp_path):
    # cgroup namespace, as Docker on cgroup v2: the container sees its cgroup as / at the mount
    fs = tmp_path / "fs"
    write(fs, {"cpu.max": "150000 100000"})
    p = proc(tmp_path, "0::/\n", V2_MOUNT.format(root="/", mount=fs))
    assert _cpu_cgroups(p) == [(fs, Path("/"))]
    assert cpu_quota(p) == 1.5


def test_the_least_quota_up_the_v2_tree_applies(tmp_path):
    fs = tmp_path / "fs"
    write(fs / "kubepods", {"cpu.max": "200000 100000"})
    write(fs / "kubepods/pod1", {"cpu.max": "max 100000"})  # unlimited itself
    write(fs / "kubepods/pod1/c1", {"cpu.max": "400000 100000"})
    p = proc(tmp_path, "0::/kubepods/pod1/c1\n", V2_MOUNT.format(root="/", mount=fs))
    assert cpu_quota(p) == 2.0


def test_a_v1_quota_below_a_bind_mounted_root_is_found(tmp_path):
    # Docker on cgroup v1 without a cgroup namespace: the mount's root is the container's group
    fs = tmp_path / "cpu"
    write(fs, {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000"})
    cgroup = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
    p = proc(tmp_path, cgroup, V1_MOUNT.format(root="/docker/abc", mount=fs))
    assert _cpu_cgroups(p) == [(fs, Path("/"))]
    assert cpu_quota(p) == 0.5


@pytest.mark.parametrize(
    ("cgroup", "files"),
    [
        ("0::/\n", {"cpu.max": "max 100000"}),  # v2, no limit
        ("0::/\n", {}),  # no cpu controller files in the group
        ("0::/\n", {"cpu.max": "garbage"}),  # unreadable: nothing claimed
    ],
)
def test_no_quota_means_none(tmp_path, cgroup, files):
    fs = tmp_path / "fs"
    write(fs, files)
    assert cpu_quota(proc(tmp_path, cgroup, V2_MOUNT.format(root="/", mount=fs))) is None


def test_no_cgroup_file_system_means_none(tmp_path):
    assert cpu_quota(tmp_path / "missing") is None


def default_api_servers(before: str = "", cgroup: Path | None = None) -> int:
    """TENSORGATE_API_SERVERS unset, as a fresh process derives it after running `before`
    (Python), started inside `cgroup` when given."""
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_API_SERVERS"}
    code = f"{before}; from service.settings import Settings; print(Settings().api_servers)"
    enter = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup else ""
    out = subprocess.run(
        ["sh", "-c", f'{enter}exec "{sys.executable}" -c "{code}"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


@pytest.fixture
def cores() -> int:
    usable = len(os.sched_getaffinity(0))
    if usable < 2:
        pytest.skip("one usable core: a cap to one cannot be told from the machine's own count")
    return usable


def test_the_default_http_processes_follow_the_cpu_affinity(cores):
    assert default_api_servers("import os") == min(4, cores)
    one = min(os.sched_getaffinity(0))
    assert default_api_servers(f"import os; os.sched_setaffinity(0, {{{one}}})") == 1


@pytest.fixture
def one_cpu_cgroup():
    """A real child cgroup of this process's, limited to one CPU's worth of time."""
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    for top, path in _cpu_cgroups(Path("/proc/self")):
        group = top / path.relative_to("/") / f"tensorgate-test-{uuid.uuid4().hex[:8]}"
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            if (group / "cpu.max").exists():
                (group / "cpu.max").write_text("100000 100000")
            elif (group / "cpu.cfs_quota_us").exists():
                (group / "cpu.cfs_quota_us").write_text("100000")
                (group / "cpu.cfs_period_us").write_text("100000")
            else:  # cgroup2 without the cpu controller delegated here
                group.rmdir()
                continue
        except OSError:
            group.rmdir()
            continue
        yield group
        group.rmdir()  # empty again: its one process has exited
        return
    pytest.skip("no writable cgroup with a CPU controller here (cgroup v1 cpu or v2 cpu.max)")


def test_the_default_http_processes_follow_a_cgroup_cpu_quota(cores, one_cpu_cgroup):
    assert default_api_servers("import os") == min(4, cores)
    assert default_api_servers("import os", one_cpu_cgroup) == 1
