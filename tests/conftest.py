"""Shared fixtures: full training runs happen once per session, in a temporary folder."""

from pathlib import Path

import pytest
from helpers import BATCH_TIMEOUT, tool

from load_tests.servers import running_service
from training import REGISTRY, train_and_save
from training.checkpoint import CHECKPOINT_NAME
from training.train import TrainResult


def pytest_runtest_setup(item: pytest.Item) -> None:
    """@pytest.mark.tools("wrk", ...): check the tools before any fixture trains or serves."""
    for marker in item.iter_markers("tools"):
        for name in marker.args:
            tool(name)


@pytest.fixture(scope="session")
def full_runs(tmp_path_factory) -> tuple[Path, dict[str, TrainResult]]:
    """Every registered model trained to completion (about 35 s on 2 cores, all three)."""
    out = tmp_path_factory.mktemp("runs")
    return out, {name: train_and_save(name, out, device="cpu") for name in REGISTRY}


@pytest.fixture(scope="session")
def other_mlp(tmp_path_factory) -> Path:
    """mlp trained to completion with another seed (1): a version that answers differently."""
    out = tmp_path_factory.mktemp("other-runs")
    train_and_save("mlp", out, device="cpu", seed=1, progress=False)
    return out / "mlp" / CHECKPOINT_NAME


@pytest.fixture(scope="session")
def exported(full_runs, tmp_path_factory) -> Path:
    """A model repository holding version 1 of every fully trained model."""
    from export.pipeline import export_model

    runs, _ = full_runs
    repository = tmp_path_factory.mktemp("model_repository")
    for name in REGISTRY:
        export_model(runs / name / CHECKPOINT_NAME, repository, progress=False)
    return repository


@pytest.fixture(scope="session")
def service(exported, tmp_path_factory):
    """The real service serving every model, on a free loopback port."""
    logs = tmp_path_factory.mktemp("logs")
    with running_service(exported, logs, batch_timeout=BATCH_TIMEOUT) as running:
        yield running
