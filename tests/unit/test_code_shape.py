"""The shape of the code itself: a deployed program that does not lean on its test harness
(short functions: tests/unit/test_component_shape.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.mock_engine import ROOT_DIR

# What `pulumi up` runs and what it ships (the Lambda package, the monitoring host's bundle).
DEPLOYED_FOLDERS = ("infra", "components", "scripts/lib", "scripts/dbops")


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("folder", DEPLOYED_FOLDERS)
def test_deployed_code_never_imports_the_harness(folder: str) -> None:
    offenders = [str(path.relative_to(ROOT_DIR)) for path in sorted((ROOT_DIR / folder).rglob("*.py"))
                 if any(m == "harness" or m.startswith("harness.") for m in _imported_modules(path))]
    assert offenders == []


def test_the_harness_lives_outside_what_is_deployed() -> None:
    from components.lambda_package import SOURCES
    from components.monitoring_render import bundle_files

    assert not (ROOT_DIR / "infra" / "mock_engine.py").exists()
    assert not any(source.startswith("harness") for source in SOURCES)
    assert not any(path.startswith("harness/") or "mock_engine" in path for path in bundle_files())
