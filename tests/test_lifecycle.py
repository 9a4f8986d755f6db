"""Model lifecycle without restarts (lifecycle.py, engine/table.py), on the real service: a
new export taking over while 16 clients post, a tampered export refused while the serving
version goes on, a model removed from the repository unloaded, tritonclient's load_model, and
models added to the repository while serving (poll and explicit)."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import Clients, direct, export_mlp, rows, uncertain_mlp_rows, v2_json
from tritonclient.utils import InferenceServerException

from artifacts.manifest import read_manifest
from load_tests.servers import running_service
from training import train_and_save

POLL = 0.5  # seconds between the poller's repository reads in these tests


@pytest.fixture(scope="module")
def other_runs(tmp_path_factory) -> Path:
    """mlp trained again with another seed, so that its export answers differently."""
    runs = tmp_path_factory.mktemp("other-runs")
    train_and_save("mlp", runs, device="cpu", seed=1, progress=False)
    return runs


@pytest.fixture
def repository(exported, tmp_path) -> Path:
    """Version 1 of mlp and resnet, in a repository of the test's own."""
    repository = tmp_path / "repository"
    for name in ("mlp", "resnet"):
        shutil.copytree(exported / name, repository / name)
    return repository


def publish_tampered(runs: Path, repository: Path, tmp_path: Path) -> tuple[int, Path]:
    """mlp's next version with one byte of its ONNX file changed after export, moved into the
    repository whole (as an export publishes): (its version, the changed file)."""
    staging = tmp_path / "staging"
    shutil.copytree(repository / "mlp", staging / "mlp")
    version = export_mlp(runs, staging)
    folder = staging / "mlp" / str(version)
    onnx = folder / read_manifest(folder).artifact("onnxruntime").path
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    os.rename(folder, repository / "mlp" / str(version))
    return version, repository / "mlp" / str(version) / onnx.name


def wait_for(log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text()}"
        time.sleep(0.1)


def worker_pid(log: Path, model: str, version: int) -> int:
    found = re.search(rf"model '{model}' version {version}: worker 0 serving \(pid (\d+)\)",
                      log.read_text())  # fmt: skip
    assert found, log.read_text()
    return int(found.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_poller_serves_a_new_export_under_16_clients_with_every_request_answered(
    repository, other_runs, tmp_path
):
    x = uncertain_mlp_rows()
    body = json.dumps(v2_json(x)).encode()
    settings = {"model_control": "poll", "repository_poll": POLL}
    with running_service(repository, tmp_path, **settings) as s:
        port = int(s.url.rsplit(":", 1)[1])
        old_worker = worker_pid(s.log, "mlp", 1)
        clients = Clients(port, "/v2/models/mlp/infer", body, {}, 16, field="model_version")
        time.sleep(1.0)
        version = export_mlp(other_runs, repository)
        wait_for(s.log, "model 'mlp' version 1: unloaded")
        switched = time.monotonic()
        time.sleep(0.5)
        outcomes = clients.join()
        answer = s.post("/v2/models/mlp/infer", json=v2_json(x)).json()
        index = s.post("/v2/repository/index").json()
        metadata = s.get("/v2/models/mlp").json()
    assert version == 2
    assert set(outcomes) == {200}, outcomes  # none lost, none refused, across the switch
    seen = [v for _, v in clients.fields]
    assert seen[0] == "1" and set(seen) == {"1", "2"}, set(seen)
    assert {v for at, v in clients.fields if at > switched} == {"2"}
    assert not alive(old_worker)  # version 1's worker exited
    assert answer["model_version"] == "2" and metadata["versions"] == ["2"]
    got = np.array(answer["outputs"][0]["data"], np.float32).reshape(len(x), -1)
    np.testing.assert_allclose(got, direct(repository, "mlp", x, version=2), atol=1e-5, rtol=0)
    assert np.abs(got - direct(repository, "mlp", x, version=1)).max() > 1e-3  # it is v2's
    states = {(e["name"], e["version"]): e["state"] for e in index}
    assert states == {("mlp", "1"): "UNAVAILABLE", ("mlp", "2"): "READY", ("resnet", "1"): "READY"}


def test_a_tampered_export_is_refused_naming_the_file_and_a_removed_model_unloads(
    repository, other_runs, tmp_path
):
    settings = {"model_control": "poll", "repository_poll": POLL}
    with running_service(repository, tmp_path, **settings) as s:
        version, changed = publish_tampered(other_runs, repository, tmp_path)
        wait_for(s.log, f"model 'mlp' version {version} not loaded")
        logged = s.log.read_text()
        index = {e["version"]: e for e in s.post("/v2/repository/index").json()}
        answer = s.post("/v2/models/mlp/infer", json=v2_json(rows("mlp", 2)))
        failures = s.metric(
            "tensorgate_model_load_failures_total", model="mlp", version=str(version)
        )
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        shutil.rmtree(repository / "resnet")
        wait_for(s.log, "model 'resnet' version 1: unloaded")
        gone = s.post("/v2/models/resnet/infer", json=v2_json(rows("resnet", 1)))
        still = s.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 1).tolist()})
        ready = s.get("/v2/health/ready")
    assert version == 2
    assert f"{changed}: sha256" in logged  # the error names the file
    reason = index["2"]["reason"]  # names the file within the repository, and no more
    assert index["2"]["state"] == "UNAVAILABLE" and str(changed.relative_to(repository)) in reason
    assert str(repository) not in reason and "<sha256>" in reason
    assert index["1"]["state"] == "READY"
    assert failures == 1
    assert gone.status_code == 503 and "no version in" in gone.json()["error"]
    assert still.status_code == 200 and ready.status_code == 200


def test_tritonclients_load_model_serves_a_new_export_and_refuses_a_tampered_one(
    repository, other_runs, tmp_path
):
    with running_service(repository, tmp_path, model_control="explicit") as s:
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        export_mlp(other_runs, repository)
        time.sleep(2 * POLL)
        index = {e["version"]: e for e in client.get_model_repository_index() if e["name"] == "mlp"}
        assert index["2"]["state"] == "UNAVAILABLE" and "load" in index["2"]["reason"]
        assert index["1"]["state"] == "READY"  # version 1 serves until the load
        before = s.post("/v2/models/mlp/infer", json=v2_json(rows("mlp", 1))).json()
        assert before["model_version"] == "1"
        client.load_model("mlp")  # returns once version 2 serves
        served = s.post("/v2/models/mlp/infer", json=v2_json(rows("mlp", 1))).json()
        assert served["model_version"] == "2"
        wait_for(s.log, "model 'mlp' version 1: unloaded")
        _, changed = publish_tampered(other_runs, repository, tmp_path)
        with pytest.raises(InferenceServerException, match="sha256") as refused:
            client.load_model("mlp")
        assert str(changed.relative_to(repository)) in str(refused.value)
        assert str(repository) not in str(refused.value)
        after = s.post("/v2/models/mlp/infer", json=v2_json(rows("mlp", 1))).json()
        assert after["model_version"] == "2"  # the serving version goes on
        assert client.is_model_ready("resnet")  # untouched


def publish_model(exported: Path, repository: Path, name: str, staging: Path) -> None:
    """A whole model folder moved into the repository at once, as a copy of `exported`'s."""
    shutil.copytree(exported / name, staging / name)
    os.rename(staging / name, repository / name)


def test_the_poller_serves_a_model_added_to_the_repository_on_every_route(
    repository, exported, tmp_path
):
    """transformer, absent at start, is published while 8 clients post to mlp: it serves on
    V1, V2 (both HTTP processes: its routes and the fast path), gRPC, metadata, the model
    list, OpenAPI, statistics, metrics and the repository index; mlp never notices."""
    x = rows("transformer", 3)
    mlp_body = json.dumps({"instances": rows("mlp", 2).tolist()}).encode()
    settings = {"model_control": "poll", "repository_poll": POLL, "api_servers": 2}
    with running_service(repository, tmp_path, **settings) as s:
        port = int(s.url.rsplit(":", 1)[1])
        assert s.get("/v2/models/transformer").status_code == 404
        clients = Clients(port, "/v1/models/mlp:predict", mlp_body, {}, 8)
        publish_model(exported, repository, "transformer", tmp_path)
        wait_for(s.log, "model 'transformer' version 1: serving")
        expected = direct(repository, "transformer", x)
        for _ in range(8):  # fresh connections: both HTTP processes meet the new model
            v2 = s.post("/v2/models/transformer/infer", json=v2_json(x))
            assert v2.status_code == 200, v2.text
            got = np.array(v2.json()["outputs"][0]["data"], np.float32).reshape(len(x), -1)
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
            v1 = s.post("/v1/models/transformer:predict", json={"instances": x.tolist()})
            assert v1.status_code == 200, v1.text
            assert s.get("/v2/models/transformer/versions/1/ready").status_code == 200
        grpc = grpcclient.InferenceServerClient(s.grpc)
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answer = grpc.infer("transformer", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, expected, atol=1e-5, rtol=0)
        assert s.get("/v2/models/transformer").json()["versions"] == ["1"]
        assert "transformer" in s.get("/v2/models").json()["models"]
        assert "/v2/models/transformer/infer" in s.get("/openapi.json").json()["paths"]
        stats = s.get("/v2/models/transformer/stats").json()["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] >= 16
        assert s.metric("tensorgate_queue_limit", model="transformer") > 0
        index = {
            (e["name"], e["version"]): e["state"] for e in s.post("/v2/repository/index").json()
        }
        assert index[("transformer", "1")] == "READY"
        outcomes = clients.join()
    assert set(outcomes) == {200}, outcomes


def test_an_explicit_load_serves_a_new_model_refuses_a_broken_one_and_unload_removes_it(
    repository, exported, tmp_path
):
    with running_service(repository, tmp_path, model_control="explicit") as s:
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        publish_model(exported, repository, "transformer", tmp_path)
        index = {e["name"]: e for e in client.get_model_repository_index()}
        assert index["transformer"]["state"] == "UNAVAILABLE"
        assert "load" in index["transformer"]["reason"]
        client.load_model("transformer")  # returns once it serves
        x = rows("transformer", 2)
        answer = s.post("/v2/models/transformer/infer", json=v2_json(x))
        assert answer.status_code == 200, answer.text
        # a broken new model (its manifest names another): refused saying so, and nothing
        # that serves is disturbed
        shutil.copytree(exported / "transformer", tmp_path / "broken")
        os.rename(tmp_path / "broken", repository / "broken")
        with pytest.raises(InferenceServerException, match="manifest says transformer"):
            client.load_model("broken")
        with pytest.raises(InferenceServerException, match="no such model in the repository"):
            client.load_model("nosuch")
        for outside in ("..", ".hidden", "mlp/1"):  # names, never paths
            with pytest.raises(InferenceServerException):
                client.load_model(outside)
        assert client.is_model_ready("transformer") and client.is_model_ready("mlp")
        client.unload_model("transformer")
        gone = s.post("/v2/models/transformer/infer", json=v2_json(x))
        assert gone.status_code == 503 and "unloaded" in gone.json()["error"], gone.text
        index = {e["name"]: e for e in client.get_model_repository_index()}
        assert index["transformer"]["state"] == "UNAVAILABLE"
        assert index["broken"]["state"] == "UNAVAILABLE"
