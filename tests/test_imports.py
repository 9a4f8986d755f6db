"""Imports follow the data (DESIGN.md): training -> export -> service, with the artifact
layer shared by export and service and importing neither; the load tests speak HTTP and
read the repository. Read from each module's syntax tree, so a lazy import counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the top-level project packages it must never import
FORBIDDEN = {
    "artifacts": {"training", "export", "service", "load_tests", "benchmarks"},
    "export": {"service", "load_tests", "benchmarks"},
    "service": {"training", "export", "load_tests", "benchmarks"},
    "load_tests": {"training", "export", "benchmarks"},
    "training": {"export", "service", "load_tests", "benchmarks", "artifacts"},
}


def imported(path: Path, top_level_only: bool = False) -> set[str]:
    """The top-level package names of the absolute imports in a file (or only of those at
    module level)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_against_the_data_flow(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {
        str(f.relative_to(ROOT)): sorted(imported(f) & FORBIDDEN[package])
        for f in files
        if imported(f) & FORBIDDEN[package]
    }
    assert not wrong, wrong


def test_torch_is_imported_on_the_serving_path_only_inside_the_torchscript_runtime():
    """The HTTP processes and ONNX Runtime workers do without torch's ~180 MB."""
    for f in [*(ROOT / "service").rglob("*.py"), *(ROOT / "artifacts").rglob("*.py")]:
        assert "torch" not in imported(f, top_level_only=True), f
