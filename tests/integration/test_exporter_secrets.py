"""The monitoring host's exporter-credentials script (components/templates/monitoring/host/
exporter-secrets.sh.j2), run for real: bash, jq and the AWS CLI against Secrets Manager in
moto's server mode, files in a scratch directory. `systemctl` is the one stand-in (this
container runs no systemd): a script on PATH that records what it was asked to do.

It must write what the exporters read, restart an exporter only when its credentials changed
(a rotation), keep the files when a secret cannot be read, and never print a value."""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components import monitoring_render as render
from tests.services import MotoServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration

MONITOR = {"username": "psychology_monitor_a", "password": "monitor-Pass-1", "host": "db.internal", "port": 5432,
           "dbname": "psychology"}
REDIS = {"host": "master.redis.internal", "port": 6379, "auth_token": "FirstRedisToken0123456789", "tls": True}


@dataclasses.dataclass
class Host:
    script: Path
    secrets_dir: Path
    systemctl_log: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.script), *args], capture_output=True, text=True, env=self.env, timeout=120)

    def file(self, name: str) -> str:
        return (self.secrets_dir / name).read_text()

    def systemctl_calls(self) -> list[str]:
        return self.systemctl_log.read_text().splitlines() if self.systemctl_log.exists() else []


@pytest.fixture
def host(sm: Any, aws_env: MotoServer, tmp_path: Path) -> Host:
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed (the monitoring host has it from the awscli-2 package)")
    if os.geteuid() != 0:
        pytest.skip("the script hands its files to root and the exporters' groups: run as root")
    monitor_arn = sm.create_secret(Name="psychology-api/test/database/monitor", SecretString=json.dumps(MONITOR))["ARN"]
    redis_arn = sm.create_secret(Name="psychology-api/test/redis", SecretString=json.dumps(REDIS))["ARN"]
    settings = dataclasses.replace(
        render_settings(), db_monitor_secret_arn=monitor_arn, redis_secret_arn=redis_arn)
    group = grp.getgrgid(os.getgid()).gr_name
    script = tmp_path / "psychology-exporter-secrets"
    secrets_dir = tmp_path / "secrets"
    script.write_text(render.exporter_secrets_script(settings, secrets_dir=str(secrets_dir),
                                                     postgres_exporter_group=group, redis_exporter_group=group))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >>{log}\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_ENDPOINT_URL": aws_env.endpoint_url,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    return Host(script, secrets_dir, log, env)


def render_settings() -> render.MonitoringSettings:
    return render.MonitoringSettings(
        project="psychology-api", stack="test", environment="staging", region="eu-central-1",
        public_url="http://alb.example", https=False, alerts_topic_arn="arn:aws:sns:eu-central-1:1:t",
        backup_bucket="b", kms_key_arn="arn:aws:kms:eu-central-1:1:key/k", db_host="db.fallback.internal",
        db_name="psychology", db_backup_secret_arn="arn:aws:secretsmanager:eu-central-1:1:secret:b",
        db_drill_secret_arn="arn:aws:secretsmanager:eu-central-1:1:secret:d",
        grafana_secret_arn="arn:aws:secretsmanager:eu-central-1:1:secret:g", grafana_secret_name="g",
        data_volume_id="vol-0", volume_gb=50, backup_schedule="daily", restore_drill_schedule="monthly")


def test_boot_writes_what_the_exporters_read_and_restarts_nothing(host: Host) -> None:
    result = host.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["postgres_exporter changed", "redis_exporter changed"]
    assert host.file("pg_monitor_user") == "psychology_monitor_a" and host.file("pg_monitor_password") == "monitor-Pass-1"
    assert host.file("postgres_exporter.env").splitlines() == [
        "DATA_SOURCE_URI=db.internal:5432/psychology?sslmode=verify-full&sslrootcert=/opt/psychology-ops/current/scripts/lib/certs/rds-global-bundle.pem",
        f"DATA_SOURCE_USER_FILE={host.secrets_dir}/pg_monitor_user",
        f"DATA_SOURCE_PASS_FILE={host.secrets_dir}/pg_monitor_password"]
    assert host.file("redis_exporter.env") == "REDIS_ADDR=rediss://master.redis.internal:6379\n"
    assert json.loads(host.file("redis_passwords.json")) == {"rediss://master.redis.internal:6379": REDIS["auth_token"]}
    for name in ("pg_monitor_user", "pg_monitor_password", "postgres_exporter.env", "redis_exporter.env",
                 "redis_passwords.json"):
        mode = (host.secrets_dir / name).stat()
        assert stat.S_IMODE(mode.st_mode) == 0o640 and mode.st_uid == 0
    assert host.systemctl_calls() == []  # at boot the boot script starts the exporters itself
    assert sorted(p.name for p in host.secrets_dir.iterdir()) == sorted(
        ["pg_monitor_user", "pg_monitor_password", "postgres_exporter.env", "redis_exporter.env", "redis_passwords.json"])
    assert "monitor-Pass-1" not in result.stdout + result.stderr and REDIS["auth_token"] not in result.stdout + result.stderr


def test_daily_refresh_restarts_only_the_exporter_whose_credentials_rotated(sm: Any, host: Host) -> None:
    assert host.run().returncode == 0
    unchanged = host.run("--restart-on-change")
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout.splitlines() == ["postgres_exporter unchanged", "redis_exporter unchanged"]
    assert host.systemctl_calls() == []

    # A rotation of the monitoring credentials: the other user, a new password.
    rotated = {**MONITOR, "username": "psychology_monitor_b", "password": "monitor-Pass-2"}
    sm.put_secret_value(SecretId="psychology-api/test/database/monitor", SecretString=json.dumps(rotated))
    result = host.run("--restart-on-change")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["postgres_exporter changed", "redis_exporter unchanged"]
    assert host.file("pg_monitor_user") == "psychology_monitor_b" and host.file("pg_monitor_password") == "monitor-Pass-2"
    assert host.systemctl_calls() == ["enable --quiet postgres_exporter.service", "restart postgres_exporter.service"]

    # A rotation of the Redis token.
    sm.put_secret_value(SecretId="psychology-api/test/redis", SecretString=json.dumps({**REDIS, "auth_token": "SecondRedisToken987654321"}))
    result = host.run("--restart-on-change")
    assert result.stdout.splitlines() == ["postgres_exporter unchanged", "redis_exporter changed"]
    assert host.systemctl_calls()[-2:] == ["enable --quiet redis_exporter.service", "restart redis_exporter.service"]
    assert "SecondRedisToken987654321" not in result.stdout + result.stderr


@pytest.mark.parametrize("broken", ["unreadable", "no password"])
def test_a_secret_that_cannot_be_used_keeps_the_working_files(sm: Any, host: Host, broken: str) -> None:
    assert host.run().returncode == 0
    if broken == "unreadable":
        sm.delete_secret(SecretId="psychology-api/test/database/monitor", ForceDeleteWithoutRecovery=True)
    else:
        sm.put_secret_value(SecretId="psychology-api/test/database/monitor",
                            SecretString=json.dumps({k: v for k, v in MONITOR.items() if k != "password"}))
    result = host.run("--restart-on-change")
    assert result.returncode == 1
    assert "cannot read the monitoring role's secret; postgres_exporter keeps what it has" in result.stderr
    assert result.stdout.splitlines() == ["redis_exporter unchanged"]
    assert host.file("pg_monitor_password") == "monitor-Pass-1"
    assert host.systemctl_calls() == []
    assert "monitor-Pass-1" not in result.stdout + result.stderr
    assert not [p for p in host.secrets_dir.iterdir() if p.name.startswith(".staging")]  # no leftovers
