"""Start-ups that must be refused, each naming the problem: a tampered artifact, a broken
manifest, CUDA without a GPU, bad settings; and `--help`."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import artifact

from load_tests.servers import free_port


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_asked_for_without_a_gpu_stops_start_up(exported):
    result = start_refused(exported, "--device", "cuda")
    assert result.returncode == 1 and "the CUDA driver sees no GPU" in result.stderr


def start_refused(repository, *args) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "service",
        "--repository",
        str(repository),
        "--port",
        str(free_port()),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_tampered_artifact_stops_start_up_naming_the_file(exported, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(exported, repository)
    onnx = artifact(repository, "resnet")
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF
    onnx.write_bytes(bytes(data))
    done = start_refused(repository)
    assert done.returncode == 1
    assert f"refusing to start: {onnx}: sha256" in done.stderr and "does not match" in done.stderr


def test_a_broken_or_missing_manifest_stops_start_up(exported, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(exported, repository)
    (repository / "mlp" / "1" / "manifest.json").write_text("{")
    done = start_refused(repository, "--models", "mlp")
    assert done.returncode == 1 and "manifest.json: invalid manifest" in done.stderr
    done = start_refused(repository, "--models", "resnet:4")
    assert done.returncode == 1 and "model 'resnet' version 4 is not in" in done.stderr
    done = start_refused(tmp_path / "nowhere")
    assert done.returncode == 1 and "does not exist" in done.stderr


def test_bad_settings_exit_2_and_help_lists_the_flags():
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for flag in (
        "--port",
        "--repository",
        "--backend",
        "--device",
        "--max-batch-size",
        "--batch-timeout",
        "--request-timeout",
        "--max-body-bytes",
        "--api-key",
    ):
        assert flag in done.stdout
    options = re.split(r"\n  (?=-)", done.stdout.split("options:", 1)[1])
    for option in options[2:]:  # after -h: each its default and its variable, once
        flag = option.split()[0].removeprefix("--").rstrip(",")
        assert option.count("(default") == 1, option
        assert f"[TENSORGATE_{flag.upper().replace('-', '_')}]" in " ".join(option.split())
    usage = done.stdout.split("options:", 1)[0]
    assert not re.search(r"\b(str|int|float|Path|SecretStr)\]", usage), usage
    done = subprocess.run(
        [sys.executable, "-m", "service", "--device", "gpu"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "invalid settings:",
        "TENSORGATE_DEVICE (--device) = 'gpu': input should be 'auto', 'cpu' or 'cuda'",
    ]
    env = {**os.environ, "TENSORGATE_MAX_BODY_BYTES": "1000", "TENSORGATE_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "service"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "invalid settings:",  # the upper-case log level is fine
        "TENSORGATE_MAX_BODY_BYTES (--max-body-bytes) = '1000': input should be greater than "
        "or equal to 1024",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "service", "--host", "10.0.0.1"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "not one LitServe binds" in done.stderr
