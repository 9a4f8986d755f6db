"""The service as an operator meets it: SIGTERM drains, a killed worker hurts only its own
requests, a model that cannot load stops start-up, and one queue bound across HTTP processes.
Real servers on loopback, real signals, bounded loops."""

import asyncio
import concurrent.futures as cf
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import (
    Clients,
    artifact,
    children,
    direct,
    http_processes,
    ready,
    rows,
    serve,
    served,
    stop,
    v2_json,
)
from tritonclient.utils import InferenceServerException

from load_tests.payloads import request_body
from load_tests.servers import free_port, running_service

DRAIN_TIMEOUT = 10
MLP_BODY = json.dumps({"instances": rows("mlp", 2).tolist()}).encode()


async def keep_alive_clients(port: int, n: int, until: Callable[[], bool]) -> Counter:
    """`n` httpx clients of one keep-alive connection each, posting to mlp back to back (as a
    client library behind a load balancer does) until `until()`. Counted: a status code,
    "refused" (no connection, nothing sent) or "cut" (sent, but no whole answer)."""
    outcomes: Counter = Counter()
    tls = ssl.create_default_context()  # made once: httpx would make one per client

    async def client() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=30, verify=tls) as http:
            while not until():
                try:
                    r = await http.post(
                        f"http://127.0.0.1:{port}/v1/models/mlp:predict", content=MLP_BODY
                    )
                    outcomes[r.status_code] += 1
                except httpx.ConnectError:
                    outcomes["refused"] += 1
                    await asyncio.sleep(0.05)
                except httpx.HTTPError:
                    outcomes["cut"] += 1

    await asyncio.gather(*(client() for _ in range(n)))
    return outcomes


class SigtermAfter:
    """Load clients' `until`: SIGTERM the process `seconds` from now, then go on until it
    has exited."""

    def __init__(self, process: subprocess.Popen, seconds: float) -> None:
        self.process, self.at, self.sent = process, time.monotonic() + seconds, 0.0

    def until(self) -> bool:
        if not self.sent and time.monotonic() > self.at:
            self.sent = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
        return self.process.poll() is not None


def test_sigterm_under_keep_alive_clients_answers_every_request_sent(exported, tmp_path):
    """Ten SIGTERMs, each under 32 keep-alive clients sending back to back: every request
    that reached the server is answered (200, or 503 with Connection: close once the drain
    began); the others were refused before anything was sent."""
    for attempt in range(10):
        log = tmp_path / f"service-{attempt}.log"
        process, port = serve(exported, log, models="mlp", drain_timeout=DRAIN_TIMEOUT)
        try:
            sigterm = SigtermAfter(process, 1.0)
            outcomes = asyncio.run(keep_alive_clients(port, 32, sigterm.until))
            code = process.wait(timeout=DRAIN_TIMEOUT + 15)
            took = time.monotonic() - sigterm.sent
        finally:
            stop(process)
        text = log.read_text()
        assert code == 0, text
        assert took < DRAIN_TIMEOUT, (took, text)
        assert outcomes["cut"] == 0, (attempt, outcomes)
        assert set(outcomes) <= {200, 503, "refused"}, outcomes
        assert outcomes[200] > 100 and outcomes[503] > 0, outcomes
        assert re.search(r"drained: answered \d+ requests in [\d.]+ s", text), text
        assert not list((tmp_path / "tmp").glob("tensorgate-metrics-*"))  # removed at exit


def test_sigterm_under_grpc_load_answers_every_call_sent_and_exits_0(exported, tmp_path):
    """8 tritonclient.grpc clients call mlp back to back through a SIGTERM, backing off a
    second after a refusal: each call is answered, refused before it was admitted
    (UNAVAILABLE, "shutting down"), or could not connect once the server had gone; none is
    cut off."""
    grpc_port = free_port()
    settings = {"models": "mlp", "drain_timeout": DRAIN_TIMEOUT, "grpc_port": grpc_port}
    process, _ = serve(exported, tmp_path / "service.log", **settings)
    outcomes: Counter = Counter()
    stop_calls = threading.Event()
    x = rows("mlp", 2)

    def calls() -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        while not stop_calls.is_set():
            try:
                client.infer("mlp", [tensor], client_timeout=30)
                outcomes["ok"] += 1
            except InferenceServerException as e:
                message = e.message() or ""
                if "shutting down" in message:
                    outcomes["refused"] += 1
                    time.sleep(1.0)  # back off, as gRPC clients do on UNAVAILABLE
                elif "failed to connect" in message.lower():
                    outcomes["gone"] += 1  # nothing was sent
                    time.sleep(0.05)
                else:
                    outcomes[f"{e.status()}: {message}"] += 1

    threads = [threading.Thread(target=calls) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=DRAIN_TIMEOUT + 15)
        time.sleep(0.3)
    finally:
        stop_calls.set()
        for t in threads:
            t.join(timeout=30)
        stop(process)
    assert code == 0, (tmp_path / "service.log").read_text()
    assert set(outcomes) <= {"ok", "refused", "gone"}, outcomes
    assert outcomes["ok"] > 100, outcomes


def test_requests_running_at_sigterm_are_answered_and_late_ones_get_503_and_close(
    exported, tmp_path
):
    big = 16384  # resnet instances per request: a quarter of a second of compute or more
    settings = {"max_instances": big, "max_body_bytes": 8 << 20, "drain_timeout": DRAIN_TIMEOUT}
    process, port = serve(exported, tmp_path / "service.log", models="resnet", **settings)
    try:
        x = rows("resnet", big)
        body, headers = request_body("v2-binary", x, "slow", served(exported, "resnet").manifest)
        expected = direct(exported, "resnet", x)
        keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        keep_alive.request("GET", "/v2/health/live")
        assert keep_alive.getresponse().read() == b'{"live":true}'

        def slow() -> np.ndarray:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v2/models/resnet/infer", body, headers)
            response = conn.getresponse()
            content = response.read()
            assert response.status == 200, content[:200]
            length = int(response.headers["Inference-Header-Content-Length"])
            return np.frombuffer(content[length:], "<f4").reshape(big, 10)

        with cf.ThreadPoolExecutor(4) as pool:
            running = [pool.submit(slow) for _ in range(4)]
            time.sleep(0.5)  # all four are in: one computing, three queued behind it
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)  # the drain has begun; this keep-alive connection is still open
            keep_alive.request("POST", "/v2/models/resnet/infer", body, headers)
            late = keep_alive.getresponse()
            assert late.status == 503, late.read()[:200]
            assert late.headers["Connection"] == "close" and late.headers["Retry-After"] == "1"
            assert "shutting down" in json.loads(late.read())["error"]
            for future in running:
                np.testing.assert_allclose(future.result(), expected, atol=1e-5, rtol=0)
        assert process.wait(timeout=DRAIN_TIMEOUT + 15) == 0
    finally:
        stop(process)


def metric(port: int, name: str, **labels: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    total = 0.0
    for line in conn.getresponse().read().decode().splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_killed_worker_fails_only_its_requests_and_comes_back(exported, tmp_path):
    log = tmp_path / "service.log"
    process, port = serve(exported, log, models="mlp,resnet")
    try:
        found = re.search(
            r"model 'resnet' version 1: worker 0 serving \(pid (\d+)\)", log.read_text()
        )
        assert found, log.read_text()
        resnet_body = json.dumps({"instances": rows("resnet", 8).tolist()}).encode()
        mlp = Clients(port, "/v1/models/mlp:predict", MLP_BODY, {}, 4)
        resnet = Clients(port, "/v1/models/resnet:predict", resnet_body, {}, 4)
        time.sleep(1.0)
        killed = time.monotonic()
        os.kill(int(found.group(1)), signal.SIGKILL)
        while ready(port, "/v2/models/resnet/ready"):  # the kill takes effect
            assert time.monotonic() - killed < 2, "resnet still ready after its worker died"
            time.sleep(0.01)
        assert not ready(port) and ready(port, "/v2/models/mlp/ready")  # strict, as Triton
        while not ready(port, "/v2/models/resnet/ready"):
            assert time.monotonic() - killed < 15, log.read_text()
            time.sleep(0.05)
        back = time.monotonic() - killed
        time.sleep(1.0)
        mlp_outcomes, resnet_outcomes = mlp.join(), resnet.join()
        assert process.poll() is None, log.read_text()
        assert set(mlp_outcomes) == {200}, mlp_outcomes  # the other model never noticed
        assert set(resnet_outcomes) <= {200, 503} and resnet_outcomes[503] >= 1, resnet_outcomes
        slowest = max(answered - sent for sent, answered, _ in resnet.latencies)
        assert slowest < 2.0, slowest  # the dead worker's requests answered at once
        last = [outcome for sent, _, outcome in resnet.latencies if sent > killed + back]
        assert last and set(last) == {200}, last  # serving again
        assert metric(port, "tensorgate_worker_restarts_total", model="resnet") == 1
        assert metric(port, "tensorgate_worker_restarts_total", model="mlp") == 0
        assert "worker 0 (pid" in log.read_text() and "died with exit code -9" in log.read_text()
    finally:
        stop(process)


def test_a_killed_http_process_is_replaced_and_the_others_keep_serving(exported, tmp_path):
    """SIGKILL each HTTP process in turn under load: its in-flight requests are cut, the
    other answers, a new one is serving within 5 s, and what the dead one had admitted is let
    go (with the queue bound at the clients' number, a leak would answer 503)."""
    log = tmp_path / "service.log"
    process, port = serve(exported, log, models="mlp", api_servers=2, max_queue=8)
    try:
        clients = Clients(port, "/v1/models/mlp:predict", MLP_BODY, {}, 8)
        time.sleep(1.0)
        for kills, victim in enumerate(http_processes(process.pid), start=1):
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while len(now := http_processes(process.pid)) < 2 or victim in now:
                assert time.monotonic() - killed < 5, (now, log.read_text())
                time.sleep(0.05)
            back = time.monotonic() - killed
            time.sleep(1.0)
            after = [o for sent, _, o in clients.latencies if sent > killed + back]
            assert after and set(after) == {200}, Counter(after)
            assert metric(port, "tensorgate_http_restarts_total") == kills
            assert ready(port)
        outcomes = clients.join()
        assert process.poll() is None, log.read_text()
        assert set(outcomes) <= {200, "cut"} and outcomes["cut"] <= 16, outcomes
        assert "HTTP process 0 (pid" in log.read_text(), log.read_text()
    finally:
        stop(process)


def test_a_killed_main_process_leaves_no_process_behind_holding_the_port(exported, tmp_path):
    # kill -9 or the OOM killer, outside a container: the HTTP processes must not go on.
    log = tmp_path / "service.log"
    process, port = serve(exported, log, models="mlp", api_servers=2)
    try:
        left = children(process.pid)
        assert len(left) >= 3, left  # two HTTP processes and mlp's worker, at least
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 15
        while (alive := [pid for pid in left if Path(f"/proc/{pid}").exists()]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not alive, f"still running after the main process died: {alive}"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the service's group
            os.killpg(process.pid, signal.SIGKILL)


def test_a_model_that_cannot_load_stops_the_server_naming_it(exported, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(exported / "mlp", repository / "mlp")
    version = repository / "mlp" / "1"
    broken = b"not an ONNX graph"  # a file that passes its checksum but no runtime loads
    artifact(repository, "mlp").write_bytes(broken)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"]["onnx"].update(sha256=hashlib.sha256(broken).hexdigest(), bytes=len(broken))
    (version / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "TENSORGATE_REPOSITORY": str(repository)}
    env.update(TENSORGATE_PORT=str(free_port()), TENSORGATE_GRPC_PORT=str(free_port()))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 30
    assert "model 'mlp' version 1 could not be loaded" in result.stderr, result.stderr


def test_the_queue_bound_holds_across_http_processes(exported, tmp_path):
    bound, big = 3, 32768  # each request about half a second of resnet compute
    settings = {
        "api_servers": 2,
        "max_queue": bound,
        "max_instances": big,
        "max_body_bytes": 16 << 20,
    }
    with running_service(exported, tmp_path, models="resnet", **settings) as service:
        body, headers = request_body(
            "v2-binary", rows("resnet", big), "big", served(exported, "resnet").manifest
        )
        peak, done = [0.0], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(
                    peak[0], service.metric("tensorgate_inflight_requests", model="resnet")
                )
                time.sleep(0.01)

        def post(_: int):
            return service.post("/v2/models/resnet/infer", data=body, headers=headers)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with cf.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(12)))
        done.set()
        watcher.join()
        codes = Counter(r.status_code for r in answers)
        assert set(codes) == {200, 503}, codes
        assert codes[503] >= 12 - 2 * bound, codes
        assert 1 <= peak[0] <= bound, peak
        assert service.metric("tensorgate_queue_limit", model="resnet") == bound
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["Retry-After"] == "1"
        assert "across all HTTP processes" in refused.json()["error"]


def test_a_request_whose_client_left_is_not_computed(exported, tmp_path):
    big = 16384
    settings = {"max_instances": big, "max_body_bytes": 8 << 20}
    with running_service(exported, tmp_path, models="resnet", **settings) as service:
        manifest = served(exported, "resnet").manifest
        body, headers = request_body("v2-binary", rows("resnet", big), "slow", manifest)
        # the leaver's request is small, so that it is admitted at once, well ahead of the
        # backlog's end: a big one took long enough to upload and parse in a CI run that the
        # worker reached it before the cancel did
        small, small_headers = request_body("v2-binary", rows("resnet", 64), "small", manifest)
        port = int(service.url.rsplit(":", 1)[1])
        computed = service.metric("tensorgate_instances_total", model="resnet")

        def post():
            return service.post("/v2/models/resnet/infer", data=body, headers=headers)

        def in_flight() -> float:
            return service.metric("tensorgate_inflight_requests", model="resnet")

        def wait_for(condition, what: str) -> None:
            deadline = time.monotonic() + 10
            while not condition():
                assert time.monotonic() < deadline, what
                time.sleep(0.02)

        # One request of `big` at a time, about 0.2 s each here: the leaver starts once those
        # ahead are admitted, and must still find a backlog when its client leaves. With 6 it
        # found none once in a CI run on 2 busy cores (its upload and parse took the ~1 s that
        # the 5 left ahead needed), and was computed.
        n_ahead = 12
        with cf.ThreadPoolExecutor(n_ahead) as pool:
            ahead = [pool.submit(post) for _ in range(n_ahead)]

            def admitted() -> float:  # requests admitted so far: in flight or answered
                return in_flight() + sum(f.done() for f in ahead)

            wait_for(lambda: admitted() >= n_ahead, "the requests ahead were not admitted")
            leaver = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            leaver.request("POST", "/v2/models/resnet/infer", small, small_headers)
            # its request is admitted, queued behind those ahead, before its client leaves
            wait_for(lambda: admitted() > n_ahead, "the leaver's request was not admitted")
            leaver.sock.close()  # the client goes away
            waiting = sum(not f.done() for f in ahead)  # one computing, the others queued
            assert waiting >= 2, "no backlog left: the test proves nothing"
            assert all(f.result().status_code == 200 for f in ahead)
        wait_for(
            lambda: service.metric("tensorgate_rejections_total", reason="cancelled") >= 1,
            "the abandoned request was not cancelled",
        )
        assert service.metric("tensorgate_instances_total", model="resnet") - computed == (
            n_ahead * big
        )


def test_past_the_drain_deadline_what_is_left_answers_503(exported, tmp_path):
    big = 16384
    settings = {"max_instances": big, "max_body_bytes": 8 << 20, "drain_timeout": 1}
    process, port = serve(exported, tmp_path / "service.log", models="resnet", **settings)
    try:
        body, headers = request_body(
            "v2-binary", rows("resnet", big), "slow", served(exported, "resnet").manifest
        )

        def slow() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v2/models/resnet/infer", body, headers)
            response = conn.getresponse()
            return response.status, response.read()

        with cf.ThreadPoolExecutor(12) as pool:
            running = [pool.submit(slow) for _ in range(12)]  # seconds of queued compute
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            answers = [future.result() for future in running]
        assert process.wait(timeout=20) == 0
    finally:
        stop(process)
    codes = Counter(status for status, _ in answers)
    assert set(codes) == {200, 503}, codes
    late = next(content for status, content in answers if status == 503)
    assert "drain deadline of 1 s" in json.loads(late)["error"]


def test_two_workers_share_a_model_and_one_dying_leaves_the_other_serving(exported, tmp_path):
    log = tmp_path / "service.log"
    process, port = serve(exported, log, models="resnet", workers_per_device=2)
    try:
        pids = dict(
            re.findall(
                r"model 'resnet' version 1: worker (\d) serving \(pid (\d+)\)", log.read_text()
            )
        )
        assert set(pids) == {"0", "1"}, log.read_text()
        x = rows("resnet", 8)
        expected = direct(exported, "resnet", x)
        body = json.dumps({"instances": x.tolist()}).encode()
        clients = Clients(port, "/v1/models/resnet:predict", body, {}, 8)
        time.sleep(1.0)
        os.kill(int(pids["0"]), signal.SIGKILL)
        killed = time.monotonic()
        while ready(port, "/v2/models/resnet/ready"):
            assert time.monotonic() - killed < 2
            time.sleep(0.01)
        while not ready(port, "/v2/models/resnet/ready"):
            assert time.monotonic() - killed < 15, log.read_text()
            time.sleep(0.05)
        outcomes = clients.join()
        during = [o for sent, _, o in clients.latencies if killed + 0.5 < sent < killed + 2]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/models/resnet:predict", body)
        got = json.loads(conn.getresponse().read())["predictions"]
        # the statistics, which the killed worker was writing, still answer and still count
        conn.request("GET", "/v2/models/resnet/stats")
        (stats,) = json.loads(conn.getresponse().read())["model_stats"]
    finally:
        stop(process)
    assert set(outcomes) <= {200, 503} and outcomes[200] > 0, outcomes
    assert stats["inference_stats"]["success"]["count"] >= outcomes[200] + 1
    assert during and set(during) == {200}, during  # worker 1 served while 0 restarted
    probabilities = np.array([p["probabilities"] for p in got], np.float32)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)


def test_an_unload_under_load_answers_every_admitted_request(exported, tmp_path):
    """8 clients post to resnet while it is unloaded: each request is answered 200 (admitted
    before the unload) or 503 saying it is unloaded; none is cut or meets a stopped worker."""
    log = tmp_path / "service.log"
    process, port = serve(exported, log, models="resnet,mlp", model_control="explicit")
    try:
        body = json.dumps(v2_json(rows("resnet", 64))).encode()
        clients = Clients(port, "/v2/models/resnet/infer", body, {}, 8)
        time.sleep(1.0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v2/repository/models/resnet/unload")
        assert answer(conn) == 200
        deadline = time.monotonic() + 15
        while "model 'resnet' version 1: unloaded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        outcomes = clients.join()
        conn.request("POST", "/v2/repository/models/resnet/load")
        assert answer(conn) == 200
        conn.request("POST", "/v2/models/resnet/infer", body)
        assert answer(conn) == 200
    finally:
        stop(process)
    assert set(outcomes) == {200, 503} and outcomes[200] > 8, outcomes
    assert clients.errors and all("is unloaded" in e for e in clients.errors), clients.errors


def answer(conn: http.client.HTTPConnection) -> int:
    """The status of the answer to the request just sent, read whole."""
    response = conn.getresponse()
    response.read()
    return response.status
