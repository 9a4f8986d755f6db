"""Which versions the service picks, from the repository alone."""

import json
import shutil

import pytest

from artifacts.manifest import MANIFEST_NAME, ManifestError
from service.repository import load_models
from service.settings import Settings


@pytest.fixture
def two_versions(exported, tmp_path):
    """mlp at versions 1 and 2 (a copy of 1 relabelled), resnet at 1."""
    repository = tmp_path / "repo"
    shutil.copytree(exported / "mlp", repository / "mlp")
    shutil.copytree(exported / "resnet", repository / "resnet")
    shutil.copytree(repository / "mlp" / "1", repository / "mlp" / "2")
    manifest = json.loads((repository / "mlp" / "2" / MANIFEST_NAME).read_text())
    manifest["version"] = 2
    (repository / "mlp" / "2" / MANIFEST_NAME).write_text(json.dumps(manifest))
    return repository


def test_the_highest_version_is_served_unless_pinned(two_versions):
    served = {m.name: m for m in load_models(Settings(repository=two_versions))}
    assert served["mlp"].version == 2
    assert served["resnet"].version == 1
    pinned = load_models(Settings(repository=two_versions, models="mlp:1"))
    assert [(m.name, m.version) for m in pinned] == [("mlp", 1)]


def test_settings_override_the_manifest_serving_section(two_versions):
    (model,) = load_models(
        Settings(
            repository=two_versions,
            models="resnet",
            backend="torchscript",
            max_batch_size=8,
            batch_timeout=0,
        )
    )
    assert (model.backend, model.max_batch_size, model.batch_timeout) == ("torchscript", 8, 0)
    assert model.artifact.name == "model.torchscript.pt"
    (model,) = load_models(Settings(repository=two_versions, models="resnet"))
    assert (model.backend, model.max_batch_size, model.batch_timeout) == ("onnxruntime", 64, 0.005)


@pytest.mark.parametrize(
    ("models", "says"),
    [
        ("vgg", "no complete version of model 'vgg'"),
        ("mlp:3", "version 3 is not in"),
    ],
)
def test_what_cannot_be_served_is_refused_by_name(two_versions, models, says):
    with pytest.raises(ManifestError, match=says):
        load_models(Settings(repository=two_versions, models=models))


def test_a_manifest_in_the_wrong_folder_is_refused(two_versions):
    shutil.copytree(two_versions / "mlp" / "1", two_versions / "mlp" / "3")  # says version 1
    with pytest.raises(ManifestError, match="manifest says mlp version 1, but it is in mlp/3"):
        load_models(Settings(repository=two_versions, models="mlp"))


def test_a_pinned_version_must_be_a_number():
    with pytest.raises(ValueError, match="version must be a number"):
        Settings(models="mlp:latest")


def test_a_batch_timeout_beyond_the_request_timeout_is_refused(two_versions):
    settings = Settings(repository=two_versions, models="mlp", batch_timeout=2, request_timeout=1)
    with pytest.raises(ManifestError, match="batch timeout 2 s must be below"):
        load_models(settings)


@pytest.mark.parametrize(
    ("policy", "mlp_versions"),
    [
        ("mlp:latest:2", [1, 2]),
        ("mlp:latest:5", [1, 2]),
        ("mlp:all", [1, 2]),
        ("mlp:specific:1", [1]),
        (None, [2]),
    ],
)
def test_the_version_policy_chooses_the_versions_served_side_by_side(
    two_versions, policy, mlp_versions
):
    served = load_models(Settings(repository=two_versions, version_policy=policy))
    assert [m.version for m in served if m.name == "mlp"] == mlp_versions
    assert [m.version for m in served if m.name == "resnet"] == [1]  # latest:1 by default
    assert len({m.key for m in served}) == len(served)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"version_policy": "mlp:latest"}, "expected MODEL:latest:N"),
        ({"version_policy": "mlp:newest:2"}, "expected MODEL:latest:N"),
        ({"version_policy": "mlp:specific"}, "expected MODEL:latest:N"),
        ({"version_policy": "mlp:all:2"}, "expected MODEL:latest:N"),
        ({"version_policy": "mlp:specific:1", "models": "mlp:1"}, "give one of them"),
    ],
)
def test_a_bad_version_policy_is_refused_with_the_forms_it_takes(settings, says):
    with pytest.raises(ValueError, match=says):
        Settings(**settings)


def test_a_policy_for_a_version_or_model_not_there_is_refused_by_name(two_versions):
    with pytest.raises(ManifestError, match="version 7 is not in"):
        load_models(Settings(repository=two_versions, version_policy="mlp:specific:1:7"))
    with pytest.raises(ManifestError, match="names vgg, which is not served"):
        load_models(Settings(repository=two_versions, version_policy="vgg:all"))
