"""checkov over the provider check's Terraform plan, gated by a checked-in skip list.

checkov reads the JSON of the offline plan (`terraform show -json`). Every failed check fails
the gate unless policy/checkov-skips.yaml skips it with a reason, for the resources (Pulumi
logical names, globs) and stacks it names. A skip that no longer matches anything fails the
gate too, so the list never outlives what it excuses."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from scripts.provider_check.check import Finding
from scripts.provider_check.terraform import CheckUnavailable
from scripts.provider_check.translate import Translation

ROOT_DIR = Path(__file__).resolve().parents[2]
SKIPS_FILE = ROOT_DIR / "policy" / "checkov-skips.yaml"
CHECK_ID = re.compile(r"^CKV2?_AWS_\d+$")
TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Skip:
    check: str
    reason: str
    resources: tuple[str, ...] = ("*",)
    stacks: Optional[tuple[str, ...]] = None

    def covers(self, check_id: str, resource_name: str, stack: str) -> bool:
        return (check_id == self.check and (self.stacks is None or stack in self.stacks)
                and any(fnmatch.fnmatchcase(resource_name, pattern) for pattern in self.resources))


def load_skips(path: Path = SKIPS_FILE) -> list[Skip]:
    """The skip list, refused (ValueError naming the entry) when an entry lacks a check id or a reason."""
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("skips") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a mapping with a list under 'skips'")
    skips = []
    for number, entry in enumerate(entries, 1):
        check = str((entry or {}).get("check", ""))
        reason = " ".join(str((entry or {}).get("reason", "")).split())
        if not CHECK_ID.match(check):
            raise ValueError(f"{path}: entry {number}: 'check' must be a checkov AWS check id, got {check!r}")
        if len(reason) < 20:
            raise ValueError(f"{path}: entry {number} ({check}): every skip needs a reason (a sentence), got {reason!r}")
        resources = tuple(entry.get("resources") or ("*",))
        stacks = tuple(entry["stacks"]) if entry.get("stacks") else None
        skips.append(Skip(check, reason, resources, stacks))
    return skips


def find_checkov(environ: Optional[dict[str, str]] = None) -> str:
    env = os.environ if environ is None else environ
    configured = env.get("PSYCHOLOGY_API_CHECKOV")
    candidates = [configured] if configured else [shutil.which("checkov", path=env.get("PATH")),
                                                  str(ROOT_DIR / "venv-checkov" / "bin" / "checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CheckUnavailable("checkov is not installed (pip install -r requirements-checkov.txt into its own "
                           "venv, venv-checkov/, or set PSYCHOLOGY_API_CHECKOV)")


def run_checkov(executable: str, plan_json: Path) -> dict[str, Any]:
    """checkov's JSON report for the plan (offline: no guideline download, no platform)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    env["LOG_LEVEL"] = "ERROR"
    command = [executable, "-f", str(plan_json), "--framework", "terraform_plan", "-o", "json",
               "--quiet", "--compact", "--skip-download"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as err:
        raise CheckUnavailable(f"checkov did not finish in {TIMEOUT_SECONDS} s") from err
    try:
        document = json.loads(done.stdout)
    except ValueError as err:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckUnavailable(f"checkov gave no JSON report (exit {done.returncode}): {tail}") from err
    reports = document if isinstance(document, list) else [document]
    failed = [check for report in reports for check in report.get("results", {}).get("failed_checks", [])]
    passed = sum(int(report.get("summary", {}).get("passed", 0)) for report in reports)
    version = next((r.get("summary", {}).get("checkov_version") for r in reports), None)
    return {"failed_checks": failed, "passed": passed, "version": version}


def judge(report: dict[str, Any], skips: list[Skip], translation: Translation, stack: str) -> tuple[list[Finding], dict[str, Any]]:
    """Findings for failed checks no skip covers and for skips that cover nothing."""
    findings: list[Finding] = []
    skipped: list[dict[str, str]] = []
    used: set[int] = set()
    for failed in report["failed_checks"]:
        address = str(failed.get("resource", ""))
        origin = translation.origins.get(address)
        name = origin.resource.name if origin else address
        check_id = str(failed.get("check_id"))
        cover = next((i for i, skip in enumerate(skips) if skip.covers(check_id, name, stack)), None)
        if cover is not None:
            used.add(cover)
            skipped.append({"check": check_id, "resource": name, "reason": skips[cover].reason})
            continue
        findings.append(Finding("checkov", "error", origin.resource.type if origin else "", name, "", address,
                                f"{check_id} {failed.get('check_name', '')}"))
    for i, skip in enumerate(skips):
        if i not in used and (skip.stacks is None or stack in skip.stacks):
            findings.append(Finding("checkov", "error", "", f"{SKIPS_FILE.name}", "", "",
                                    f"skip of {skip.check} for {', '.join(skip.resources)} matches no failed check "
                                    f"in stack {stack}: remove it or narrow its stacks"))
    summary = {"version": report.get("version"), "passed": report["passed"],
               "failed": len(report["failed_checks"]) - len(skipped), "skipped": skipped}
    return findings, summary
