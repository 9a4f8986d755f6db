"""The data plane (service/dataplane.py) in process, no server: a real engine, real inference
workers serving on their sockets in threads (a model that doubles its input), and a model
repository of real manifests. Each test calls the data plane as a transport would."""

import asyncio
import time

import numpy as np
import pytest
from planes import KEY, MODEL, Plane, publish
from prometheus_client import REGISTRY

from service import control
from service.dataplane import status_label
from service.engine import Action, State
from service.errors import (
    BadRequest,
    ClientGone,
    NotFound,
    Retired,
    Timeout,
    Unauthorized,
    Unavailable,
)
from service.protocol import Decoded
from service.settings import Settings


@pytest.fixture
def plane(tmp_path):
    return Plane(tmp_path)


def run(coroutine):
    return asyncio.run(coroutine)


def decoder(rows: int = 2, calls: list | None = None):
    async def decode(sig):
        if calls is not None:
            calls.append(sig.version)
        return Decoded((np.ones((rows, 3), np.float32),))

    return decode


def requests_total(version: str, protocol: str, code: str) -> float:
    labels = {"model": MODEL, "version": version, "protocol": protocol, "code": code}
    return REGISTRY.get_sample_value("tensorgate_requests_total", labels) or 0.0


def test_an_unversioned_request_runs_on_the_highest_version_and_is_counted_once(plane):
    before = requests_total("2", "v2", "200")
    done = run(plane.plane.infer(MODEL, None, "v2", {}, decoder()))
    assert done.model.version == 2 and done.signature.version == 2
    np.testing.assert_allclose(done.outputs[0], np.full((2, 3), 2.2, np.float32))
    assert requests_total("2", "v2", "200") == before + 1
    (stats,) = plane.plane.statistics(MODEL, "2", {})
    assert stats["inference_stats"]["success"]["count"] == 1


def test_a_named_version_runs_on_that_version(plane):
    done = run(plane.plane.infer(MODEL, "1", "v1", {}, decoder(rows=1)))
    assert done.model.version == 1
    np.testing.assert_allclose(done.outputs[0], [[2.1, 2.1, 2.1]])


def test_a_version_retired_after_it_was_chosen_is_retried_on_the_one_serving_now(plane):
    """decode runs between choosing the version and admitting the request: retiring version
    2 there is the race a new version's roll-out makes."""
    calls: list[int] = []

    async def decode(sig):
        if not calls:
            plane.table.set_state(plane.slot(2), State.RETIRING)
        return await decoder(calls=calls)(sig)

    done = run(plane.plane.infer(MODEL, None, "v2", {}, decode))
    assert calls == [2, 1]  # decoded again for the version that computed it
    assert done.model.version == 1 and plane.workers[2].computed == 0


def test_a_named_version_retired_after_it_was_chosen_is_not_retried(plane):
    async def decode(sig):
        plane.table.set_state(plane.slot(2), State.RETIRING)
        return await decoder()(sig)

    with pytest.raises(Retired):
        run(plane.plane.infer(MODEL, "2", "v2", {}, decode))
    assert plane.workers[2].computed == 0


@pytest.mark.parametrize(
    ("name", "version", "says"),
    [
        ("nope", None, "unknown model 'nope'; served: doubler"),
        (MODEL, "3", "has no version '3'; served: 1, 2"),
    ],
)
def test_an_unknown_model_or_version_is_not_found_and_nothing_is_decoded(
    plane, name, version, says
):
    calls: list[int] = []
    with pytest.raises(NotFound, match=says):
        run(plane.plane.infer(name, version, "v2", {}, decoder(calls=calls)))
    assert calls == []


@pytest.mark.parametrize("version", ["x", "01", "0", "²", "1.0", " 1", "9" * 19, "9" * 5000])
def test_what_is_no_version_number_is_a_bad_request_naming_it(plane, version):
    calls: list[int] = []
    with pytest.raises(BadRequest, match="is not a version number"):
        run(plane.plane.infer(MODEL, version, "v2", {}, decoder(calls=calls)))
    with pytest.raises(BadRequest, match="without leading zeros"):
        run(plane.plane.model_ready(MODEL, version))
    assert calls == []


def test_with_a_key_set_the_key_is_checked_before_anything_else_and_counted_by_transport(
    tmp_path,
):
    keyed = Plane(tmp_path, api_key="s3cret")
    before = requests_total("2", "grpc", "UNAUTHENTICATED")
    calls: list[int] = []
    with pytest.raises(Unauthorized):
        run(keyed.plane.infer(MODEL, None, "grpc", {}, decoder(calls=calls)))
    assert calls == [] and requests_total("2", "grpc", "UNAUTHENTICATED") == before + 1
    with pytest.raises(Unauthorized):
        keyed.plane.model_metadata(MODEL, None, {})
    assert run(keyed.plane.model_status(MODEL)) == {"name": MODEL, "ready": True}  # a probe
    with pytest.raises(Unauthorized):
        run(keyed.plane.infer("nope", None, "v2", {}, decoder()))  # not a 404 naming models
    with pytest.raises(NotFound) as unknown:
        run(keyed.plane.model_ready("nope", None))  # open, and names nothing
    assert unknown.value.message == "unknown model 'nope'"
    with pytest.raises(NotFound, match="served: doubler"):
        keyed.plane.model_metadata("nope", None, KEY)
    done = run(keyed.plane.infer(MODEL, None, "grpc", KEY, decoder()))
    assert done.model.version == 2
    assert keyed.plane.model_metadata(MODEL, None, KEY)["versions"] == ["1", "2"]


def test_a_bad_request_is_counted_with_its_status_and_reason_and_never_reaches_a_worker(plane):
    async def bad(sig):
        raise BadRequest("input 'x' has shape [2]")

    before = requests_total("2", "v1", "400")
    rejected = (
        REGISTRY.get_sample_value(
            "tensorgate_rejections_total", {"model": MODEL, "reason": "bad_request"}
        )
        or 0.0
    )
    with pytest.raises(BadRequest):
        run(plane.plane.infer(MODEL, None, "v1", {}, bad))
    assert requests_total("2", "v1", "400") == before + 1
    assert (
        REGISTRY.get_sample_value(
            "tensorgate_rejections_total", {"model": MODEL, "reason": "bad_request"}
        )
        == rejected + 1
    )
    assert plane.workers[2].computed == 0


def test_non_finite_outputs_are_a_bad_request(plane):
    async def huge(sig):
        return Decoded((np.full((1, 3), 3e38, np.float32),))  # doubled: Inf

    with pytest.raises(BadRequest, match="non-finite outputs"):
        run(plane.plane.infer(MODEL, None, "v2", {}, huge))


def test_a_client_that_leaves_is_answered_client_gone(plane):
    async def left() -> None:
        return None  # gone at once

    plane.workers[2].predict = lambda inputs: time.sleep(0.3) or (inputs[0] * 2,)
    with pytest.raises(ClientGone):
        run(plane.plane.infer(MODEL, "2", "v2", {}, decoder(), gone=left))


def test_readiness_says_why_a_model_is_not_ready(plane):
    assert run(plane.plane.model_ready(MODEL, None)).ready
    assert run(plane.plane.server_ready()).ready
    for version in (1, 2):
        plane.table.set_state(plane.slot(version), State.FREE)
    plane.table.set_unloaded(MODEL, True)
    ready, why = run(plane.plane.model_ready(MODEL, None))
    assert not ready and "is unloaded; POST /v2/repository/models/doubler/load" in why
    with pytest.raises(Unavailable, match="is unloaded"):
        run(plane.plane.infer(MODEL, None, "v2", {}, decoder()))
    plane.engine.begin_drain()
    assert run(plane.plane.server_ready()) == (False, "not ready: the server is shutting down")


def test_requests_in_flight_count_every_version_with_workers(plane):
    cell = plane.engine._cell  # (slot, priority level, HTTP process) -> its count's index
    plane.engine.counts[cell(plane.slot(1), 1, 0)] = 3  # three admitted, not answered yet
    plane.engine.counts[cell(plane.slot(2), 2, 0)] = 2
    assert plane.plane.in_flight(MODEL) == 5
    plane.table.set_state(plane.slot(1), State.RETIRING)  # still answering what it admitted
    assert plane.plane.in_flight(MODEL) == 5
    plane.table.set_state(plane.slot(1), State.FREE)
    assert plane.plane.in_flight(MODEL) == 2


def test_metadata_config_and_model_list(plane):
    metadata = plane.plane.model_metadata(MODEL, "1", {})
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert metadata["platform"] == "onnxruntime_onnx"
    config = plane.plane.model_config(MODEL, None, {})
    assert config["max_batch_size"] == 64 and config["version_policy"] == {"all": {}}
    assert plane.plane.model_names({}) == [MODEL]


def test_the_repository_index_reports_each_versions_state(plane):
    plane.table.set_state(plane.slot(1), State.RETIRING)
    entries = run(plane.plane.repository_index(False, {}))
    assert [(e["version"], e["state"]) for e in entries] == [("1", "UNAVAILABLE"), ("2", "READY")]
    assert entries[0]["reason"] == "unloading: answering the requests it admitted"
    assert run(plane.plane.repository_index(True, {})) == [entries[1]]


def test_the_index_says_how_a_model_added_while_serving_is_served(plane, tmp_path):
    publish(tmp_path, 1, name="newcomer")
    entries = run(plane.plane.repository_index(False, {}))
    [new] = [e for e in entries if e["name"] == "newcomer"]
    assert new["state"] == "UNAVAILABLE"
    assert plane.settings.model_control == "explicit"
    assert new["reason"] == "not loaded yet: POST /v2/repository/models/newcomer/load loads it"
    pinned = Settings(repository=tmp_path, models=MODEL)
    entries = run(control.index([plane.models], pinned, False))
    assert [e["reason"] for e in entries if e["name"] == "newcomer"] == [
        "not served (TENSORGATE_MODELS)"
    ]


def test_control_refuses_a_model_not_in_the_repository_and_a_mode_not_explicit(plane):
    explicit = plane.settings.model_copy(update={"model_control": "explicit"})
    with pytest.raises(BadRequest, match="no such model in the repository"):
        run(control.load_or_unload(explicit, plane.engine, "other", Action.LOAD, known=False))
    assert "other" not in plane.table.models  # not named: nothing was asked
    poll = plane.settings.model_copy(update={"model_control": "poll"})
    with pytest.raises(BadRequest, match="the model control mode is poll"):
        run(control.load_or_unload(poll, plane.engine, MODEL, Action.LOAD, known=True))
    assert plane.table.pending(MODEL) is None  # nothing was asked of the main process


@pytest.mark.parametrize(
    ("transport", "error", "label"),
    [
        ("v2", None, "200"),
        ("grpc", None, "OK"),
        ("v1", Timeout("late"), "504"),
        ("grpc", Timeout("late"), "DEADLINE_EXCEEDED"),
        ("grpc", RuntimeError("a bug"), "INTERNAL"),
        ("v2", RuntimeError("a bug"), "500"),
    ],
)
def test_the_code_label_is_the_transports_own_status(transport, error, label):
    assert status_label(transport, error) == label
