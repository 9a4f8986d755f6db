"""Lifecycle.step (service/lifecycle.py), the main process's controller, as a unit: a real
version table and model repository, and a stand-in for the server's four operations that
records what the controller asked and answers `progress` as the test says."""

import asyncio
import re

import pytest
from planes import MODEL, publish

from service.engine import Action, StartupError, State, VersionTable
from service.lifecycle import Lifecycle
from service.settings import Settings, VersionPolicy


class Server:
    """EngineServer's controller-facing side: place, progress, discard, retire."""

    def __init__(self, table: VersionTable) -> None:
        self.table = table
        self.placed: list[tuple[int, int]] = []  # (version, slot)
        self.retired: list[int] = []
        self.discarded: list[int] = []
        self.outcome: bool | str = False  # progress: ready, not yet, or this failure

    def place(self, api) -> None:
        served, slot = api
        self.placed.append((served.version, slot))

    def progress(self, slot: int) -> bool:
        if isinstance(self.outcome, str):
            raise StartupError(self.outcome)
        return self.outcome

    def discard(self, slot: int) -> None:
        self.discarded.append(slot)
        self.table.set_state(slot, State.FREE)

    def retire(self, slot: int) -> None:
        self.retired.append(slot)
        self.table.set_state(slot, State.RETIRING)


@pytest.fixture
def serving(tmp_path):
    """Version 1 serving, under `mode`'s model control."""

    def make(mode: str):
        publish(tmp_path, 1)
        settings = Settings(repository=tmp_path, model_control=mode)
        table = VersionTable([MODEL])
        table.set_state(table.claim(MODEL, 1), State.SERVING)
        policies = {MODEL: VersionPolicy("latest")}
        lifecycle = Lifecycle(settings, table, policies, lambda m, s: (m, s), {MODEL: (1,)})
        lifecycle.next_poll = 0  # the first step polls
        return lifecycle, table, Server(table)

    return make


def states(table: VersionTable) -> dict[int, State]:
    return {s.version: s.state for s in table.slots()}


def test_a_new_version_takes_over_only_once_ready_and_then_the_old_one_retires(serving, tmp_path):
    lifecycle, table, server = serving("poll")
    publish(tmp_path, 2)
    lifecycle.step(server)
    assert [v for v, _ in server.placed] == [2]
    assert states(table) == {1: State.SERVING, 2: State.LOADING}
    lifecycle.step(server)  # still warming up: nothing changes
    assert states(table) == {1: State.SERVING, 2: State.LOADING} and server.retired == []
    server.outcome = True
    lifecycle.step(server)
    assert states(table) == {1: State.RETIRING, 2: State.SERVING}


def test_a_version_that_fails_to_load_never_replaces_the_serving_one(serving, tmp_path):
    lifecycle, table, server = serving("poll")
    publish(tmp_path, 2)
    lifecycle.step(server)
    server.outcome = "its inference worker died"
    lifecycle.step(server)
    assert server.discarded == [server.placed[0][1]]
    assert states(table) == {1: State.SERVING}
    assert table.failure(MODEL) == (2, "its inference worker died")
    lifecycle.next_poll = 0
    lifecycle.step(server)  # its files have not changed: not tried again
    assert len(server.placed) == 1


def test_a_tampered_version_is_refused_and_clients_read_no_path_or_digest(serving, tmp_path):
    lifecycle, table, server = serving("poll")
    publish(tmp_path, 2)
    (tmp_path / MODEL / "2" / "model.onnx").write_bytes(b"tampered")
    lifecycle.step(server)
    assert server.placed == [] and states(table) == {1: State.SERVING}
    version, reason = table.failure(MODEL)
    assert version == 2 and reason.startswith("doubler/2/model.onnx: sha256 <sha256> does not")
    assert str(tmp_path) not in reason and not re.search(r"[0-9a-f]{64}", reason)


def test_in_none_mode_the_repository_is_not_read_again(serving, tmp_path):
    lifecycle, table, server = serving("none")
    publish(tmp_path, 2)
    lifecycle.step(server)
    assert server.placed == [] and states(table) == {1: State.SERVING}


def test_an_explicit_unload_retires_every_version_and_answers(serving):
    lifecycle, table, server = serving("explicit")
    request = table.ask(MODEL, Action.UNLOAD)
    lifecycle.step(server)
    assert states(table) == {1: State.RETIRING} and table.is_unloaded(MODEL)
    assert asyncio.run(table.outcome(MODEL, request, timeout=0)) == (True, "")


def test_the_settings_weights_and_shadow_are_in_the_table_before_anything_serves(tmp_path, caplog):
    settings = Settings(
        repository=tmp_path, traffic=f"{MODEL}:1=3,2=1,absent:1=1", shadow=f"{MODEL}:3@0.5"
    )
    table = VersionTable([MODEL])
    Lifecycle(settings, table, {MODEL: VersionPolicy("latest")}, lambda m, s: (m, s), {MODEL: ()})
    assert table.weights(MODEL) == {1: 3, 2: 1}
    assert table.shadow(MODEL) == (3, 0.5)
    assert "names model 'absent', which is not served" in caplog.text


def test_a_folder_the_table_cannot_name_is_logged_once_not_every_poll(serving, tmp_path, caplog):
    lifecycle, table, server = serving("poll")
    publish(tmp_path, 1, name="m" * 200)  # longer than a model name may be
    for _ in range(3):
        lifecycle.next_poll = 0
        lifecycle.step(server)
    assert caplog.text.count("not served: model name") == 1
    assert table.models == [MODEL]
