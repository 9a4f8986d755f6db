"""The locust load test: a short real run against the service, an SLO that must fail, and
the response checks that turn a wrong 200 into a failure."""

import csv
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import NAMES, held_out

from load_tests.payloads import (
    BINARY_HEADER,
    Case,
    Served,
    check,
    request_body,
    served_models,
    weights,
)
from load_tests.servers import running_service


@pytest.fixture(scope="module")
def default_service(exported, tmp_path_factory):
    """The service with default settings (the shared one has a 0.5 s batch timeout, which a
    batch that never fills waits out under load, by design)."""
    with running_service(exported, tmp_path_factory.mktemp("logs")) as service:
        yield service


def run_load_test(service, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    command = [
        sys.executable,
        "-m",
        "load_tests",
        "--url",
        service.url,
        "--repository",
        str(service.repository),
        "--reports",
        str(tmp_path),
        "--users",
        "4",
        "--spawn-rate",
        "4",
        "--grpc-target",
        service.grpc,
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    (stats_file,) = tmp_path.glob("loadtest-*/locust_stats.csv")
    rows = {row["Name"]: row for row in csv.DictReader(stats_file.open())}
    return done, rows


def test_a_short_run_passes_its_slos_with_no_failures(default_service, tmp_path):
    done, rows = run_load_test(default_service, tmp_path, "--duration", "10s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SLOs met" in done.stderr
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0
    for model in ("mlp", "resnet", "transformer"):  # every model and protocol was exercised
        for protocol in ("v1", "v2", "v2-binary", "grpc"):
            assert int(rows[f"{model} {protocol}"]["Request Count"]) > 0
    assert list(tmp_path.glob("loadtest-*/report.html"))


def test_an_impossible_slo_fails_the_run_and_names_it(default_service, tmp_path):
    done, rows = run_load_test(
        default_service, tmp_path, "--duration", "3s", "--slo-p99-ms", "0.01", "--tags", "resnet"
    )
    assert done.returncode == 1
    assert "SLO violated" in done.stderr and "p99" in done.stderr and "> SLO 0.01 ms" in done.stderr
    assert set(rows) == {"resnet v1", "resnet v2", "resnet v2-binary", "resnet grpc", "Aggregated"}


def test_help_lists_every_option_the_users_take_with_its_default():
    done = subprocess.run(
        [sys.executable, "-m", "load_tests", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option, default in (("--slo-p95-ms", "150.0"), ("--slo-p99-ms", "300.0"),
                            ("--slo-failure-ratio", "0.0"), ("--instances", "1")):  # fmt: skip
        assert re.search(rf"{option} \S+ [^-]*\(?(default: )?{re.escape(default)}\)", text), option
    for option in ("--model-weights", "--protocol-weights", "--api-key", "--grpc-target"):
        assert option in text


CASE = Case("mlp", "v1", "/v1/models/mlp:predict", [], instances=2, labels=("malignant", "benign"))


def response(body: bytes, status: int = 200, headers: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        status_code=status, content=body, text=body.decode(errors="replace"), headers=headers or {}
    )


def v1(probabilities, labels=("benign", "malignant")) -> bytes:
    rows = [
        {"label": lab, "index": int(np.argmax(p)), "probabilities": p}
        for p, lab in zip(probabilities, labels, strict=True)
    ]
    return json.dumps({"predictions": rows}).encode()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (v1([[0.1, 0.9], [0.8, 0.2]], ("benign", "malignant")), 200, None),
        (v1([[0.1, 0.9]], ("benign",)), 200, "shape [1, 2], expected [2, 2]"),
        (v1([[0.5, 0.9], [0.8, 0.2]], ("benign", "malignant")), 200, "not a distribution"),
        (v1([[0.1, 0.9], [0.8, 0.2]], ("malignant", "malignant")), 200, "not the most probable"),
        (b'{"error": "nope"}', 400, "HTTP 400"),
    ],
)
def test_a_200_with_a_wrong_body_is_a_failure(body, status, says):
    assert check(CASE, response(body, status)) == says or says in check(
        CASE, response(body, status)
    )


def test_binary_v2_responses_are_checked_byte_for_byte():
    case = Case("mlp", "v2-binary", "/v2/models/mlp/infer", [], instances=1, labels=("a", "b"))
    raw = np.array([[0.25, 0.75]], dtype="<f4").tobytes()
    header = json.dumps(
        {
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    good = response(header + raw, headers={BINARY_HEADER: str(len(header))})
    assert check(case, good) is None
    short = response(header + raw[:4], headers={BINARY_HEADER: str(len(header))})
    assert "binary_data_size 8 for 4 bytes" in check(case, short)


def test_payloads_are_the_repositorys_held_out_rows_in_each_protocol(exported):
    model = Served(exported, "mlp")
    assert served_models(exported) == NAMES
    np.testing.assert_array_equal(model.examples, held_out("mlp")[: len(model.examples)])
    rows = model.examples[:2]
    body, headers = request_body("v2-binary", rows, "7", model.manifest)
    length = int(headers[BINARY_HEADER])
    header = json.loads(body[:length])
    assert header["inputs"][0]["shape"] == [2, 30]
    assert header["inputs"][0]["name"] == model.manifest.inputs[0].name
    assert header["outputs"][0]["name"] == model.manifest.outputs[0].name
    assert np.array_equal(np.frombuffer(body[length:], "<f4").reshape(2, 30), rows)
    v1_body = request_body("v1", rows, "7", model.manifest)[0]
    assert json.loads(v1_body)["instances"] == rows.tolist()
    assert weights("mlp=3,resnet=0", ["mlp", "resnet"]) == {"mlp": 3, "resnet": 0}
    with pytest.raises(ValueError, match="NAME=INTEGER"):
        weights("vgg=1", ["mlp"])
