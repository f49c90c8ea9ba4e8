"""The CI workflows: valid against GitHub's workflow schema (check-jsonschema's vendored copy,
checked with the network cut off), and the properties that matter asserted one by one:
minimal permissions, timeouts, pinned actions, the policy pack in preview and deploy, the
production approval, serialized deploys, and the drift job's exit-code handling, executed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SETUP_ACTION = ROOT / ".github" / "actions" / "setup" / "action.yml"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
PINNED_SHA = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")
MAJOR_TAG = re.compile(r"^[\w.-]+/[\w.-]+@v\d+$")

# A sitecustomize that makes any network connection fail, so a validator that tried to fetch
# its schema would fail instead of silently downloading it.
_NO_NETWORK = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network access is not allowed in this test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    # YAML 1.1 reads the key `on` as True.
    if True in document:
        document["on"] = document.pop(True)
    return document


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict[str, Any]]:
    return {path.stem: _load(path) for path in WORKFLOW_FILES}


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def _step(job: dict[str, Any], name_part: str) -> dict[str, Any]:
    return next(s for s in _steps(job) if name_part in s.get("name", ""))


def _all_uses(path: Path) -> list[str]:
    return re.findall(r"uses:\s*(\S+(?: # v[\d.]+)?)", path.read_text())


def test_the_three_workflows_exist() -> None:
    assert {p.stem for p in WORKFLOW_FILES} == {"preview", "deploy", "drift"}


@pytest.mark.parametrize("path", [*WORKFLOW_FILES, SETUP_ACTION, ROOT / ".github" / "dependabot.yml"],
                         ids=lambda p: p.name if p.name != "action.yml" else "setup-action")
def test_schema_validation_offline(path: Path, tmp_path: Path) -> None:
    schema = {"action.yml": "vendor.github-actions", "dependabot.yml": "vendor.dependabot"}.get(
        path.name, "vendor.github-workflows")
    (tmp_path / "sitecustomize.py").write_text(_NO_NETWORK)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, "--no-cache", str(path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    timeout-minutes: soon\n    steps: []\n")
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1


def test_the_schema_is_vendored_in_the_package() -> None:
    import check_jsonschema

    vendored = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "github-workflows.json"
    assert vendored.is_file()
    assert '"$ref": "http' not in vendored.read_text()  # no remote references to resolve


# --- properties of every workflow ----------------------------------------------------------

def test_permissions_are_minimal(workflows: dict[str, dict[str, Any]]) -> None:
    allowed_writes = {
        ("preview", "preview"): {"id-token", "pull-requests"},
        ("deploy", "staging"): {"id-token"},
        ("deploy", "prod"): {"id-token"},
        ("drift", "drift"): {"id-token"},
        ("drift", "report"): {"issues"},
    }
    for name, workflow in workflows.items():
        assert workflow["permissions"] == {}, f"{name}: the workflow grants nothing by default"
        for job_name, job in workflow["jobs"].items():
            permissions = job.get("permissions")
            assert isinstance(permissions, dict), f"{name}.{job_name} declares its permissions"
            writes = {scope for scope, level in permissions.items() if level == "write"}
            assert writes == allowed_writes.get((name, job_name), set()), f"{name}.{job_name}: {writes}"
            assert set(permissions.values()) <= {"read", "write"}
            assert permissions.get("contents", "read") == "read"


def test_every_job_has_a_timeout(workflows: dict[str, dict[str, Any]]) -> None:
    for name, workflow in workflows.items():
        for job_name, job in workflow["jobs"].items():
            assert 0 < int(job["timeout-minutes"]) <= 180, f"{name}.{job_name}"


@pytest.mark.parametrize("path", [*WORKFLOW_FILES, SETUP_ACTION], ids=lambda p: p.parent.name + "/" + p.name)
def test_actions_are_pinned(path: Path) -> None:
    uses = _all_uses(path)
    assert uses
    for ref in uses:
        if ref.startswith("./"):
            continue
        assert PINNED_SHA.match(ref) or MAJOR_TAG.match(ref), f"{path.name}: {ref} is neither a SHA with its version nor a major tag"
        if not ref.startswith("pulumi/actions@"):
            assert PINNED_SHA.match(ref), f"{ref}: GitHub's and AWS's actions are pinned to a commit"


def test_checkouts_do_not_keep_the_token(workflows: dict[str, dict[str, Any]]) -> None:
    for workflow in workflows.values():
        for job in workflow["jobs"].values():
            for step in _steps(job):
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False


def test_aws_access_is_oidc_with_a_role_from_repository_variables(workflows: dict[str, dict[str, Any]]) -> None:
    roles = set()
    for name, workflow in workflows.items():
        for job_name, job in workflow["jobs"].items():
            for step in _steps(job):
                if str(step.get("uses", "")).startswith("aws-actions/configure-aws-credentials@"):
                    assert job["permissions"].get("id-token") == "write", f"{name}.{job_name}"
                    assert "aws-access-key-id" not in step["with"]
                    roles.add((name, step["with"]["role-to-assume"]))
    assert roles == {("preview", "${{ vars.AWS_READONLY_ROLE_ARN }}"), ("drift", "${{ vars.AWS_READONLY_ROLE_ARN }}"),
                     ("deploy", "${{ vars.AWS_DEPLOY_ROLE_ARN }}")}


def test_pulumi_cli_version_matches_the_sdk() -> None:
    pinned = re.search(r"^pulumi==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    assert (ROOT / ".pulumi.version").read_text().strip() == pinned.group(1)


# --- preview ---------------------------------------------------------------------------------

# Environments the CI runbook (docs/runbooks/ci.md) requires to have required reviewers; the Pulumi token and
# the stack passphrase are secrets of these environments only.
PROTECTED_ENVIRONMENTS = {"preview", "production"}
PULL_REQUEST_TRIGGERS = {"pull_request", "pull_request_target"}
SECRET_EXPRESSION = re.compile(r"\$\{\{[^}]*\bsecrets\b")


def _triggers(workflow: dict[str, Any]) -> set[str]:
    on = workflow["on"]
    return {on} if isinstance(on, str) else set(on)


def _references_secrets(node: Any) -> bool:
    """Any `${{ secrets.X }}` in a value, or `secrets: inherit` handed to a reusable workflow."""
    if isinstance(node, dict):
        return any(key == "secrets" or _references_secrets(value) for key, value in node.items())
    if isinstance(node, list):
        return any(_references_secrets(item) for item in node)
    return isinstance(node, str) and SECRET_EXPRESSION.search(node) is not None


def _environment(job: dict[str, Any]) -> str | None:
    environment = job.get("environment")
    return environment.get("name") if isinstance(environment, dict) else environment


def _unprotected_secret_jobs(workflow: dict[str, Any]) -> list[str]:
    """Jobs a pull request starts that see secret material without a protected environment."""
    if not _triggers(workflow) & PULL_REQUEST_TRIGGERS:
        return []
    found = ["<workflow env>"] if _references_secrets(workflow.get("env", {})) else []
    return found + [name for name, job in workflow["jobs"].items()
                    if _references_secrets(job) and _environment(job) not in PROTECTED_ENVIRONMENTS]


def test_pull_request_jobs_see_no_secret_outside_a_protected_environment(
        workflows: dict[str, dict[str, Any]]) -> None:
    for name, workflow in workflows.items():
        assert _unprotected_secret_jobs(workflow) == [], name
    offline = workflows["preview"]["jobs"]["offline-checks"]
    assert not _references_secrets(offline) and "environment" not in offline
    assert _environment(workflows["preview"]["jobs"]["preview"]) == "preview"


def test_stack_secrets_are_read_only_inside_an_environment(workflows: dict[str, dict[str, Any]]) -> None:
    """They are environment secrets (docs/runbooks/ci.md): a job outside an environment would get nothing."""
    for name, workflow in workflows.items():
        for job_name, job in workflow["jobs"].items():
            text = yaml.safe_dump(job)
            if "secrets.PULUMI_" in text:
                assert _environment(job) in {*PROTECTED_ENVIRONMENTS, "staging", "drift"}, f"{name}.{job_name}"


@pytest.mark.parametrize(("job", "found"), [
    ({"env": {"PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"}}, ["x"]),
    ({"steps": [{"with": {"token": "${{secrets.PULUMI_ACCESS_TOKEN}}"}}]}, ["x"]),
    ({"uses": "./.github/workflows/reusable.yml", "secrets": "inherit"}, ["x"]),
    ({"environment": "unprotected", "env": {"T": "${{ secrets.T }}"}}, ["x"]),
    ({"environment": {"name": "preview"}, "env": {"T": "${{ secrets.T }}"}}, []),
    ({"env": {"URL": "${{ vars.PULUMI_BACKEND_URL }}"}, "steps": [{"run": "echo secrets are elsewhere"}]}, []),
])
def test_the_secret_check_catches_unprotected_jobs(job: dict[str, Any], found: list[str]) -> None:
    assert _unprotected_secret_jobs({"on": {"pull_request": {}}, "jobs": {"x": job}}) == found
    assert _unprotected_secret_jobs({"on": "push", "jobs": {"x": job}}) == []


def test_the_ci_runbook_documents_the_protected_environments_and_their_secrets() -> None:
    section = (ROOT / "docs" / "runbooks" / "ci.md").read_text()
    for environment in PROTECTED_ENVIRONMENTS:
        row = next(line for line in section.splitlines() if line.startswith(f"| `{environment}` "))
        assert "required reviewers" in row, row
    for secret in ("PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE"):
        row = next(line for line in section.splitlines() if line.startswith(f"| `{secret}` "))
        assert "environment secret" in row and "never a repository secret" in row, row


def test_preview_runs_offline_checks_then_both_stacks_with_the_policy_pack(workflows: dict[str, dict[str, Any]]) -> None:
    preview = workflows["preview"]
    assert set(preview["on"]) == {"pull_request"}
    offline = preview["jobs"]["offline-checks"]
    plan_step = _step(offline, "Offline plan and policy")["run"]
    assert "for stack in staging prod" in plan_step and "scripts.plan --stack \"$stack\" --policy" in plan_step
    assert "pytest tests/unit" in _step(offline, "Unit tests")["run"]
    job = preview["jobs"]["preview"]
    assert job["needs"] == "offline-checks"
    assert job["strategy"]["matrix"]["stack"] == ["staging", "prod"]
    step = _step(job, "pulumi preview")
    assert step["uses"].startswith("pulumi/actions@")
    assert step["with"]["command"] == "preview"
    assert step["with"]["policyPacks"] == "policy"
    assert step["with"]["comment-on-pr"] is True
    assert step["with"]["stack-name"].endswith("${{ matrix.stack }}")


# --- deploy ----------------------------------------------------------------------------------

def test_deploys_never_overlap(workflows: dict[str, dict[str, Any]]) -> None:
    deploy = workflows["deploy"]
    assert deploy["on"]["push"]["branches"] == ["main"]
    assert deploy["concurrency"] == {"group": "deploy", "cancel-in-progress": False}


def test_prod_waits_for_staging_smoke_and_approval(workflows: dict[str, dict[str, Any]]) -> None:
    jobs = workflows["deploy"]["jobs"]
    staging, prod = jobs["staging"], jobs["prod"]
    assert prod["needs"] == "staging"
    assert prod["environment"]["name"] == "production"
    names = [s.get("name", "") for s in _steps(staging)]
    assert names.index("pulumi up staging") < names.index("Smoke report must pass")
    assert "scripts.stack_outputs smoke --outputs outputs-staging.json" in _step(staging, "Smoke report")["run"]
    for stack, job in (("staging", staging), ("prod", prod)):
        up = _step(job, f"pulumi up {stack}")
        assert up["with"]["command"] == "up" and up["with"]["policyPacks"] == "policy"
        outputs = _step(job, "Stack outputs")["run"]
        assert f"pulumi stack output --stack \"$STACK\" --json > outputs-{stack}.json" in outputs
        assert "--show-secrets" not in outputs
        assert "--summary-file \"$GITHUB_STEP_SUMMARY\"" in outputs
        artifact = _step(job, "Keep the outputs")
        assert artifact["uses"].startswith("actions/upload-artifact@")
        assert artifact["with"] == {**artifact["with"], "name": f"outputs-{stack}", "path": f"outputs-{stack}.json"}


# --- drift -----------------------------------------------------------------------------------

def test_drift_runs_nightly_and_on_demand_for_both_stacks(workflows: dict[str, dict[str, Any]]) -> None:
    drift = workflows["drift"]
    assert set(drift["on"]) == {"schedule", "workflow_dispatch"}
    assert re.fullmatch(r"\d+ \d+ \* \* \*", drift["on"]["schedule"][0]["cron"])
    job = drift["jobs"]["drift"]
    assert job["strategy"]["matrix"]["stack"] == ["staging", "prod"]
    assert job["strategy"]["fail-fast"] is False
    assert 'scripts.drift --stack "$STACK" --json' in _step(job, "Engine drift")["run"]
    scan = _step(job, "Account scan")["run"]
    assert 'pulumi stack export --stack "$STACK" > "$RUNNER_TEMP/state.json"' in scan
    assert 'scripts.drift scan --state "$RUNNER_TEMP/state.json"' in scan and "--json" in scan
    upload = _step(job, "Upload the reports")
    assert upload["if"] == "always()" and "drift-scan.json" in upload["with"]["path"]
    assert "state.json" not in upload["with"]["path"]
    report = drift["jobs"]["report"]
    assert report["needs"] == "drift" and "needs.drift.result == 'failure'" in report["if"]
    script = _step(report, "One issue per drifted stack")["with"]["script"]
    assert "issues.create(" in script and "issues.createComment(" in script and "!== 3" in script


def _bash_script(run: str) -> str:
    """A workflow `run:` block as bash would get it, with ${{ }} expressions filled in."""
    return re.sub(r"\$\{\{[^}]*\}\}", "staging", run)


# The drift tools' codes: 0 no drift, 3 drift found, 1 the check failed, 2 a usage error.
@pytest.mark.parametrize(("engine", "scan", "expected"), [
    ("0", "0", 0), ("3", "0", 3), ("0", "3", 3), ("3", "3", 3), ("1", "0", 1), ("0", "1", 1), ("1", "3", 3),
    ("2", "0", 1), ("0", "2", 1), ("2", "3", 3)])
def test_drift_verdict_step_exit_codes(workflows: dict[str, dict[str, Any]], engine: str, scan: str, expected: int) -> None:
    run = _step(workflows["drift"]["jobs"]["drift"], "Fail on drift")["run"]
    result = subprocess.run(["bash", "-e", "-c", _bash_script(run)], capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ["PATH"], "ENGINE_CODE": engine, "SCAN_CODE": scan, "STACK": "staging"})
    assert result.returncode == expected, result.stdout + result.stderr
    if expected == 3:
        assert "::error::drift detected" in result.stdout
    else:
        assert "::error::drift detected" not in result.stdout


@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_drift_steps_capture_the_tool_exit_code(workflows: dict[str, dict[str, Any]], tmp_path: Path, code: int) -> None:
    """The engine step must not stop at a non-zero exit (bash -e): it records the code."""
    fake_python = tmp_path / "venv" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text(f"#!/bin/sh\necho '{{}}'\nexit {code}\n")
    fake_python.chmod(0o755)
    output = tmp_path / "github_output"
    run = _step(workflows["drift"]["jobs"]["drift"], "Engine drift")["run"]
    result = subprocess.run(["bash", "-e", "-c", _bash_script(run)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30, env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output), "STACK": "staging"})
    assert result.returncode == 0, result.stderr
    assert output.read_text() == f"code={code}\n"


@pytest.mark.tools
def test_workflow_shell_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    scripts = []
    for path in [*WORKFLOW_FILES, SETUP_ACTION]:
        document = _load(path)
        jobs = document.get("jobs", {"action": {"steps": document.get("runs", {}).get("steps", [])}})
        for job_name, job in jobs.items():
            for index, step in enumerate(_steps(job)):
                if "run" in step:
                    script = tmp_path / f"{path.stem}-{job_name}-{index}.sh"
                    script.write_text("#!/usr/bin/env bash\n" + _bash_script(step["run"]))
                    scripts.append(str(script))
    assert len(scripts) > 10
    result = subprocess.run([shellcheck, "--severity=warning", *scripts], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
