"""Several versions of a model served at once, by the version policy, and explicit model
control unloading and loading a model while the others serve."""

import shutil
import time

import numpy as np
import tritonclient.http as httpclient
from helpers import direct, rows, uncertain_mlp_rows, v2_json

from export.pipeline import export_model
from load_tests.servers import running_service


def test_a_version_policy_serves_versions_side_by_side(exported, other_mlp, tmp_path):
    """mlp version 1 as exported, version 2 trained with another seed: latest:2 serves both,
    each with its own answers; the unversioned and V1 routes take the highest."""
    repository = tmp_path / "repository"
    shutil.copytree(exported / "mlp", repository / "mlp")
    export_model(other_mlp, repository, progress=False)
    x = uncertain_mlp_rows()
    expected = {v: direct(repository, "mlp", x, version=v) for v in (1, 2)}
    assert np.abs(expected[1] - expected[2]).max() > 1e-3  # the two versions differ
    with running_service(repository, tmp_path, version_policy="mlp:latest:2") as s:
        for v in (1, 2):
            answer = s.post(f"/v2/models/mlp/versions/{v}/infer", json=v2_json(x)).json()
            assert answer["model_version"] == str(v)
            got = np.array(answer["outputs"][0]["data"], np.float32).reshape(6, 2)
            np.testing.assert_allclose(got, expected[v], atol=1e-5, rtol=0)
            assert s.get(f"/v2/models/mlp/versions/{v}/ready").status_code == 200
            assert s.metric("tensorgate_model_info", model="mlp", version=str(v)) == 1
        latest = s.post("/v2/models/mlp/infer", json=v2_json(x)).json()
        assert latest["model_version"] == "2"
        v1 = s.post("/v1/models/mlp:predict", json={"instances": x.tolist()}).json()
        assert (v1["model_name"], v1["model_version"]) == ("mlp", "2")
        got = np.array([p["probabilities"] for p in v1["predictions"]], np.float32)
        np.testing.assert_allclose(got, expected[2], atol=1e-5, rtol=0)
        assert s.get("/v2/models/mlp").json()["versions"] == ["1", "2"]
        assert s.get("/v2/models/mlp/versions/3/ready").status_code == 404
        config = s.get("/v2/models/mlp/config").json()
        assert config["version_policy"] == {"latest": {"num_versions": 2}}
        stats = s.get("/v2/models/mlp/stats").json()["model_stats"]
        assert [(e["version"], e["inference_stats"]["success"]["count"]) for e in stats] == [
            ("1", 1),
            ("2", 3),  # its versioned route, the unversioned one and V1
        ]
        export_model(other_mlp, repository, progress=False)
        time.sleep(1.5)  # three supervisor rounds: with model control none nothing changes
        index = s.post("/v2/repository/index").json()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            ("mlp", "1", "READY"),
            ("mlp", "2", "READY"),
            ("mlp", "3", "UNAVAILABLE"),  # exported after start: no hot loading yet
        ]
        assert "restart" in index[2]["reason"]
        for v, count in (("1", 1), ("2", 3)):
            assert (
                s.metric("tensorgate_requests_total", model="mlp", version=v, code="200") == count
            )


def test_explicit_model_control_unloads_and_loads_a_model_the_others_untouched(exported, tmp_path):
    settings = {"model_control": "explicit", "api_key": "s3cret"}
    with running_service(exported, tmp_path, **settings) as s:
        key = {"Authorization": "Bearer s3cret"}
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        assert s.post("/v2/repository/models/resnet/unload").status_code == 401  # the key
        client.unload_model("resnet", headers=key)
        body = v2_json(rows("resnet", 2))
        refused = s.post("/v2/models/resnet/infer", json=body, headers=key)
        assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
        assert s.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 1).tolist()},
                      headers=key).status_code == 200  # fmt: skip
        assert s.get("/v2/health/ready").status_code == 200  # the loaded models are ready
        assert s.get("/v2/models/resnet/ready").status_code == 503
        deadline = time.monotonic() + 15
        while "model 'resnet' version 1: unloaded" not in s.log.read_text():
            assert time.monotonic() < deadline, s.log.read_text()
            time.sleep(0.1)
        index = {e["name"]: e for e in client.get_model_repository_index(headers=key)}
        assert (index["resnet"]["state"], index["resnet"]["reason"]) == ("UNAVAILABLE", "unloaded")
        assert index["mlp"]["state"] == "READY"
        client.load_model("resnet", headers=key)  # returns once it is ready again
        assert client.is_model_ready("resnet", headers=key)
        again = s.post("/v2/models/resnet/infer", json=body, headers=key)
        assert again.status_code == 200, again.text
        unknown = s.post("/v2/repository/models/vgg/load", headers=key)
        assert (
            unknown.status_code == 400
            and "no such model in the repository" in unknown.json()["error"]
        )


def test_without_explicit_model_control_load_and_unload_are_refused(service):
    refused = service.post("/v2/repository/models/mlp/unload")
    assert (
        refused.status_code == 400
        and "TENSORGATE_MODEL_CONTROL=explicit" in refused.json()["error"]
    )
    assert service.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 1).tolist()}).ok
