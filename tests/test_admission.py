"""Deadlines and priorities on the real service: tritonclient's `timeout=` and `priority=` over
HTTP and gRPC, the Request-Timeout and Inference-Priority headers, and what they do under
overload (resnet's 64-instance requests, about 1.5 ms of compute each, from more clients than
one worker keeps up with). The pure rules are in test_admission_rules.py."""

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import Clients, direct, rows, served
from tritonclient.utils import InferenceServerException

from load_tests.payloads import request_body
from load_tests.servers import running_service

PATH = "/v2/models/resnet/infer"
INSTANCES = 256  # per request: about 6 ms of resnet on one core (4 device calls of 64)
DEADLINE = 0.020  # seconds: the 20 ms
MARGIN = 0.015  # seconds past the deadline a client may see its answer (measured: up to 7 ms)
LATE_SHARE = 0.05  # computed, but its batch ended past its deadline (measured: 2-4%)


def port_of(service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def inference_count(service) -> int:
    (entry,) = service.get("/v2/models/resnet/stats").json()["model_stats"]
    return entry["inference_count"]


def load(service, headers: dict, clients: int) -> Clients:
    body, base = request_body(
        "v2-binary", rows("resnet", INSTANCES), "load", served_manifest(service)
    )
    return Clients(port_of(service), PATH, body, {**base, **headers}, clients)


def served_manifest(service):
    return served(service.repository, "resnet").manifest


def seconds(clients: Clients, outcome: object) -> list[float]:
    return sorted(done - sent for sent, done, got in clients.latencies if got == outcome)


def test_tritonclient_sends_priority_and_timeout_over_http_and_grpc_unchanged(exported, tmp_path):
    x = rows("resnet", 4)
    expected = direct(exported, "resnet", x)
    with running_service(exported, tmp_path, models="resnet", priority_levels="2") as service:
        config = service.get("/v2/models/resnet/config").json()["dynamic_batching"]
        assert (config["priority_levels"], config["default_priority_level"]) == (2, 2)
        http = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(service.grpc)
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            tensor = module.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            answer = client.infer("resnet", [tensor], priority=1, timeout=5_000_000)
            np.testing.assert_allclose(
                answer.as_numpy("probabilities"), expected, rtol=1e-4, atol=1e-5
            )
            with pytest.raises(InferenceServerException, match=r"priority 3 is beyond"):
                client.infer("resnet", [tensor], priority=3)
            with pytest.raises(InferenceServerException, match=r"timeout of 0\.001 ms"):
                client.infer("resnet", [tensor], timeout=1)  # one microsecond: refused
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match=r"Deadline Exceeded|timeout"):
            grpc.infer("resnet", [tensor], client_timeout=1e-6)  # gRPC's own deadline
        assert service.metric("tensorgate_rejections_total", reason="deadline") >= 2


def test_the_headers_set_a_deadline_and_a_priority_and_bad_ones_answer_400(exported, tmp_path):
    body = {"instances": rows("resnet", 2).tolist()}
    with running_service(exported, tmp_path, models="resnet", priority_levels="3:2") as service:
        ok = service.post(
            "/v1/models/resnet:predict", json=body, headers={"Inference-Priority": "1"}
        )
        assert ok.status_code == 200, ok.text
        late = service.post(
            "/v1/models/resnet:predict", json=body, headers={"Request-Timeout": "0"}
        )
        assert late.status_code == 504 and "not queued" in late.json()["error"], late.text
        for header, value, says in (
            ("Request-Timeout", "soon", "Request-Timeout must be a number of seconds"),
            ("Request-Timeout", "-1", "Request-Timeout must be a number of seconds"),
            ("Request-Timeout", "inf", "Request-Timeout must be a number of seconds"),
            ("Inference-Priority", "high", "Inference-Priority must be a non-negative integer"),
            ("Inference-Priority", "4", "priority 4 is beyond model 'resnet''s 3 levels"),
        ):
            bad = service.post("/v1/models/resnet:predict", json=body, headers={header: value})
            assert bad.status_code == 400 and says in bad.json()["error"], (header, bad.text)
        v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                          "data": [0.0] * 64}], "parameters": {"timeout": "soon"}}  # fmt: skip
        bad = service.post(PATH, json=v2)
        assert bad.status_code == 400 and 'parameter "timeout"' in bad.json()["error"], bad.text
        assert service.get("/v2/health/ready").status_code == 200


def test_under_overload_a_deadline_is_kept_and_nothing_expired_is_computed(exported, tmp_path):
    """Two clients without a deadline keep resnet's worker busy (a queue about one deadline
    deep); four more send the same requests with Request-Timeout 0.02. Each of those is
    answered by its deadline plus MARGIN, 200 or 504, and the worker computes the instances
    answered 200 and, at most, those of the few whose batch had started in time but finished
    late (LATE_SHARE of those answered 200)."""
    with running_service(exported, tmp_path, models="resnet", api_servers=1) as service:
        computed = inference_count(service)
        plain = load(service, {}, 2)
        timed = load(service, {"Request-Timeout": str(DEADLINE)}, 4)
        time.sleep(4)
        timed.join()
        plain.join()
        answered = plain.outcomes[200] + timed.outcomes[200]
        late = (inference_count(service) - computed) / INSTANCES - answered
        took = np.array(seconds(timed, 200) + seconds(timed, 504))
        p50, p99, worst = np.percentile(took, [50, 99, 100])
        print(f"\nRequest-Timeout {DEADLINE * 1e3:g} ms: {dict(timed.outcomes)}; answered in "
              f"p50 {p50 * 1e3:.1f}, p99 {p99 * 1e3:.1f}, max {worst * 1e3:.1f} ms; computed "
              f"but late: {late:g}; no deadline: {dict(plain.outcomes)}")  # fmt: skip
        assert set(plain.outcomes) == {200}, plain.outcomes
        assert timed.outcomes[200] > 0 and timed.outcomes[504] > 0, timed.outcomes
        assert set(timed.outcomes) == {200, 504}, timed.outcomes
        assert worst <= DEADLINE + MARGIN, worst
        assert 0 <= late <= LATE_SHARE * timed.outcomes[200], (late, timed.outcomes)
        rejected = service.metric("tensorgate_rejections_total", reason="deadline")
        assert rejected == timed.outcomes[504]


def test_urgent_requests_keep_their_idle_latency_while_a_lower_level_saturates(exported, tmp_path):
    """resnet with two levels, the default the lower: sixteen clients of level 2 keep a queue
    about 100 ms deep, and one client of level 1 is answered about as fast as on an idle
    service (p99 within 2x, measured in this run), ahead of them."""
    with running_service(exported, tmp_path, models="resnet", priority_levels="2") as service:
        idle = load(service, {"Inference-Priority": "1"}, 1)
        time.sleep(2)
        idle.join()
        low = load(service, {}, 16)
        time.sleep(1)  # the queue fills
        urgent = load(service, {"Inference-Priority": "1"}, 1)
        time.sleep(3)
        urgent.join()
        low.join()
        p99 = {name: np.percentile(seconds(c, 200), 99) for name, c in
               (("idle", idle), ("urgent", urgent), ("low", low))}  # fmt: skip
        print("\np99 ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in p99.items()))
        assert set(low.outcomes) == set(urgent.outcomes) == {200}, (low.outcomes, urgent.outcomes)
        assert np.median(seconds(low, 200)) > 3 * p99["idle"], "the low level did not saturate"
        assert p99["urgent"] <= 2 * p99["idle"], p99
