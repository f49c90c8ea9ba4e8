"""Findings of both drift modes, their JSON documents and their human rendering.

Everything printed goes through `scripts.lib.cli.masker` (cli.emit_json does it for JSON)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from scripts.lib import cli

EXIT_NO_DRIFT = 0
# Its own code, apart from the contract's 1 (the check failed) and 2 (usage error): the nightly
# job opens an issue for drift only.
EXIT_DRIFT = 3


@dataclass
class PropertyChange:
    property: str
    state: Any
    live: Any


@dataclass
class Finding:
    type: str
    id: str
    name: str = ""
    urn: str = ""
    stack: str = ""
    reason: str = ""
    changes: list[PropertyChange] = field(default_factory=list)


@dataclass
class ScanReport:
    stacks: list[str]
    region: str
    missing: list[Finding] = field(default_factory=list)
    changed: list[Finding] = field(default_factory=list)
    unmanaged: list[Finding] = field(default_factory=list)
    managed: int = 0
    indirect: int = 0
    checked_types: dict[str, int] = field(default_factory=dict)
    not_checked: dict[str, int] = field(default_factory=dict)
    api_calls: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return bool(self.missing or self.changed or self.unmanaged)

    @property
    def coverage(self) -> float:
        """driftctl-style: managed resources found / (managed found + unmanaged), in percent."""
        total = self.managed + len(self.unmanaged)
        return round(100.0 * self.managed / total, 1) if total else 100.0

    def summary(self) -> str:
        return (f"{len(self.missing)} missing, {len(self.changed)} changed, {len(self.unmanaged)} unmanaged; "
                f"coverage {self.coverage:.1f}% ({self.managed} managed found); "
                f"{self.api_calls.get('total', 0)} AWS API calls")

    def to_json(self) -> dict[str, Any]:
        def findings(items: list[Finding]) -> list[dict[str, Any]]:
            out = []
            for f in items:
                doc = {k: v for k, v in asdict(f).items() if v not in ("", [])}
                doc.setdefault("type", f.type)
                doc.setdefault("id", f.id)
                out.append(doc)
            return out

        return {
            "mode": "scan",
            "stacks": self.stacks,
            "region": self.region,
            "drifted": self.drifted,
            "summary": {"managed": self.managed, "missing": len(self.missing), "changed": len(self.changed),
                        "unmanaged": len(self.unmanaged), "managed_indirectly": self.indirect,
                        "coverage_percent": self.coverage},
            "missing": findings(self.missing),
            "changed": findings(self.changed),
            "unmanaged": findings(self.unmanaged),
            "checked_types": self.checked_types,
            "not_checked_types": self.not_checked,
            "api_calls": self.api_calls,
        }


def _value(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else json.dumps(value)


def _write(text: str) -> None:
    sys.stdout.write(cli.masker(text) + "\n")


def print_scan(report: ScanReport) -> None:
    _write(f"Account drift scan of {', '.join(report.stacks)} in {report.region}")
    for label, items in (("MISSING", report.missing), ("CHANGED", report.changed), ("UNMANAGED", report.unmanaged)):
        for f in items:
            name = f" ({f.name})" if f.name and f.name != f.id else ""
            where = f"  [{f.urn}]" if f.urn else (f"  [{f.reason}]" if f.reason else "")
            _write(f"{label:<10} {f.type}  {f.id}{name}{where}")
            for change in f.changes:
                _write(f"{'':<12}{change.property}: {_value(change.state)} -> {_value(change.live)}")
    if not report.drifted:
        _write("No drift: every managed resource found as recorded, nothing unmanaged.")
    _write(f"Coverage: {report.coverage:.1f}% ({report.managed} managed found, {len(report.unmanaged)} unmanaged)"
           f"{f', {report.indirect} managed through their parents' if report.indirect else ''}")
    if report.not_checked:
        listed = ", ".join(f"{t} ({n})" for t, n in sorted(report.not_checked.items()))
        _write(f"Not checked by the scan (use the engine mode): {listed}")
    calls = report.api_calls
    _write(f"AWS API calls: {calls.get('total', 0)} for {len(report.checked_types)} resource types in state")


@dataclass
class EngineChange:
    path: str
    kind: str
    old: Any
    new: Any


@dataclass
class EngineFinding:
    urn: str
    type: str
    operation: str
    id: str = ""
    changes: list[EngineChange] = field(default_factory=list)


@dataclass
class EngineReport:
    stack: str
    drifted_resources: list[EngineFinding] = field(default_factory=list)
    resource_changes: dict[str, int] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    work_dir: Optional[str] = None

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_resources)

    def summary(self) -> str:
        if not self.drifted:
            return f"stack {self.stack}: no drift (read-only refresh preview)"
        ops: dict[str, int] = {}
        for f in self.drifted_resources:
            ops[f.operation] = ops.get(f.operation, 0) + 1
        detail = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
        return f"stack {self.stack}: {len(self.drifted_resources)} resources drifted ({detail})"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "engine",
            "stack": self.stack,
            "drifted": self.drifted,
            "resources": [asdict(f) for f in self.drifted_resources],
            "resource_changes": self.resource_changes,
            "diagnostics": self.diagnostics,
        }


def print_engine(report: EngineReport) -> None:
    _write(f"Engine drift (read-only refresh preview) of stack {report.stack}")
    for f in report.drifted_resources:
        _write(f"{f.operation.upper():<10} {f.type}  {f.id or ''}  [{f.urn}]")
        for change in f.changes:
            _write(f"{'':<12}{change.path}: {_value(change.old)} -> {_value(change.new)}")
    if not report.drifted:
        _write("No drift: the refresh would change nothing.")
    for line in report.diagnostics:
        _write(f"diagnostic: {line}")


def finish(drifted: bool, summary: str) -> int:
    cli.verdict(not drifted, summary)
    return EXIT_DRIFT if drifted else EXIT_NO_DRIFT
