"""The Makefile: `make help` lists every target a user runs, each has one recipe, and each
parses."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def help_targets() -> list[str]:
    text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    return re.findall(r"^make (\S+)", text, flags=re.M)


def test_help_names_every_target_a_user_runs():
    phony = re.search(r"^\.PHONY: (.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    internal = {"help", "venv"}  # help prints this list; every target builds the venv itself
    assert set(help_targets()) == set(phony.group(1).split()) - internal


@pytest.mark.parametrize("target", help_targets())
def test_each_target_has_one_recipe_and_parses(target):
    # A recipe defined twice makes make warn and keep the last one: loadtest once lost its
    # recipe that way to a misplaced edit.
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
