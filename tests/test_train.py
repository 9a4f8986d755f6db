import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training import REGISTRY, build, load_checkpoint, train_and_save
from training.checkpoint import CHECKPOINT_NAME
from training.run import CURVES_NAME, DRY_RUN_EPOCHS, METRICS_NAME
from training.train import evaluate, train_one_epoch

NAMES = list(REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_a_short_training_run_lowers_the_loss(name):
    spec = REGISTRY[name]
    cfg, ds = spec.config(), spec.dataset()
    torch.manual_seed(cfg.seed)
    model = build(name)
    model.standardize.fit(ds.train.x)
    loader = DataLoader(
        TensorDataset(ds.train.x, ds.train.y), batch_size=cfg.batch_size, shuffle=True
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before, _ = evaluate(model, ds.train, torch.device("cpu"))
    for _ in range(3):
        train_one_epoch(model, loader, optimizer, constant, torch.device("cpu"))
    after, _ = evaluate(model, ds.train, torch.device("cpu"))
    assert after < 0.7 * before, (before, after)


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not(tmp_path):
    a = train_and_save("resnet", tmp_path / "a", "cpu", dry_run=True, progress=False)
    b = train_and_save("resnet", tmp_path / "b", "cpu", dry_run=True, progress=False)
    c = train_and_save("resnet", tmp_path / "c", "cpu", dry_run=True, seed=1, progress=False)
    assert a.history == b.history and a.test_accuracy == b.test_accuracy
    assert a.history != c.history
    assert len(a.history) == DRY_RUN_EPOCHS


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trips_with_weights_only(tmp_path, name):
    result = train_and_save(name, tmp_path, "cpu", dry_run=True, progress=False)
    path = tmp_path / name / CHECKPOINT_NAME
    raw = torch.load(path, weights_only=True)  # plain data: no code is unpickled
    assert raw["model"] == name and raw["config"]["seed"] == 0
    assert raw["labels"] == list(REGISTRY[name].dataset().labels)
    _, model = load_checkpoint(path)
    assert not model.training
    x = REGISTRY[name].dataset().test.x
    with torch.inference_mode():
        torch.testing.assert_close(model(x), result.model(x), atol=0, rtol=0)


def test_a_run_writes_metrics_and_curves(tmp_path):
    train_and_save("mlp", tmp_path, "cpu", dry_run=True, progress=False)
    metrics = json.loads((tmp_path / "mlp" / METRICS_NAME).read_text())
    assert metrics["dry_run"] is True and metrics["device"] == "cpu"
    assert len(metrics["history"]) == DRY_RUN_EPOCHS == metrics["epochs_run"]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"} <= set(
        metrics["history"][0]
    )
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["wall_time_s"] > 0
    assert (tmp_path / "mlp" / CURVES_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_dry_run_and_bad_arguments(tmp_path):
    cmd = [sys.executable, "-m", "training", "--model", "transformer", "--dry-run"]
    done = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "transformer: test accuracy" in done.stdout
    assert (tmp_path / "transformer" / CHECKPOINT_NAME).exists()
    scratch = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert scratch.returncode == 0, scratch.stderr
    assert not (tmp_path / "runs").exists()  # a dry run leaves the runs folder alone
    written = scratch.stdout.split("wrote ")[-1].strip().rstrip("/")
    assert "tensorgate-dry-run-" in written and Path(written, CHECKPOINT_NAME).is_file()
    shutil.rmtree(Path(written).parent)
    bad = subprocess.run(
        [sys.executable, "-m", "training", "--model", "vgg"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: 'vgg'" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_training_meets_the_accuracy_bar(full_runs, name):
    out, results = full_runs
    result = results[name]
    assert result.test_accuracy >= REGISTRY[name].accuracy_bar
    assert not result.stopped_early or result.best_epoch < len(result.history)
    metrics = json.loads((out / name / METRICS_NAME).read_text())
    assert metrics["test_accuracy"] == result.test_accuracy and not metrics["dry_run"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_training_runs_on_cuda(tmp_path, name):
    result = train_and_save(name, tmp_path, "cuda", dry_run=True, progress=False)
    assert result.device.startswith("cuda")
    assert all(p.device.type == "cpu" for p in result.model.parameters())  # returned on CPU
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
