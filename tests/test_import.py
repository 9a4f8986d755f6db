"""Serving a model made elsewhere (export/importer.py, and the protocol's several inputs,
outputs and datatypes): files built here with plain torch.onnx.export and torch.jit.script,
imported with `python -m export import`, served by the real service and called over V2 JSON,
V2 binary, V1 and tritonclient."""

import concurrent.futures as cf
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from torch import nn

from artifacts.manifest import read_manifest, versions
from load_tests.servers import running_service


class TwoInTwoOut(nn.Module):
    """Token ids (INT64) and features (FP32) -> scaled features (FP32) and a count (INT64)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 3)

    def forward(self, ids: torch.Tensor, x: torch.Tensor):
        scaled = x * 2.0 + self.embed(ids).sum(dim=1)
        count = (ids > 2).sum(dim=1, keepdim=True)
        return scaled, count


IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 9, 9]], np.int64)
X = np.random.default_rng(0).uniform(-1, 1, (3, 3)).astype(np.float32)
SIGNATURE = ["--input", "ids:INT64:-1,4", "--input", "x:FP32:-1,3",
             "--output", "scaled:FP32:-1,3", "--output", "count:INT64:-1,1"]  # fmt: skip


def write_onnx(model: nn.Module, path: Path, batch: bool = True) -> Path:
    example = (torch.tensor(IDS[:2]), torch.tensor(X[:2])) if batch else (
        torch.tensor(IDS[:1]), torch.tensor(X[:1]))  # fmt: skip
    dims = {0: torch.export.Dim("batch")}
    torch.onnx.export(
        model.eval(), example, str(path), dynamo=True, input_names=["ids", "x"],
        output_names=["scaled", "count"], dynamic_shapes=(dims, dims) if batch else None,
        external_data=False,
    )  # fmt: skip
    return path


def run_import(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", "import", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = TwoInTwoOut()
    torch.jit.script(model).save(str(folder / "two.pt"))
    return {
        "onnx": write_onnx(model, folder / "two.onnx"),
        "torchscript": folder / "two.pt",
        "fixed": write_onnx(model, folder / "fixed.onnx", batch=False),
    }


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    done = run_import(files["onnx"], "--name", "two", "--repository", repository, "--range", "0,9")
    assert done.returncode == 0, done.stderr
    done = run_import(files["torchscript"], "--name", "twots", "--repository", repository,
                      *SIGNATURE, "--range", "0,9")  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_import(files["fixed"], "--name", "fixed", "--repository", repository,
                      "--range", "0,9")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no dynamic batch axis" in done.stdout
    return repository


@pytest.fixture(scope="module")
def service(imported, tmp_path_factory):
    with running_service(imported, tmp_path_factory.mktemp("logs")) as running:
        yield running


def onnx_direct(path: Path, ids: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["scaled", "count"], {"ids": ids, "x": x})


def v2_body(ids: np.ndarray, x: np.ndarray, **extra) -> dict:
    return {"inputs": [
        {"name": "ids", "datatype": "INT64", "shape": list(ids.shape), "data": ids.ravel().tolist()},
        {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
    ], **extra}  # fmt: skip


def test_the_manifest_records_the_signature_the_smoke_run_and_the_batch_axis(imported):
    two = read_manifest(imported / "two" / "1")
    assert [(t.name, t.datatype, t.shape) for t in two.inputs] == [
        ("ids", "INT64", [-1, 4]), ("x", "FP32", [-1, 3])]  # fmt: skip
    assert [(t.name, t.datatype, t.shape) for t in two.outputs] == [
        ("scaled", "FP32", [-1, 3]), ("count", "INT64", [-1, 1])]  # fmt: skip
    assert two.backends == ["onnxruntime"] and two.files.torchscript is None
    assert two.smoke.batch_sizes == [1, 64] and two.smoke.value_range == (0.0, 9.0)
    assert read_manifest(imported / "twots" / "1").backends == ["torchscript"]
    fixed = read_manifest(imported / "fixed" / "1")
    assert not fixed.batched and fixed.serving.max_batch_size == 1


def test_metadata_config_and_openapi_describe_each_input_in_its_datatype(service):
    metadata = service.get("/v2/models/two").json()
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [
        ("ids", "INT64"),
        ("x", "FP32"),
    ]
    assert metadata["labels"] == [] and metadata["platform"] == "onnxruntime_onnx"
    config = service.get("/v2/models/twots/config").json()
    assert [t["data_type"] for t in config["output"]] == ["TYPE_FP32", "TYPE_INT64"]
    assert service.get("/v2/models/fixed/config").json()["max_batch_size"] == 1
    doc = service.get("/openapi.json").json()
    body = doc["paths"]["/v2/models/two/infer"]["post"]["requestBody"]["content"]
    tensors = body["application/json"]["schema"]["properties"]["inputs"]["items"]["oneOf"]
    assert [t["properties"]["datatype"]["const"] for t in tensors] == ["INT64", "FP32"]


def test_an_imported_onnx_model_answers_as_onnxruntime_on_the_file(service, files):
    want_scaled, want_count = onnx_direct(files["onnx"], IDS, X)
    answer = service.post("/v2/models/two/infer", json=v2_body(IDS, X)).json()
    scaled, count = answer["outputs"]
    assert (scaled["datatype"], count["datatype"]) == ("FP32", "INT64")
    np.testing.assert_allclose(np.reshape(scaled["data"], (3, 3)), want_scaled, atol=1e-5)
    assert np.array_equal(np.reshape(count["data"], (3, 1)), want_count)
    only = service.post("/v2/models/two/infer", json=v2_body(IDS, X, outputs=[{"name": "count"}]))
    assert [o["name"] for o in only.json()["outputs"]] == ["count"]  # outputs selects
    v1 = service.post("/v1/models/two:predict", json={"instances": [
        {"ids": IDS[i].tolist(), "x": X[i].tolist()} for i in range(3)]}).json()  # fmt: skip
    np.testing.assert_allclose([p["scaled"] for p in v1["predictions"]], want_scaled, atol=1e-5)
    assert [p["count"] for p in v1["predictions"]] == want_count.tolist()


@pytest.mark.parametrize("model", ["two", "twots"])
def test_tritonclient_gets_the_same_values_in_binary_and_json(service, files, model):
    want_scaled, want_count = onnx_direct(files["onnx"], IDS, X)  # the same weights
    client = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
    assert client.is_model_ready(model)
    inputs = [httpclient.InferInput("ids", list(IDS.shape), "INT64"),
              httpclient.InferInput("x", list(X.shape), "FP32")]  # fmt: skip
    for binary in (True, False):
        inputs[0].set_data_from_numpy(IDS, binary_data=binary)
        inputs[1].set_data_from_numpy(X, binary_data=binary)
        outputs = [
            httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("scaled", "count")
        ]
        result = client.infer(model, inputs, outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("scaled"), want_scaled, atol=1e-5, rtol=0)
        assert result.as_numpy("count").dtype == np.int64
        assert np.array_equal(result.as_numpy("count"), want_count)


def test_grpc_carries_several_inputs_and_outputs_in_their_datatypes(service, files):
    want_scaled, want_count = onnx_direct(files["onnx"], IDS, X)
    client = grpcclient.InferenceServerClient(service.grpc)
    inputs = [grpcclient.InferInput("ids", list(IDS.shape), "INT64"),
              grpcclient.InferInput("x", list(X.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(IDS)
    inputs[1].set_data_from_numpy(X)
    for model in ("two", "twots"):
        result = client.infer(model, inputs)
        np.testing.assert_allclose(result.as_numpy("scaled"), want_scaled, atol=1e-5, rtol=0)
        assert result.as_numpy("count").dtype == np.int64
        assert np.array_equal(result.as_numpy("count"), want_count)
    only = client.infer("two", inputs, outputs=[grpcclient.InferRequestedOutput("count")])
    assert [o.name for o in only.get_response().outputs] == ["count"]


def test_a_model_without_a_batch_axis_serves_concurrent_requests_one_instance_each(service, files):
    def one(i: int) -> np.ndarray:
        ids, x = IDS[i % 3 : i % 3 + 1], X[i % 3 : i % 3 + 1]
        answer = service.post("/v2/models/fixed/infer", json=v2_body(ids, x))
        assert answer.status_code == 200, answer.text
        return np.reshape(answer.json()["outputs"][0]["data"], (1, 3))

    with cf.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(48)))
    want, _ = onnx_direct(files["fixed"], IDS[:1], X[:1])
    for i, scaled in enumerate(got):
        if i % 3 == 0:
            np.testing.assert_allclose(scaled, want, atol=1e-5)
    two = service.post("/v2/models/fixed/infer", json=v2_body(IDS[:2], X[:2]))
    assert two.status_code == 400 and "batch axis is fixed at 1" in two.json()["error"]


@pytest.mark.parametrize(("case", "change", "says"), [
    ("wrong datatype", lambda b: b["inputs"][0].update(datatype="FP32"), "input 'ids' has datatype 'FP32'"),
    ("wrong input name", lambda b: b["inputs"][1].update(name="features"), "unknown input 'features'"),
    ("missing input", lambda b: b["inputs"].pop(1), "missing input 'x'"),
    ("extra input", lambda b: b["inputs"].append({**b["inputs"][1], "name": "mask"}), "unknown input 'mask'"),
    ("the input twice", lambda b: b["inputs"].append(b["inputs"][0]), "input 'ids' is given twice"),
    ("different counts", lambda b: b["inputs"][1].update(shape=[1, 3], data=[0.0] * 3), "same number of instances"),
    ("a fraction for INT64", lambda b: b["inputs"][0]["data"].__setitem__(0, 1.5), "only integers for INT64"),
    ("unknown output", lambda b: b.update(outputs=[{"name": "logits"}]), "unknown output 'logits'"),
])  # fmt: skip
def test_a_bad_input_is_a_400_naming_it_and_the_model_keeps_serving(service, case, change, says):
    body = v2_body(IDS, X)
    change(body)
    refused = service.post("/v2/models/two/infer", json=body)
    assert refused.status_code == 400 and says in refused.json()["error"], refused.text
    assert service.post("/v2/models/two/infer", json=v2_body(IDS, X)).status_code == 200


def test_a_file_that_fails_the_checker_writes_no_version_and_says_why(tmp_path, files):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(files["onnx"].read_bytes()[:-100])  # cut short
    done = run_import(broken, "--name", "broken", "--repository", tmp_path / "repo")
    assert done.returncode == 1
    assert str(broken) in done.stderr and "fails the ONNX checker" in done.stderr
    assert not (tmp_path / "repo" / "broken").exists()


def test_a_smoke_run_that_fails_writes_no_version_and_says_why(tmp_path, files, imported):
    # ids up to 50 index past the 10-row embedding: ONNX Runtime refuses to run it
    done = run_import(files["onnx"], "--name", "two", "--repository", imported, "--range", "0,50")
    assert done.returncode == 1, done.stdout
    assert str(files["onnx"]) in done.stderr and "fails on the smoke inputs" in done.stderr
    assert versions(imported / "two") == [1]  # nothing written
    wrong = [*SIGNATURE[:-1], "count:FP32:-1,1"]  # the count is INT64
    done = run_import(files["torchscript"], "--name", "twots", "--repository", imported, *wrong,
                      "--range", "0,9")  # fmt: skip
    assert (
        done.returncode == 1 and "output 'count' is int64; the signature says FP32" in done.stderr
    )
    assert versions(imported / "twots") == [1]


def test_a_sample_is_checked_against_the_expected_outputs(tmp_path, files):
    scaled, count = onnx_direct(files["onnx"], IDS, X)
    np.savez(tmp_path / "in.npz", ids=IDS, x=X)
    np.savez(tmp_path / "out.npz", scaled=scaled, count=count)
    repository = tmp_path / "repo"
    done = run_import(files["onnx"], "--name", "two", "--repository", repository,
                      "--sample", tmp_path / "in.npz", "--expected", tmp_path / "out.npz")  # fmt: skip
    assert done.returncode == 0, done.stderr
    parity = read_manifest(repository / "two" / "1").parity["onnxruntime"]
    assert parity.max_abs_diff <= 1e-5 and parity.batch_sizes == [3]
    np.savez(tmp_path / "off.npz", scaled=scaled + 0.1, count=count)
    done = run_import(files["onnx"], "--name", "two", "--repository", repository,
                      "--sample", tmp_path / "in.npz", "--expected", tmp_path / "off.npz")  # fmt: skip
    assert done.returncode == 1 and "over the tolerance" in done.stderr
    assert versions(repository / "two") == [1]
