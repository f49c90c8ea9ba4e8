"""What node_exporter's systemd collector watches, read from the unit that starts it."""

from __future__ import annotations

import re
from collections.abc import Iterable


def unwatched_units(node_exporter_unit: str, unit_names: Iterable[str]) -> list[str]:
    """The units among `unit_names` that --collector.systemd.unit-include leaves out. node_exporter
    anchors the pattern at both ends, so it must match a whole unit name."""
    found = re.search(r"--collector\.systemd\.unit-include=(\S+)", node_exporter_unit)
    assert found is not None, "node_exporter runs without --collector.systemd.unit-include"
    included = re.compile(f"^(?:{found[1]})$")
    return [name for name in unit_names if not included.match(name)]
