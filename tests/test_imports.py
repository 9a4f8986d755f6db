"""Imports follow the data (docs/layout.md): training -> export -> service, with the artifact
layer shared by export and service and importing neither; the load tests speak HTTP and
read the repository; the serving engine knows arrays and processes, not the web framework.
Read from each module's syntax tree, so a lazy import counts too."""

import ast
import subprocess
import sys
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


WEB = {"fastapi", "starlette"}


def service_imports(path: Path) -> set[Path]:
    """The service's own modules a file imports relatively (`from ..errors import ...`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = (node.module or "").split(".")
            target = base.joinpath(*parts) if node.module else base
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            if not node.module:  # `from . import x`: x is a module
                candidates = [base / f"{a.name}.py" for a in node.names]
            found |= {c for c in candidates if c.exists()}
    return found


def test_the_engine_and_every_service_module_it_imports_import_no_web_framework():
    """Followed through relative imports. (LitServe, which lit.py imports, is built on
    FastAPI itself: the engine's own code is what stays free of it.)"""
    engine = ROOT / "service" / "engine"
    seen, todo = set(), set(engine.glob("*.py"))
    while todo:
        path = todo.pop()
        seen.add(path)
        todo |= service_imports(path) - seen
    assert ROOT / "service" / "errors.py" in seen  # the walk follows relative imports
    wrong = {str(p.relative_to(ROOT)): sorted(imported(p) & WEB) for p in seen if imported(p) & WEB}
    assert not wrong, wrong


def test_the_settings_load_no_prometheus_client_before_the_metrics_folder_is_set():
    """prometheus_client picks multiprocess mode when first imported: `python -m service`
    parses its settings before it sets PROMETHEUS_MULTIPROC_DIR, and an HTTP process forked
    from a main process that had imported it too early would count in memory, unseen."""
    code = "import sys, service.settings; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr
