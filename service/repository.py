"""Which model versions to serve, from the manifests alone, each verified before serving."""

from dataclasses import dataclass
from pathlib import Path

from artifacts.manifest import (
    Backend,
    Manifest,
    ManifestError,
    read_manifest,
    verify_files,
    versions,
)

from .engine.table import version_key
from .settings import Settings, VersionPolicy


@dataclass(frozen=True)
class ServedModel:
    """One served version of a model (a model may have several, by its version policy)."""

    name: str
    version: int
    path: Path  # the version folder
    manifest: Manifest
    policy: VersionPolicy
    backend: Backend
    max_batch_size: int
    batch_timeout: float

    @property
    def key(self) -> str:
        return version_key(self.name, self.version)

    @property
    def artifact(self) -> Path:
        return self.path / self.manifest.artifact(self.backend).path


def _select(repository: Path, name: str, policy: VersionPolicy) -> tuple[int, ...]:
    """The versions to serve, all of them in the repository."""
    available = tuple(versions(repository / name))
    if not available:
        raise ManifestError(
            f"{repository / name}: no complete version of model '{name}' "
            f"(export one with: python -m export --model {name})"
        )
    chosen = policy.select(available)
    missing = [v for v in chosen if v not in available]
    if missing:
        raise ManifestError(
            f"model '{name}' version {missing[0]} is not in {repository / name} "
            f"(versions there: {', '.join(map(str, available))})"
        )
    return chosen


def model_folders(repository: Path) -> list[str]:
    """The names of the model folders in the repository (hidden ones are not models)."""
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and p.name[0] != ".")


def load_models(settings: Settings) -> list[ServedModel]:
    """Resolve, read and sha256-verify every version to serve, by model then version; raise
    ManifestError naming the first problem, so a bad repository stops start-up instead of
    serving something wrong."""
    repository = settings.repository
    if not repository.is_dir():
        raise ManifestError(f"model repository {repository} does not exist (make export makes it)")
    pinned = settings.pinned
    if pinned is None:
        pinned = dict.fromkeys(model_folders(repository))
    if not pinned:
        raise ManifestError(f"model repository {repository} holds no models")
    unknown = sorted(set(settings.policies) - set(pinned))
    if unknown:
        raise ManifestError(
            f"TENSORGATE_VERSION_POLICY names {', '.join(unknown)}, which is not served "
            f"(served: {', '.join(pinned)})"
        )

    served = []
    for name in pinned:
        policy = settings.policy(name)
        served += [describe(settings, name, v, policy) for v in _select(repository, name, policy)]
    return served


def describe(
    settings: Settings, name: str, version: int, policy: VersionPolicy, verify: bool = True
) -> ServedModel:
    """A version as it will be served, from its manifest; `verify` checks every file's
    sha256 first (the main process does, before loading it; an HTTP process that learns of
    a version already loaded reads only the manifest)."""
    path = settings.repository / name / str(version)
    manifest = read_manifest(path)
    if (manifest.name, manifest.version) != (name, version):
        raise ManifestError(
            f"{path}: manifest says {manifest.name} version "
            f"{manifest.version}, but it is in {name}/{version}"
        )
    if verify:
        verify_files(path, manifest)
    serving = manifest.serving
    batch_timeout = (
        serving.batch_timeout if settings.batch_timeout is None else settings.batch_timeout
    )
    if batch_timeout >= settings.request_timeout:
        raise ManifestError(
            f"model '{name}': batch timeout {batch_timeout:g} s must be below "
            f"TENSORGATE_REQUEST_TIMEOUT ({settings.request_timeout:g} s)"
        )
    backend = settings.backend or serving.backend
    # a model without a dynamic batch axis takes one instance per call, whatever is set
    max_batch_size = (settings.max_batch_size or serving.max_batch_size) if manifest.batched else 1
    if manifest.artifact(backend) is None:
        raise ManifestError(
            f"{path}: no {backend} file (TENSORGATE_BACKEND); this version has "
            f"{', '.join(manifest.backends)} only"
        )
    return ServedModel(
        name=name,
        version=version,
        path=path,
        manifest=manifest,
        policy=policy,
        backend=backend,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
    )
