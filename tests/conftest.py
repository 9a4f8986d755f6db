"""Shared fixtures: full training runs happen once per session, in a temporary folder."""

from pathlib import Path

import pytest

from training import REGISTRY, train_and_save
from training.train import TrainResult


@pytest.fixture(scope="session")
def full_runs(tmp_path_factory) -> tuple[Path, dict[str, TrainResult]]:
    """Every registered model trained to completion (about 35 s on 2 cores, all three)."""
    out = tmp_path_factory.mktemp("runs")
    return out, {name: train_and_save(name, out, device="cpu") for name in REGISTRY}
