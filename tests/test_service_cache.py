"""The response cache served (TENSORGATE_RESPONSE_CACHE): a repeat answered from shared memory
without a worker, by any protocol; a hot-loaded version starting cold; the bound under many
distinct inputs. The cache as a unit: test_cache.py."""

import shutil
import time

import numpy as np
from helpers import export_mlp, rows, served, v2_json

from load_tests.payloads import request_body
from load_tests.servers import running_service

BOUND = 65536  # mlp:64KiB, the least: a log of about 900 of mlp's records


def stats(service, version: int) -> dict:
    found = service.get(f"/v2/models/mlp/versions/{version}/stats").json()["model_stats"]
    return found[0]


def test_a_repeat_is_answered_from_the_cache_and_a_new_version_starts_cold(
    full_runs, exported, tmp_path
):
    runs, _ = full_runs
    repository = tmp_path / "repository"
    shutil.copytree(exported / "mlp", repository / "mlp")
    x = rows("mlp", 1)
    body, headers = request_body("v2-binary", x, "1", served(repository, "mlp").manifest)
    settings = {"response_cache": "mlp:64KiB", "model_control": "poll", "repository_poll": 0.5}
    with running_service(repository, tmp_path, **settings) as s:
        first = s.post("/v2/models/mlp/infer", data=body, headers=headers)
        second = s.post("/v2/models/mlp/infer", data=body, headers=headers)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content  # the same bytes
        v1 = s.post("/v1/models/mlp:predict", json={"instances": x.tolist()})
        assert v1.status_code == 200  # another protocol, the same record
        entry = stats(s, 1)
        assert entry["inference_count"] == 1  # computed once: the repeats never reached it
        cache = entry["inference_stats"]
        assert (cache["cache_hit"]["count"], cache["cache_miss"]["count"]) == (2, 1)
        assert 0 < cache["cache_hit"]["ns"] < 5e6 * 2  # under 5 ms a lookup
        assert s.metric("tensorgate_cache_requests_total", model="mlp", result="hit") == 2
        assert s.metric("tensorgate_cache_requests_total", model="mlp", result="miss") == 1

        version = export_mlp(runs, repository)  # the same weights, a new version
        deadline = time.monotonic() + 60
        while s.get("/v2/models/mlp").json()["versions"] != [str(version)]:
            assert time.monotonic() < deadline, "the new version did not take over"
            time.sleep(0.2)
        again = s.post("/v2/models/mlp/infer", json=v2_json(x))
        assert again.status_code == 200 and again.json()["model_version"] == str(version)
        cold = stats(s, version)["inference_stats"]
        assert (cold["cache_hit"]["count"], cold["cache_miss"]["count"]) == (0, 1)

        for i in range(2000):  # distinct inputs, far more than the bound holds
            xi = x + np.float32(i + 1) * np.float32(1e-3)
            b, h = request_body("v2-binary", xi, "d", served(repository, "mlp").manifest)
            assert s.post("/v2/models/mlp/infer", data=b, headers=h).status_code == 200
        held = s.metric("tensorgate_cache_bytes", model="mlp")
        assert 0 < held <= BOUND, held
