"""JSON text that remembers which line holds which value.

Terraform reports a diagnostic as a range in main.tf.json; this index turns the line back into
the path of the value (resource, Terraform type, label, attribute path) the diagnostic is about."""

from __future__ import annotations

import json
from typing import Any

Path = tuple[Any, ...]
INDENT = "  "


def dump_located(document: Any) -> tuple[str, dict[int, Path]]:
    """(text, {line number (1-based): path of the member or item that starts on it})."""
    lines: list[str] = []
    index: dict[int, Path] = {}

    def emit(value: Any, path: Path, prefix: str, depth: int, suffix: str) -> None:
        pad = INDENT * depth
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{prefix}{{")
            index[len(lines)] = path
            items = sorted(value.items())
            for i, (key, item) in enumerate(items):
                emit(item, (*path, key), f"{json.dumps(key)}: ", depth + 1, "," if i < len(items) - 1 else "")
            lines.append(f"{pad}}}{suffix}")
        elif isinstance(value, list) and value:
            lines.append(f"{pad}{prefix}[")
            index[len(lines)] = path
            for i, item in enumerate(value):
                emit(item, (*path, i), "", depth + 1, "," if i < len(value) - 1 else "")
            lines.append(f"{pad}]{suffix}")
        else:
            lines.append(f"{pad}{prefix}{json.dumps(value)}{suffix}")
            index[len(lines)] = path

    emit(document, (), "", 0, "")
    return "\n".join(lines) + "\n", index


def path_at(index: dict[int, Path], line: int) -> Path:
    """The path of the innermost value starting at or before `line`."""
    while line > 0 and line not in index:
        line -= 1
    return index.get(line, ())
