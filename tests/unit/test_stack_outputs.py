"""scripts.stack_outputs: the smoke-report gate and the masked job summary the deploy workflow uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.lib.cli import Masker
from scripts.stack_outputs import markdown_summary, sensitive_values, smoke_verdict

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("report", [
    {"passed": True},
    {"ok": True, "checks": [{"name": "health", "passed": True}, {"name": "db", "ok": True}]},
    {"status": "passed", "results": {"health": {"passed": True}, "tls": True}},
    json.dumps({"passed": True, "checks": [{"name": "health", "passed": True}]}),
    {"checks": [{"name": "health", "passed": True}]},
])
def test_smoke_passes(report: Any) -> None:
    ok, reason = smoke_verdict({"smoke_test_report": report})
    assert ok, reason


@pytest.mark.parametrize(("report", "reason"), [
    (None, "no smoke_test_report output"),
    ("[secret]", "is secret"),
    ("not json", "is not JSON"),
    ([1, 2], "is not an object"),
    ({"passed": False}, "did not pass"),
    ({"passed": True, "checks": [{"name": "health", "passed": True}, {"name": "hsts", "passed": False}]},
     "smoke checks failed: hsts"),
    ({"status": "failed"}, "did not pass"),
    ({"summary": "all good"}, "carries no verdict"),
    ({"checks": [{"name": "health"}]}, "no verdict"),
])
def test_smoke_fails_when_it_cannot_tell_or_a_check_failed(report: Any, reason: str) -> None:
    outputs = {} if report is None else {"smoke_test_report": report}
    ok, why = smoke_verdict(outputs)
    assert not ok
    assert reason in why


def test_sensitive_values_are_masked() -> None:
    outputs = {"api_url": "https://api.example.com", "db_password": "hunter2hunter2", "app_secret_arn": "arn:aws:x",
               "token": "[secret]", "notes": "key AKIAIOSFODNN7EXAMPLE here", "nested": {"auth_token": "abcdefgh"}}
    assert sensitive_values(outputs) == ["hunter2hunter2", "key AKIAIOSFODNN7EXAMPLE here", "abcdefgh"]
    table = markdown_summary(outputs, "prod")
    assert "| `api_url` | `\"https://api.example.com\"` |" in table
    assert "Smoke report: NOT passed" in table


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.stack_outputs", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_smoke_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"smoke_test_report": {"passed": True}}))
    bad.write_text(json.dumps({"smoke_test_report": {"passed": False}}))
    assert _run("smoke", "--outputs", str(good)).returncode == 0
    failed = _run("smoke", "--outputs", str(bad), "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout) == {"passed": False, "reason": "the smoke report says it did not pass"}
    missing = _run("smoke", "--outputs", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_cli_summary_masks_before_printing(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"db_password": "hunter2hunter2", "api_url": "https://api.example.com",
                                   "smoke_test_report": {"passed": True}}))
    summary = tmp_path / "summary.md"
    result = _run("summary", "--outputs", str(outputs), "--stack", "prod", "--summary-file", str(summary))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "::add-mask::hunter2hunter2"
    text = summary.read_text()
    assert "hunter2hunter2" not in text and "### Stack outputs: prod" in text and "Smoke report: passed" in text
    assert _run("--help").returncode == 0


def test_real_stack_outputs_need_no_mask_and_no_secret_leaks(plan: Any) -> None:
    """The program's own outputs: nothing credential-like in plain text (ids, ARNs, names stay readable)."""
    assert sensitive_values(plan.outputs) == []
    table = markdown_summary(plan.outputs, plan.stack)
    assert "`private_subnet_ids`" in table


_PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
        "-----END PRIVATE KEY-----")


def test_cli_summary_masks_every_line_and_every_encoding_of_a_value(tmp_path: Path) -> None:
    """A multi-line value is masked line by line (the runner prints it so), a value with a quote or a
    backslash also in its JSON-escaped form (the table is JSON), and a long one before it is cut."""
    quoted, long_token = 'ab"cd\\ef-XyZ12%0A', "tok-" + "q7" * 100
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"db_password": quoted, "tls_private_key": _PEM, "api_token": long_token,
                                   "smoke_test_report": {"passed": True}}))
    summary = tmp_path / "summary.md"
    result = _run("summary", "--outputs", str(outputs), "--stack", "prod", "--summary-file", str(summary))
    assert result.returncode == 0, result.stderr
    masks = {line.removeprefix("::add-mask::") for line in result.stdout.splitlines() if line.startswith("::add-mask::")}
    assert {"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"} <= masks
    # Workflow-command data is percent-decoded by the runner: a literal "%0A" must arrive as itself.
    assert 'ab"cd\\ef-XyZ12%250A' in masks and 'ab\\"cd\\\\ef-XyZ12%250A' in masks
    text = summary.read_text()
    for secret in ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj", "ab\\\"cd", "q7q7q7"]:
        assert secret not in text
    assert "| `api_token` | `\"***\"` |" in text and "| `db_password` | `\"***\"` |" in text



def test_the_masker_takes_the_secret_lines_of_a_value_not_its_armour() -> None:
    """Line by line, only what can be secret material: not the PEM armour, not short lines that
    would mask harmless text wherever else they appear."""
    forms = Masker.forms(_PEM + "\nok\n")
    assert {"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"} <= set(forms)
    assert not {"-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", "ok"} & set(forms)
    assert Masker.forms("hunter2hunter2") == ["hunter2hunter2"]
