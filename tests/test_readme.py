"""The README, walked as a newcomer would: every `sh` and `python` block runs, in order, in a
copy of the repository (so nothing tracked changes), against the servers its `serve` blocks
start; each exits 0, answers no `{"error": ...}`, and the JSON answers the README prints match
what the service answers now.

A block says in its fence what the walk does with it: nothing (run it), `test=serve` (a
server: started in the background, ready before the next block, stopped at the next serve),
`test=needs:TOOL` (skipped where TOOL is missing) or `test=skip:REASON`. A block with
something else in its fence fails the walk, so none is left out by accident.
"""

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import requests
from helpers import REQUIRE_TOOLS, tool

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)(?:\s+test=(\S.*))?$")
PORTS = (8000, 8001)  # as the README writes them: HTTP, gRPC
READY_WITHIN = 180  # seconds; make serve with a repository in place takes about 15
BLOCK_WITHIN = 600


class Block(NamedTuple):
    line: int  # where it starts in README.md
    language: str
    marker: str  # "", "serve", "skip:REASON", "needs:TOOL"
    code: str

    def expected(self) -> list:
        """The JSON answers the block prints in its comments ("# {...}", continued on the next
        comment lines); a list ending in "..." stands for any list with that beginning."""
        docs, comment = [], []
        for line in [*self.code.splitlines(), ""]:
            if line.startswith("#"):
                comment.append(line.lstrip("#").strip())
                continue
            if comment:
                text = re.sub(r",\s*\.\.\.\]", ', "..."]', " ".join(comment))
                with contextlib.suppress(ValueError):  # prose, not an answer
                    docs.append(json.loads(text))
                comment = []
        return docs


def blocks(readme: str) -> list[Block]:
    found, current, start = [], None, 0
    for number, line in enumerate(readme.splitlines(), 1):
        if current is None:
            fence = FENCE.match(line)
            if fence and fence.group(1) in ("sh", "python"):
                current, start = (fence.group(1), fence.group(2) or ""), number
                lines: list[str] = []
        elif line.startswith("```"):
            found.append(Block(start, *current, "\n".join(lines) + "\n"))
            current = None
        else:
            lines.append(line)
    return found


def json_docs(text: str) -> list:
    """Every JSON object or array printed in `text`, in order (curl prints no newline)."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                doc, i = decoder.raw_decode(text, i)
                docs.append(doc)
                continue
            except ValueError:
                pass
        i += 1
    return docs


def matches(expected, actual) -> bool:
    """Equal, numbers within 1e-3 (or 1 %), and a list ending in "..." a prefix."""
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(expected[k], actual[k]) for k in expected)
        )
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return False
        if expected and expected[-1] == "...":
            expected, actual = expected[:-1], actual[: len(expected) - 1]
        return len(expected) == len(actual) and all(map(matches, expected, actual))
    if isinstance(expected, float | int) and not isinstance(expected, bool):
        return isinstance(actual, float | int) and math.isclose(
            actual, expected, rel_tol=1e-2, abs_tol=1e-3
        )
    return expected == actual


def errors(docs: list) -> list:
    return [doc for doc in docs if isinstance(doc, dict) and "error" in doc]


class Walk:
    """A copy of the repository with the session's trained runs and exported models in
    place (as `make serve` would leave them), and the servers the README starts."""

    def __init__(self, copy: Path, logs: Path) -> None:
        self.copy, self.logs = copy, logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
        self.server: subprocess.Popen | None = None

    def serve(self, block: Block) -> None:
        self.stop()
        log = (self.logs / f"serve-{block.line}.log").open("wb")
        self.server = subprocess.Popen(
            ["bash", "-c", block.code], cwd=self.copy, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + READY_WITHIN
        while not ready():
            assert self.server.poll() is None, f"README line {block.line}: the server exited"
            assert time.monotonic() < deadline, f"README line {block.line}: not ready"
            time.sleep(0.5)

    def run(self, block: Block) -> str:
        if block.language == "python":
            script = self.logs / f"block-{block.line}.py"
            script.write_text(block.code)
            command = [str(self.copy / ".venv" / "bin" / "python"), str(script)]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
        done = subprocess.run(
            command, cwd=self.copy, env=self.env, capture_output=True, text=True,
            timeout=BLOCK_WITHIN,
        )  # fmt: skip
        said = f"README line {block.line}:\n{block.code}\n{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, said
        return done.stdout

    def stop(self) -> None:
        """SIGTERM the server's process group, and wait until its ports are let go: make, also
        signalled, may exit before the service has drained."""
        if self.server is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.server.pid, signal.SIGTERM)
        try:
            self.server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        self.server = None
        deadline = time.monotonic() + 40
        while not all(map(bindable, PORTS)):
            assert time.monotonic() < deadline, f"ports {PORTS} still held after the server stopped"
            time.sleep(0.1)


def ready() -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{PORTS[0]}/v2/health/ready", timeout=2).ok
    except requests.ConnectionError:
        return False


def bindable(port: int) -> bool:
    """Nothing listens on the port (a draining server's listener drops connection attempts,
    so connecting would only time out)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def copy_checkout(into: Path) -> None:
    """What a clone has, plus what is not committed yet; modification times kept, so that make
    finds the shared .venv up to date."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    (into / ".venv").symlink_to(Path(sys.prefix))


def test_every_block_is_run_or_marked():
    markers = {block.marker.split(":")[0] for block in blocks((ROOT / "README.md").read_text())}
    assert markers <= {"", "serve", "skip", "needs"}, markers
    for block in blocks((ROOT / "README.md").read_text()):
        if block.marker.startswith(("skip", "needs")):
            assert block.marker.partition(":")[2], f"line {block.line}: say why, or which tool"


def test_the_walk_reads_answers_and_compares_them_as_it_should():
    block = Block(1, "sh", "", 'curl x  # says\n# {"a": [1.0, 0.5, ...],\n#  "b": "2"}\n')
    [expected] = block.expected()
    assert matches(expected, {"a": [1.0004, 0.5, 7], "b": "2"})
    assert not matches(expected, {"a": [1.1, 0.5], "b": "2"})
    assert not matches(expected, {"a": [1.0, 0.5], "b": "2", "c": 3})
    assert json_docs('{"a": 1}[2]wrote x/\n{"error": "no"}') == [{"a": 1}, [2], {"error": "no"}]


@pytest.mark.slow
def test_the_readme_runs_as_written(full_runs, exported, tmp_path):
    taken = [port for port in PORTS if not free(port)]
    if taken and not REQUIRE_TOOLS:
        pytest.skip(f"ports {taken} are in use (a make serve running?): the README uses them")
    assert not taken, f"ports {taken} are in use"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True)
    copy, logs = tmp_path / "tensorgate", tmp_path / "logs"
    copy.mkdir()
    logs.mkdir()
    copy_checkout(copy)
    runs, _ = full_runs
    shutil.copytree(runs, copy / "runs")
    shutil.copytree(exported, copy / "model_repository")
    walk, ran, skipped = Walk(copy, logs), 0, []
    try:
        for block in blocks((copy / "README.md").read_text()):
            kind, _, why = block.marker.partition(":")
            if kind == "skip" or (kind == "needs" and shutil.which(why) is None):
                if kind == "needs" and REQUIRE_TOOLS:
                    tool(why)  # fails: CI has every tool
                skipped.append(f"line {block.line}: {block.marker}")
                continue
            if kind == "serve":
                walk.serve(block)
            else:
                printed = json_docs(walk.run(block))
                assert not errors(printed), f"README line {block.line}: {errors(printed)}"
                for expected in block.expected():
                    assert any(matches(expected, doc) for doc in printed), (
                        f"README line {block.line} shows\n{expected}\nbut the service answered\n"
                        f"{printed}"
                    )
            ran += 1
    finally:
        walk.stop()
    print(f"ran {ran} README blocks; skipped {skipped}")
    assert ran >= 8
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True)
    assert after.stdout == status.stdout  # the walk changed nothing in the checkout
