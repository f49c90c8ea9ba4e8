"""The checkov gate's rules: every skip carries a reason, covers only what it names, and a skip
that covers nothing fails the gate (the real checkov run is a step of .ci/run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.provider_check.checkov import SKIPS_FILE, Skip, judge, load_skips
from scripts.provider_check.translate import Translation


def test_every_checked_in_skip_has_a_reason_and_a_scope() -> None:
    skips = load_skips(SKIPS_FILE)
    assert skips
    for skip in skips:
        assert len(skip.reason) >= 20 and skip.resources != ("*",), skip.check


@pytest.mark.parametrize(("entry", "message"), [
    ("- check: CKV_AWS_18\n", "every skip needs a reason"),
    ("- check: CKV_AWS_18\n  reason: because\n", "every skip needs a reason"),
    ("- check: not-a-check\n  reason: a reason long enough to count as a sentence\n", "checkov AWS check id"),
])
def test_a_skip_without_reason_or_id_is_refused(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "skips.yaml"
    path.write_text("skips:\n" + "".join("  " + line + "\n" for line in entry.splitlines()))
    with pytest.raises(ValueError, match=message):
        load_skips(path)


def _failed(check: str, resource: str) -> dict[str, str]:
    return {"check_id": check, "check_name": f"name of {check}", "resource": resource}


def test_judge_skips_what_the_list_covers_and_fails_the_rest() -> None:
    skips = [Skip("CKV_AWS_18", "the log bucket itself, not logged into itself", ("access-logs-*",)),
             Skip("CKV_AWS_157", "staging runs one instance to halve its cost", ("postgres-*",), ("staging",))]
    report = {"failed_checks": [_failed("CKV_AWS_18", "access-logs-bucket"), _failed("CKV_AWS_18", "backups-bucket"),
                                _failed("CKV_AWS_157", "postgres-instance")],
              "passed": 10, "version": "x"}
    findings, summary = judge(report, skips, Translation(config={}), "prod")
    assert [f.line() for f in findings] == [
        "backups-bucket: CKV_AWS_18 name of CKV_AWS_18 [checkov]",
        "postgres-instance: CKV_AWS_157 name of CKV_AWS_157 [checkov]",
    ]
    assert summary["skipped"] == [{"check": "CKV_AWS_18", "resource": "access-logs-bucket",
                                   "reason": "the log bucket itself, not logged into itself"}]
    findings, _ = judge(report, skips, Translation(config={}), "staging")
    assert [f.resource_name for f in findings] == ["backups-bucket"]


def test_a_skip_that_covers_nothing_fails_the_gate() -> None:
    skips = [Skip("CKV_AWS_144", "single-region design, copies listed as open", ("backups-bucket",))]
    findings, _ = judge({"failed_checks": [], "passed": 3, "version": "x"}, skips, Translation(config={}), "prod")
    assert len(findings) == 1 and "matches no failed check in stack prod" in findings[0].message
