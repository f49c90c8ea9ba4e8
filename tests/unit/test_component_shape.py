"""The shape of the program's code: functions stay short (infra/, components/, harness/), and
every component's Args dataclass says what each field is.

The length rule reads the source with `ast` (a function's lines from `def` to its last line,
decorators excluded, nested functions counted inside their parent as well as on their own).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 60
# The folders the rule covers: the program, its components and the harness.
CHECKED_DIRS = ["components", "infra", "harness"]


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`file:line name (N lines)` for every function of `path` longer than `limit` lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append(f"{shown(path)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("folder", CHECKED_DIRS)
def test_no_function_is_longer_than_the_limit(folder: str) -> None:
    too_long = [entry for path in python_files(folder) for entry in long_functions(path)]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(too_long)


def test_the_length_rule_names_a_long_function(tmp_path: Path) -> None:
    # The checker itself: a function one line over the limit is reported by name, one at the
    # limit is not.
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def at_limit():\n{body}\n\n\ndef over_limit():\n{body}\n    return x0\n", encoding="utf-8")
    assert long_functions(sample) == [f"sample.py:{MAX_FUNCTION_LINES + 3} over_limit ({MAX_FUNCTION_LINES + 1} lines)"]


# --- Args dataclasses document their fields ----------------------------------------------------

def comment_lines(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def undocumented_fields(path: Path) -> list[str]:
    """Fields of the file's `*Args` classes with no comment on their own line(s) and no
    comment line directly above them."""
    source = path.read_text(encoding="utf-8")
    comments = comment_lines(source)
    lines = source.splitlines()
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ClassDef) and node.name.endswith("Args")):
            continue
        for field in node.body:
            if not isinstance(field, ast.AnnAssign) or not isinstance(field.target, ast.Name):
                continue
            above = field.lineno - 1
            documented = any(line in comments for line in range(field.lineno, (field.end_lineno or field.lineno) + 1)) \
                or (above in comments and lines[above - 1].strip().startswith("#"))
            if not documented:
                missing.append(f"{shown(path)}:{field.lineno} {node.name}.{field.target.id}")
    return missing


def args_classes() -> list[Path]:
    return [p for p in python_files("components") if "Args:" in p.read_text(encoding="utf-8")]


def test_component_args_are_found() -> None:
    names = {p.name for p in args_classes()}
    assert {"dbops.py", "api_hosts.py", "monitoring.py", "network.py", "storage.py", "waf.py"} <= names


@pytest.mark.parametrize("path", args_classes(), ids=lambda p: p.name)
def test_every_args_field_is_documented(path: Path) -> None:
    missing = undocumented_fields(path)
    assert not missing, "Args fields without a comment (what it is, units, where it comes from): " + "; ".join(missing)
