"""The repository format (artifacts/manifest.py) against real exported versions."""

import json
import shutil

import pytest
from helpers import NAMES

from artifacts.manifest import (
    ARTIFACTS,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    read_manifest,
    verify_files,
    versions,
)
from export.formats import INPUT_NAME, OUTPUT_NAME

ONNX_NAME = ARTIFACTS["onnxruntime"].file_name


@pytest.mark.parametrize("name", NAMES)
def test_manifest_round_trips_through_its_schema(exported, name):
    manifest = read_manifest(exported / name / "1")
    again = Manifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert manifest.name == name and manifest.version == 1
    assert manifest.inputs[0].name == INPUT_NAME and manifest.outputs[0].name == OUTPUT_NAME
    assert manifest.inputs[0].shape[0] == -1 and manifest.outputs[0].shape == [
        -1,
        len(manifest.labels),
    ]
    assert manifest.config == json.loads(json.dumps(manifest.config))  # plain JSON data
    assert {"torch", "onnx", "onnxruntime", "opset"} <= set(manifest.versions)


def test_a_manifest_that_breaks_the_schema_is_refused(exported, tmp_path):
    version = tmp_path / "mlp" / "1"
    shutil.copytree(exported / "mlp" / "1", version)
    raw = json.loads((version / MANIFEST_NAME).read_text())
    raw["labels"] = ["only-one", "two", "three"]  # the output has 2 columns
    (version / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="3 labels for an output of width 2"):
        read_manifest(version)
    raw["labels"], raw["files"]["onnx"]["path"] = ["a", "b"], "../../etc/passwd"
    (version / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=r"files\.onnx\.path"):
        read_manifest(version)
    (version / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="invalid manifest"):
        read_manifest(version)


def test_a_version_without_manifest_is_not_a_version(exported, tmp_path):
    shutil.copytree(exported / "mlp", tmp_path / "mlp")
    (tmp_path / "mlp" / "2").mkdir()  # e.g. an export killed half-way
    (tmp_path / "mlp" / ".staging-x").mkdir()
    assert versions(tmp_path / "mlp") == [1]
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "mlp" / "2")


def test_a_tampered_artifact_byte_is_detected_by_its_sha256(exported, tmp_path):
    version = tmp_path / "1"
    shutil.copytree(exported / "resnet" / "1", version)
    manifest = read_manifest(version)
    verify_files(version, manifest)  # untouched: passes
    data = bytearray((version / ONNX_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (version / ONNX_NAME).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"{ONNX_NAME}: sha256 [0-9a-f]{{64}} does not match"):
        verify_files(version, manifest)
    (version / ONNX_NAME).unlink()
    with pytest.raises(ManifestError, match=f"{ONNX_NAME}: missing"):
        verify_files(version, manifest)
