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


@pytest.fixture(scope="session")
def exported(full_runs, tmp_path_factory) -> Path:
    """A model repository holding version 1 of every fully trained model."""
    from export.pipeline import export_model
    from training.checkpoint import CHECKPOINT_NAME

    runs, _ = full_runs
    repository = tmp_path_factory.mktemp("model_repository")
    for name in REGISTRY:
        export_model(runs / name / CHECKPOINT_NAME, repository, progress=False)
    return repository
