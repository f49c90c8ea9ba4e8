"""The monitoring host's Grafana admin password script (components/templates/monitoring/host/
grafana-admin-password.sh.j2), run for real: bash, jq, runuser and the AWS CLI against Secrets
Manager in moto's server mode, files in a scratch directory. Grafana itself is the one stand-in
(it is not installed here): a `grafana` executable that records its arguments and the password
it was given on stdin, and fails when told to.

It must apply a rotated password through `grafana cli` before it replaces the file, change
nothing when the password is already in place, keep everything as it was when the secret or
the CLI fails, and never print a value."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components import monitoring_render as render
from tests.integration.test_exporter_secrets import render_settings
from tests.services import MotoServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration

SECRET_NAME = "psychology-api/test/grafana"
FIRST = {"admin_user": "admin", "admin_password": "FirstGrafanaPassword0123456789ab"}
ROTATED = {"admin_user": "admin", "admin_password": "RotatedGrafanaPassword987654321x"}


@dataclasses.dataclass
class Host:
    script: Path
    password_file: Path
    grafana_db: Path
    calls: Path
    env: dict[str, str]

    def run(self, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.script)], capture_output=True, text=True,
                              env={**self.env, **extra_env}, timeout=120)

    def cli_calls(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.calls.read_text().splitlines()] if self.calls.exists() else []


@pytest.fixture
def host(sm: Any, aws_env: MotoServer, tmp_path: Path) -> Host:
    if shutil.which("aws") is None or shutil.which("runuser") is None:
        pytest.skip("the AWS CLI and runuser are needed (the monitoring host has both)")
    if os.geteuid() != 0:
        pytest.skip("the script hands the password file to root and Grafana's group: run as root")
    arn = sm.create_secret(Name=SECRET_NAME, SecretString=json.dumps(FIRST))["ARN"]
    grafana_home, secrets_dir = tmp_path / "grafana", tmp_path / "secrets"
    (grafana_home / "bin").mkdir(parents=True)
    secrets_dir.mkdir()
    calls = tmp_path / "grafana-calls.jsonl"
    # The stand-in: one JSON line per call with its arguments and what it read on stdin.
    (grafana_home / "bin" / "grafana").write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        f"with open({str(calls)!r}, 'a') as log:\n"
        "    log.write(json.dumps({'args': ' '.join(sys.argv[1:]), 'stdin': sys.stdin.read()}) + '\\n')\n"
        "sys.exit(1 if os.environ.get('GRAFANA_STANDIN_FAIL') else 0)\n")
    (grafana_home / "bin" / "grafana").chmod(0o755)
    script = tmp_path / "psychology-grafana-admin-password"
    script.write_text(render.grafana_admin_password_script(
        dataclasses.replace(render_settings(), grafana_secret_arn=arn), password_file=str(secrets_dir / "admin_password"),
        grafana_home=str(grafana_home), grafana_db=str(tmp_path / "grafana.db"), grafana_user=getpass.getuser()))
    env = {**os.environ, "AWS_ENDPOINT_URL": aws_env.endpoint_url, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test"}
    return Host(script, secrets_dir / "admin_password", tmp_path / "grafana.db", calls, env)


def rotate(sm: Any, document: dict[str, str]) -> None:
    sm.put_secret_value(SecretId=SECRET_NAME, SecretString=json.dumps(document))


def test_before_grafana_has_a_database_only_the_file_is_written(host: Host) -> None:
    result = host.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "grafana admin password changed\n"
    assert host.password_file.read_text() == FIRST["admin_password"]
    mode = host.password_file.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o640 and mode.st_uid == 0
    assert host.cli_calls() == []  # Grafana seeds its new database from the file itself


def test_a_rotated_password_goes_through_grafana_cli_then_into_the_file(sm: Any, host: Host) -> None:
    assert host.run().returncode == 0
    host.grafana_db.write_text("")  # Grafana has started once: the password lives in its database now
    unchanged = host.run()
    assert unchanged.returncode == 0 and unchanged.stdout == "grafana admin password unchanged\n"
    assert host.cli_calls() == []

    rotate(sm, ROTATED)
    result = host.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "grafana admin password changed\n"
    (call,) = host.cli_calls()
    grafana_home = host.grafana_db.parent / "grafana"
    assert call == {"args": f"cli --homepath {grafana_home} --config /etc/grafana/grafana.ini admin reset-admin-password "
                            "--password-from-stdin", "stdin": ROTATED["admin_password"]}
    assert host.password_file.read_text() == ROTATED["admin_password"]
    assert ROTATED["admin_password"] not in result.stdout + result.stderr
    assert host.run().stdout == "grafana admin password unchanged\n" and len(host.cli_calls()) == 1
    assert [p.name for p in host.password_file.parent.iterdir()] == ["admin_password"]  # no staging left


def test_when_grafana_cli_fails_the_previous_password_stays_and_the_next_run_retries(sm: Any, host: Host) -> None:
    assert host.run().returncode == 0
    host.grafana_db.write_text("")
    rotate(sm, ROTATED)
    failed = host.run(GRAFANA_STANDIN_FAIL="1")
    assert failed.returncode == 1
    assert "could not set the new password" in failed.stderr
    assert host.password_file.read_text() == FIRST["admin_password"]
    retried = host.run()
    assert retried.returncode == 0 and retried.stdout == "grafana admin password changed\n"
    assert host.password_file.read_text() == ROTATED["admin_password"]
    assert len(host.cli_calls()) == 2


def test_when_the_script_cannot_look_as_grafana_it_changes_nothing(sm: Any, host: Host) -> None:
    """On the host the script keeps no capability to read Grafana's own directory as root: it
    asks as Grafana. When that fails, it must not take the database for missing (Grafana would
    keep the old password while the file says new)."""
    assert host.run().returncode == 0
    rotate(sm, ROTATED)
    user = f"readonly GRAFANA_USER={getpass.getuser()}\n"
    assert user in host.script.read_text()
    host.script.write_text(host.script.read_text().replace(user, "readonly GRAFANA_USER=psychology-no-such-user\n"))
    result = host.run()
    assert result.returncode == 1 and result.stdout == ""
    assert "cannot look into Grafana's data directory" in result.stderr
    assert host.password_file.read_text() == FIRST["admin_password"]
    assert host.cli_calls() == []


@pytest.mark.parametrize("broken", ["unreadable", "no password"])
def test_a_secret_that_cannot_be_used_changes_nothing(sm: Any, host: Host, broken: str) -> None:
    assert host.run().returncode == 0
    host.grafana_db.write_text("")
    if broken == "unreadable":
        sm.delete_secret(SecretId=SECRET_NAME, ForceDeleteWithoutRecovery=True)
    else:
        rotate(sm, {"admin_user": "admin"})
    result = host.run()
    assert result.returncode == 1
    assert result.stdout == ""
    assert host.password_file.read_text() == FIRST["admin_password"]
    assert host.cli_calls() == []
    assert FIRST["admin_password"] not in result.stderr
