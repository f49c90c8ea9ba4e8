"""The provider check: translate the offline plan, let the real AWS provider judge it, and map
every diagnostic back to the Pulumi resource and property it is about."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.mock_engine import Plan
from scripts.provider_check.located_json import dump_located, path_at
from scripts.provider_check.schema import ProviderSchema
from scripts.provider_check.terraform import Toolchain, Workspace
from scripts.provider_check.translate import Translation, translate

EXIT_CLEAN = 0
EXIT_CANNOT_RUN = 1
EXIT_REFUSED = 2


@dataclass(frozen=True)
class Finding:
    source: str  # translation | validate | plan | checkov
    severity: str  # error | warning
    resource_type: str
    resource_name: str
    property: str
    address: str
    message: str
    # True where the check itself fell short (a property it could not translate), not the provider.
    check_gap: bool = False

    def line(self) -> str:
        where = f".{self.property}" if self.property else ""
        return f"{self.resource_type} {self.resource_name}{where}: {self.message} [{self.source}]".lstrip()


@dataclass
class Report:
    stack: str
    provider_version: str
    terraform_version: str
    resources: int
    findings: list[Finding] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)
    autonamed: dict[str, str] = field(default_factory=dict)
    planned: bool = False
    workdir: Optional[str] = None
    checkov: Optional[dict[str, Any]] = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def exit_code(self) -> int:
        if any(f.check_gap for f in self.errors):
            return EXIT_CANNOT_RUN
        return EXIT_REFUSED if self.errors else EXIT_CLEAN

    def summary(self) -> str:
        provider = [f for f in self.errors if f.source in ("validate", "plan") or (f.source == "translation" and not f.check_gap)]
        gaps = [f for f in self.errors if f.check_gap]
        parts = [f"hashicorp/aws {self.provider_version} judged {self.resources} AWS resources of stack {self.stack}: "
                 + (f"{len(provider)} input(s) refused" if provider else "nothing refused")]
        if gaps:
            parts.append(f"{len(gaps)} input(s) the check cannot translate")
        if self.checkov is not None:
            gate = [f for f in self.errors if f.source == "checkov"]
            parts.append(f"checkov {self.checkov['passed']} passed, {len(self.checkov['skipped'])} skipped with a reason, "
                         f"{len(gate)} failing the gate")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["findings"] = [asdict(f) for f in self.findings]
        document["ok"] = self.exit_code == EXIT_CLEAN
        document["exit_code"] = self.exit_code
        return document


def _message(diagnostic: dict[str, Any]) -> str:
    summary = str(diagnostic.get("summary", "")).strip()
    detail = " ".join(str(diagnostic.get("detail", "")).split())
    return f"{summary}: {detail}" if detail and detail not in summary else summary


def locate(diagnostic: dict[str, Any], source: str, index: dict[int, tuple[Any, ...]],
           translation: Translation) -> Finding:
    """A Terraform diagnostic as a finding about a Pulumi resource and property."""
    where = diagnostic.get("range") or {}
    path: tuple[Any, ...] = ()
    if str(where.get("filename", "")).endswith("main.tf.json"):
        path = path_at(index, int(where.get("start", {}).get("line", 0)))
    from_path = f"{path[1]}.{path[2]}" if len(path) >= 3 and path[0] == "resource" else ""
    address = str(diagnostic.get("address") or from_path)
    tf_path = path[3:] if from_path and from_path == address else ()
    origin = translation.origins.get(address)
    if origin is None:
        return Finding(source, diagnostic.get("severity", "error"), "", address or "(configuration)", "", address,
                       _message(diagnostic))
    return Finding(source, diagnostic.get("severity", "error"), origin.resource.type, origin.resource.name,
                   origin.pulumi_path(tf_path), address, _message(diagnostic))


def _translation_findings(translation: Translation) -> list[Finding]:
    return [Finding("translation", "error", p.resource_type, p.resource_name, p.property_path, "", p.message,
                    check_gap=not p.refused)
            for p in translation.problems]


def run_check(plan: Plan, toolchain: Toolchain, workdir: Path,
              schema: Optional[ProviderSchema] = None) -> tuple[Report, Translation, Workspace]:
    """Translate, validate and (when validate is clean) plan; the workspace keeps the files.
    `schema` saves reading the provider schema again when several plans are checked."""
    workspace = Workspace(toolchain, workdir)
    workspace.init()
    if schema is None:
        schema = ProviderSchema.from_json(workspace.provider_schema(), toolchain.provider_version)
    translation = translate(plan, schema)
    text, index = dump_located(translation.config)
    workspace.write_config(text)
    report = Report(stack=plan.stack, provider_version=toolchain.provider_version,
                    terraform_version=workspace.version(), resources=translation.resource_count,
                    not_judged=translation.notes, autonamed=translation.autonamed, workdir=str(workdir))
    report.findings.extend(_translation_findings(translation))
    report.findings.extend(locate(d, "validate", index, translation) for d in workspace.validate())
    if not any(f.source == "validate" and f.severity == "error" for f in report.findings):
        report.planned, diagnostics = workspace.plan()
        report.findings.extend(locate(d, "plan", index, translation) for d in diagnostics)
    return report, translation, workspace
