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

from .settings import Settings


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    path: Path  # the version folder
    manifest: Manifest
    available: tuple[int, ...]  # every complete version in the repository
    backend: Backend
    max_batch_size: int
    batch_timeout: float

    @property
    def artifact(self) -> Path:
        return self.path / self.manifest.artifact(self.backend).path


def _select(repository: Path, name: str, pinned: int | None) -> tuple[int, tuple[int, ...]]:
    available = tuple(versions(repository / name))
    if not available:
        raise ManifestError(
            f"{repository / name}: no complete version of model '{name}' "
            f"(export one with: python -m export --model {name})"
        )
    if pinned is None:
        return available[-1], available
    if pinned not in available:
        raise ManifestError(
            f"model '{name}' version {pinned} is not in {repository / name} "
            f"(versions there: {', '.join(map(str, available))})"
        )
    return pinned, available


def load_models(settings: Settings) -> list[ServedModel]:
    """Resolve, read and sha256-verify every model to serve; raise ManifestError naming the
    first problem, so a bad repository stops start-up instead of serving something wrong."""
    repository = settings.repository
    if not repository.is_dir():
        raise ManifestError(f"model repository {repository} does not exist (make export makes it)")
    pinned = settings.pinned_models()
    if pinned is None:
        names = sorted(p.name for p in repository.iterdir() if p.is_dir() and p.name[0] != ".")
        pinned = dict.fromkeys(names)
    if not pinned:
        raise ManifestError(f"model repository {repository} holds no models")

    served = []
    for name, pin in pinned.items():
        version, available = _select(repository, name, pin)
        path = repository / name / str(version)
        manifest = read_manifest(path)
        if (manifest.name, manifest.version) != (name, version):
            raise ManifestError(
                f"{path}: manifest says {manifest.name} version "
                f"{manifest.version}, but it is in {name}/{version}"
            )
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
        served.append(
            ServedModel(
                name=name,
                version=version,
                path=path,
                manifest=manifest,
                available=available,
                backend=settings.backend or serving.backend,
                max_batch_size=settings.max_batch_size or serving.max_batch_size,
                batch_timeout=batch_timeout,
            )
        )
    return served
