"""The host's idle policy (service/host.py), read from a sysfs tree, and the startup warning."""

from pathlib import Path

import pytest

from service.host import HALT_POLL, KERNEL_DEFAULT_HALT_POLL_NS, IdlePolicy, idle_policy


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
