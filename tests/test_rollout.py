"""Canary and shadow traffic between versions of one model, served for real (logging in
JSON): mlp version 1, version 2 trained with another seed, and version 3 holding version 1's
files (the same model). Weights route the requests that name no version, a canary that
answers 5xx is rolled back, and a shadow's comparisons match what the two versions compute."""

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import INPUT_NAME, direct, rows, v2_json

from export.pipeline import export_model
from load_tests.servers import running_service

TRAFFIC = "/v2/repository/models/mlp/traffic"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rollout(exported, other_mlp, tmp_path_factory):
    repository = tmp_path_factory.mktemp("rollout-repository")
    shutil.copytree(exported / "mlp" / "1", repository / "mlp" / "1")
    export_model(other_mlp, repository, progress=False)  # 2
    same = repository / "mlp" / "3"  # version 1's files, as version 3
    shutil.copytree(repository / "mlp" / "1", same)
    manifest = json.loads((same / "manifest.json").read_text())
    (same / "manifest.json").write_text(json.dumps({**manifest, "version": 3}))
    settings = {
        "version_policy": "mlp:all",
        "model_control": "explicit",
        "traffic": "mlp:1=90,2=10",
        "shadow": "mlp:3@1",
        "canary_max_error_rate": 0.05,
        "canary_window": 5,
        "log_format": "json",
    }
    with running_service(repository, tmp_path_factory.mktemp("logs"), **settings) as service:
        yield service


def versions_answering(s, n: int, path: str = "/v2/models/mlp/infer") -> Counter:
    x = rows("mlp", 1)
    return Counter(s.post(path, json=v2_json(x)).json()["model_version"] for _ in range(n))


def test_the_settings_weights_and_shadow_are_served_from_the_start(rollout):
    traffic = rollout.get(TRAFFIC).json()
    assert traffic["weights"] == {"1": 90, "2": 10}
    assert traffic["routed"] == {"1": 0.9, "2": 0.1, "3": 0.0}
    assert traffic["shadow"]["version"] == "3" and traffic["shadow"]["fraction"] == 1.0
    assert rollout.metric("tensorgate_traffic_weight", model="mlp", version="2") == 0.1


def test_weights_split_unversioned_requests_and_a_named_version_is_never_rerouted(rollout):
    changed = rollout.post(TRAFFIC, json={"weights": {"1": 50, "2": 50}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["routed"] == {"1": 0.5, "2": 0.5, "3": 0.0}
    split = versions_answering(rollout, 200)
    assert set(split) == {"1", "2"} and 60 <= split["1"] <= 140, split  # 5.7 sd either way
    assert versions_answering(rollout, 20, "/v2/models/mlp/versions/2/infer") == {"2": 20}
    v1 = Counter(
        rollout.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 1).tolist()}).json()[
            "model_version"
        ]
        for _ in range(40)
    )
    assert set(v1) == {"1", "2"}, v1  # the odds of one version only: 2 in 10^12
    client = grpcclient.InferenceServerClient(rollout.grpc)
    tensor = grpcclient.InferInput(INPUT_NAME, [1, 30], "FP32")
    tensor.set_data_from_numpy(rows("mlp", 1))
    answered = Counter(
        client.infer("mlp", [tensor]).get_response().model_version for _ in range(40)
    )
    assert set(answered) == {"1", "2"}, answered
    assert rollout.metric("tensorgate_traffic_weight", model="mlp", version="1") == 0.5


def test_a_canary_answering_5xx_is_rolled_back_and_the_log_says_why(rollout):
    assert rollout.post(TRAFFIC, json={"weights": {"1": 80, "2": 20}}).status_code == 200
    time.sleep(1.5)  # the watch's first look: the start of version 2's window
    late = [
        rollout.post(
            "/v2/models/mlp/infer", json=v2_json(rows("mlp", 1)), headers={"Request-Timeout": "0"}
        ).status_code
        for _ in range(200)
    ]
    assert Counter(late) == {504: 200}  # a deadline already past: refused at admission
    deadline = time.monotonic() + 5
    while rollout.get(TRAFFIC).json()["weights"]["2"] != 0:
        assert time.monotonic() < deadline, rollout.get(TRAFFIC).json()
        time.sleep(0.2)
    traffic = rollout.get(TRAFFIC).json()
    assert traffic["weights"] == {"1": 80, "2": 0} and traffic["routed"]["2"] == 0
    assert traffic["rollback"].startswith("version 2: ") and "were 5xx" in traffic["rollback"]
    assert rollout.metric("tensorgate_traffic_weight", model="mlp", version="2") == 0
    assert rollout.metric("tensorgate_canary_rollbacks_total", model="mlp", version="2") == 1
    records = [json.loads(line) for line in rollout.log.read_text().splitlines()]  # all JSON
    [rolled] = [r for r in records if r["logger"] == "service.rollback"]
    assert rolled["level"] == "WARNING" and rolled["process"] == rollout.process.pid
    assert rolled["message"].startswith("model 'mlp' version 2 rolled back to weight 0: ")
    assert {r["logger"].split(".")[0] for r in records} >= {"service", "uvicorn", "litserve"}
    assert versions_answering(rollout, 50) == {"1": 50}


def settled(rollout) -> dict:
    """The shadow's summary once no copy is left waiting or in flight (two reads 0.2 s apart
    agree): copies of the requests a test sent before may still be counting."""
    deadline, last = time.monotonic() + 10, None
    while (now := rollout.get(TRAFFIC).json()["shadow"]) != last:
        assert time.monotonic() < deadline, now
        last = now
        time.sleep(0.2)
    return now


def shadowed(rollout, x: np.ndarray) -> dict:
    """Send each row as its own request; the shadow's counts once all are compared."""
    before = settled(rollout)
    for row in x:
        answer = rollout.post("/v2/models/mlp/infer", json=v2_json(row[None]))
        assert answer.json()["model_version"] == "1"  # the shadow never answers
    deadline = time.monotonic() + 10
    while True:
        after = rollout.get(TRAFFIC).json()["shadow"]
        results = ("agree", "disagree", "error", "dropped")
        counted = {k: after[k] - before[k] for k in results}
        if sum(counted.values()) == len(x) or time.monotonic() > deadline:
            return {**counted, "max_difference": after["max_difference"]}
        time.sleep(0.1)


def test_a_shadow_of_the_same_model_agrees_and_another_training_run_disagrees(rollout):
    x = np.random.default_rng(0).normal(size=(100, 30)).astype(np.float32) * 3
    assert rollout.post(TRAFFIC, json={"weights": {"1": 1}}).status_code == 200
    counted = shadowed(rollout, x)
    assert counted == {"agree": 100, "disagree": 0, "error": 0, "dropped": 0,
                       "max_difference": counted["max_difference"]}  # fmt: skip
    assert counted["max_difference"] < 1e-5

    change = {"shadow": {"version": 2, "fraction": 1.0}}
    assert rollout.post(TRAFFIC, json=change).json()["shadow"]["version"] == "2"
    repository = rollout.repository
    expected = direct(repository, "mlp", x, 1).argmax(1) != direct(repository, "mlp", x, 2).argmax(
        1
    )
    assert expected.sum() > 0  # inputs far from the data: the two training runs part ways
    counted = shadowed(rollout, x)
    assert (counted["disagree"], counted["agree"]) == (expected.sum(), 100 - expected.sum())
    assert counted["max_difference"] > 0.01
    metric = rollout.metric(
        "tensorgate_shadow_comparisons_total", model="mlp", version="2", result="disagree"
    )
    assert metric == expected.sum()


def test_the_dashboards_rollout_panels_read_metrics_the_service_exposes(rollout):
    dashboard = (ROOT / "deploy" / "grafana" / "dashboards" / "tensorgate.json").read_text()
    rollout_panels = [
        p for p in json.loads(dashboard)["panels"] if p["title"].startswith("Rollout")
    ]
    named = set(re.findall(r"\btensorgate_[a-z_]+\b", json.dumps(rollout_panels)))
    assert "tensorgate_shadow_comparisons_total" in named and len(rollout_panels) == 4
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in rollout.get("/metrics").text.splitlines()
        if line and not line.startswith("#")
    }
    assert named <= exposed, named - exposed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"weights": {"9": 1}}, "version 9 is not serving; serving: 1, 2, 3"),
        ({"weights": {"1": -1}}, "must be 0 to 1000000"),
        ({"weights": {"1": 0}}, "at least one weight must be above 0"),
        ({"weight": {"1": 1}}, "the body must be"),
        ({"shadow": {"version": 1, "fraction": 1}, "weights": {"1": 1}}, "is the shadow"),
        ({"shadow": {"version": 3, "fraction": 0}}, "above 0 and at most 1"),
        ([1], "the body must be"),
    ],
)
def test_a_bad_traffic_change_is_a_400_that_says_why(rollout, body, message):
    answer = rollout.post(TRAFFIC, json=body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_traffic_changes_only_in_explicit_model_control(service):
    traffic = service.get(TRAFFIC).json()
    assert traffic == {"weights": {}, "routed": {"1": 1.0}, "rollback": None, "shadow": None}
    refused = service.post(TRAFFIC, json={"weights": {"1": 1}})
    assert refused.status_code == 400 and "TENSORGATE_MODEL_CONTROL=explicit" in refused.text
