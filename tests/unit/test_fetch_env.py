"""The API hosts' fetch-env script, taken from each stack's rendered user data and run for real
with bash and jq. Only the two programs it calls outside the host are replaced: `aws` (a stub
that answers `secretsmanager get-secret-value` from a JSON file) and `systemctl` (records its
calls). The env file's path is moved into the test's directory; nothing else is changed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.userdata import decode_user_data
from harness.mock_engine import Plan

LT = "aws:ec2/launchTemplate:LaunchTemplate"
SCRIPT_PATH = "/usr/local/sbin/psychology-api-fetch-env"
ENV_LINE = "readonly ENV_FILE=/etc/psychology-api/env\n"

# `aws secretsmanager get-secret-value --region R --secret-id ARN --query SecretString --output text`
AWS_STUB = r"""#!/usr/bin/env bash
set -euo pipefail
arn=""
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --secret-id ]]; then arn=$2; shift; fi
  shift
done
echo "$arn" >> "$STUB_DIR/aws-calls"
answer=$(jq -c --arg arn "$arn" '.[$arn] // {"error": "ResourceNotFoundException"}' "$STUB_DIR/secrets.json")
error=$(jq -r '.error? // empty' <<<"$answer")
if [[ -n "$error" ]]; then
  echo "An error occurred ($error) when calling the GetSecretValue operation" >&2
  exit 254
fi
printf '%s\n' "$answer"
"""
SYSTEMCTL_STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_DIR/systemctl-calls"
"""


@dataclass
class Host:
    script: Path
    env_file: Path
    stub_dir: Path
    arns: dict[str, Any]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.stub_dir / 'bin'}:{os.environ['PATH']}", "STUB_DIR": str(self.stub_dir)}
        return subprocess.run(["bash", str(self.script), *args], capture_output=True, text=True,
                              env=env, timeout=60, check=False)

    def serve(self, answers: dict[str, Any]) -> None:
        (self.stub_dir / "secrets.json").write_text(json.dumps(answers))

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.env_file.parent.iterdir() if p != self.env_file)

    def calls(self, name: str) -> list[str]:
        path = self.stub_dir / f"{name}-calls"
        return path.read_text().splitlines() if path.exists() else []


def rendered_script(plan: Plan) -> str:
    document = yaml.safe_load(decode_user_data(plan.one(LT).inputs["userData"]))
    return next(e["content"] for e in document["write_files"] if e["path"] == SCRIPT_PATH)


def write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def host(plan: Plan, tmp_path: Path) -> Host:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (.ci/run installs it)")
    text = rendered_script(plan)
    assert text.count(ENV_LINE) == 1
    etc = tmp_path / "etc"
    etc.mkdir()
    env_file = etc / "env"
    script = tmp_path / "psychology-api-fetch-env"
    write_executable(script, text.replace(ENV_LINE, f"readonly ENV_FILE={env_file}\n"))
    stub_dir = tmp_path / "stub"
    (stub_dir / "bin").mkdir(parents=True)
    write_executable(stub_dir / "bin" / "aws", AWS_STUB)
    write_executable(stub_dir / "bin" / "systemctl", SYSTEMCTL_STUB)
    arns = {"app": plan.outputs["app_secret_arn"], "database": plan.outputs["db_app_secret_arn"],
            "redis": plan.outputs["redis_secret_arn"]}
    return Host(script, env_file, stub_dir, arns)


def answers(host: Host, secret_key: str) -> dict[str, Any]:
    """Values for the app, database and Redis secrets; the integrations have none yet."""
    return {
        host.arns["app"]: {"SECRET_KEY": secret_key, "ALLOWED_HOSTS": "api.example.test"},
        host.arns["database"]: {"host": "db.internal", "port": 5432, "dbname": "psychology",
                                "username": "psychology_app_a", "password": "pw-1f2e"},
        host.arns["redis"]: {"host": "redis.internal", "port": 6379, "auth_token": "tok-9a8b", "tls": True},
    }


def assert_clean_and_private(host: Host) -> None:
    assert host.leftovers() == []
    assert stat.S_IMODE(host.env_file.stat().st_mode) == 0o600


def test_first_run_writes_the_env_file(host: Host) -> None:
    host.serve(answers(host, "key-one"))
    result = host.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "changed\n"
    assert 'SECRET_KEY="key-one"' in host.env_file.read_text()
    assert 'DB_PASSWORD="pw-1f2e"' in host.env_file.read_text()
    assert_clean_and_private(host)
    assert "key-one" not in result.stdout + result.stderr


def test_unchanged_run_succeeds_and_leaves_nothing_behind(host: Host) -> None:
    host.serve(answers(host, "key-one"))
    assert host.run().returncode == 0
    before = host.env_file.read_text()
    result = host.run("--restart-on-change")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "unchanged\n"
    assert host.env_file.read_text() == before
    assert_clean_and_private(host)
    assert host.calls("systemctl") == []


def test_changed_run_replaces_the_file_and_restarts_the_app(host: Host) -> None:
    host.serve(answers(host, "key-one"))
    assert host.run().returncode == 0
    host.serve(answers(host, "key-two"))
    result = host.run("--restart-on-change")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "changed\n"
    assert 'SECRET_KEY="key-two"' in host.env_file.read_text()
    assert_clean_and_private(host)
    assert host.calls("systemctl") == ["is-active --quiet psychology-api.service",
                                       "restart psychology-api.service"]


def test_failed_fetch_fails_and_keeps_the_previous_file(host: Host) -> None:
    host.serve(answers(host, "key-one"))
    assert host.run().returncode == 0
    before = host.env_file.read_text()
    broken = answers(host, "key-two")
    broken[host.arns["database"]] = {"error": "AccessDeniedException"}
    host.serve(broken)
    result = host.run("--restart-on-change")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot read" in result.stderr and "AccessDeniedException" in result.stderr
    assert host.env_file.read_text() == before
    assert_clean_and_private(host)
    assert host.calls("systemctl") == []


def test_failed_first_fetch_leaves_no_file_at_all(host: Host) -> None:
    host.serve({})
    result = host.run()
    assert result.returncode == 1
    assert not host.env_file.exists()
    assert host.leftovers() == []
