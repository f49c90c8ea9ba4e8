"""Metrics for node_exporter's textfile collector, written atomically.

node_exporter may read the directory at any moment, so a file is written next to its final
name and renamed over it: a scrape sees the old file or the new one, never half of one.

A run that fails must not erase what the last successful run recorded (the "no successful
backup for 26 hours" alert measures from it), so `update_metrics` keeps the values of the
existing file for every metric the caller does not set.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)(?:\s+\d+)?\s*$")


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str


def read_values(path: Path) -> dict[str, float]:
    """Unlabelled samples of an existing textfile; a missing or unreadable file yields {}."""
    values: dict[str, float] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        try:
            values[match["name"]] = float(match["value"])
        except ValueError:
            continue
    return values


def _format(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(gauges: list[Gauge], values: Mapping[str, float]) -> str:
    lines: list[str] = []
    for gauge in gauges:
        if gauge.name not in values:
            continue
        lines.append(f"# HELP {gauge.name} {gauge.help}")
        lines.append(f"# TYPE {gauge.name} gauge")
        lines.append(f"{gauge.name} {_format(values[gauge.name])}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        # node_exporter runs as its own user; the file must be readable by it.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def update_metrics(path: Optional[Path], gauges: list[Gauge], new_values: Mapping[str, float],
                   defaults: Optional[Mapping[str, float]] = None) -> Optional[dict[str, float]]:
    """Write `gauges` to `path`: `new_values` win, then the file's current values, then
    `defaults`. Returns what was written (None when no path was given)."""
    if path is None:
        return None
    previous = read_values(path)
    merged: dict[str, float] = {}
    for gauge in gauges:
        if gauge.name in new_values:
            merged[gauge.name] = float(new_values[gauge.name])
        elif gauge.name in previous:
            merged[gauge.name] = previous[gauge.name]
        elif defaults and gauge.name in defaults:
            merged[gauge.name] = float(defaults[gauge.name])
    write_atomically(path, render(gauges, merged))
    return merged
