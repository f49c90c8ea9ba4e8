"""Configuration validation: every rule rejects bad input with one line naming the key, the
value and what is allowed, before any resource is registered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import mock_engine
from harness.mock_engine import ROOT_DIR, load_stack_config_file, run_program
from infra.config import ConfigError, StackConfig, parse_stack_config


def raw_config(stack: str, **overrides: Any) -> dict[str, Any]:
    """The stack's values as the program receives them (strings; arrays as JSON), minus secrets."""
    import json

    values, _ = load_stack_config_file(stack)
    raw: dict[str, Any] = {}
    aliases = {info.alias or name for name, info in StackConfig.model_fields.items()}
    for full, text in values.items():
        key = full if full.startswith("aws:") else full.split(":", 1)[1]
        if key not in aliases:
            continue
        if text.startswith("["):
            raw[key] = tuple(json.loads(text))
        else:
            raw[key] = text
    for key, value in overrides.items():
        raw[key] = tuple(value) if isinstance(value, list) else value
    return raw


def problems_for(stack: str, **overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw_config(stack, **overrides))
    return str(err.value).splitlines()


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_committed_stack_files_are_valid(stack: str) -> None:
    cfg = parse_stack_config(raw_config(stack))
    assert cfg.environment == stack
    assert cfg.region == "eu-central-1"


# (stack, overrides, key named in the message, words the message must contain)
BAD_VALUES = [
    ("staging", {"vpcCidr": "10.0.0.0/33"}, "vpcCidr", "/16 to /28"),
    ("staging", {"vpcCidr": "10.0.0.0/8"}, "vpcCidr", "/16 to /28"),
    ("staging", {"vpcCidr": "not-a-cidr"}, "vpcCidr", "IPv4 network"),
    ("staging", {"vpcCidr": "8.8.0.0/16"}, "vpcCidr", "private"),
    ("staging", {"azCount": "1"}, "azCount", "2 to 6"),
    ("staging", {"azCount": "7"}, "azCount", "2 to 6"),
    ("staging", {"azCount": "two"}, "azCount", "2 to 6"),
    ("prod", {"azCount": "2", "publicSubnetCidrs": ["10.30.0.0/24", "10.30.1.0/24"],
              "privateSubnetCidrs": ["10.30.16.0/20", "10.30.32.0/20"],
              "databaseSubnetCidrs": ["10.30.128.0/24", "10.30.129.0/24"]}, "azCount", "at least 3 when environment is prod"),
    ("staging", {"publicSubnetCidrs": ["10.20.0.0/24"]}, "publicSubnetCidrs", "one CIDR per AZ"),
    ("staging", {"privateSubnetCidrs": ["10.20.16.0/20", "10.99.0.0/20"]}, "privateSubnetCidrs", "inside vpcCidr"),
    ("staging", {"databaseSubnetCidrs": ["10.20.128.0/24", "10.20.0.0/25"]}, "databaseSubnetCidrs", "overlaps"),
    ("staging", {"publicSubnetCidrs": ["10.20.0.0/24", "10.20.1.0/28"]}, "publicSubnetCidrs", "at least 32 addresses"),
    ("staging", {"privateSubnetCidrs": ["10.20.16.0/20", "10.20.32.0/25"]}, "privateSubnetCidrs", "at least 256 addresses"),
    ("staging", {"databaseSubnetCidrs": ["10.20.128.0/24", "10.20.129.1/24"]}, "databaseSubnetCidrs", "not one"),
    ("staging", {"databaseSubnetCidrs": ["10.20.128.0/24", "10.20.129.0/30"]}, "databaseSubnetCidrs", "/16 to /28"),
    ("staging", {"adminCidrs": ["0.0.0.0/0"]}, "adminCidrs", "whole internet"),
    ("staging", {"adminCidrs": ["::/0"]}, "adminCidrs", "whole internet"),
    ("staging", {"sshCidrs": ["0.0.0.0/0"]}, "sshCidrs", "whole internet"),
    ("staging", {"adminCidrs": ["198.51.100.7/24"]}, "adminCidrs", "no host bits"),
    ("staging", {"flowLogRetentionDays": "45"}, "flowLogRetentionDays", "one of 365, 400"),
    ("prod", {"flowLogRetentionDays": "90"}, "flowLogRetentionDays", "one of 365, 400"),
    ("staging", {"accessLogRetentionDays": "90"}, "accessLogRetentionDays", "365 to 3650"),
    ("staging", {"wafLogRetentionDays": "30"}, "wafLogRetentionDays", "one of 365, 400"),
    ("staging", {"wafRateLimit": "50"}, "wafRateLimit", "100 to 2,000,000,000"),
    ("staging", {"wafRateLimit": "3000000000"}, "wafRateLimit", "100 to 2,000,000,000"),
    ("staging", {"wafMode": "deny"}, "wafMode", "'block' or 'count'"),
    ("prod", {"wafEnabled": "false"}, "wafEnabled", "true when environment is prod"),
    ("staging", {"allowHttpOnly": "true"}, "allowHttpOnly", "false when a certificate is configured"),
    ("staging", {"backupRetentionDays": "0"}, "backupRetentionDays", "1 to 3650"),
    ("staging", {"backupRetentionDays": "4000"}, "backupRetentionDays", "1 to 3650"),
    ("staging", {"backupNoncurrentVersionDays": "0"}, "backupNoncurrentVersionDays", "1 to 365"),
    ("staging", {"secretRotationDays": "0"}, "secretRotationDays", "2 to 1000"),
    ("staging", {"secretRotationDays": "1"}, "secretRotationDays", "2 to 1000"),  # closer than the clients refresh
    ("staging", {"secretRotationDays": "1001"}, "secretRotationDays", "2 to 1000"),
    ("staging", {"secretRecoveryWindowDays": "3"}, "secretRecoveryWindowDays", "7 to 30"),
    ("staging", {"kmsDeletionWindowDays": "31"}, "kmsDeletionWindowDays", "7 to 30"),
    ("staging", {"apiMinSize": "0"}, "apiMinSize", "1 to 100"),
    ("staging", {"apiMaxSize": "1", "apiMinSize": "2", "apiDesiredCapacity": "2"}, "apiMaxSize", "at least apiMinSize"),
    ("staging", {"apiDesiredCapacity": "5"}, "apiDesiredCapacity", "between apiMinSize"),
    ("prod", {"apiMinSize": "1", "apiDesiredCapacity": "1"}, "apiMinSize", "at least 2 when environment is prod"),
    ("staging", {"apiRootVolumeGb": "8"}, "apiRootVolumeGb", "20 to 16384"),
    ("staging", {"apiInstanceType": "huge"}, "apiInstanceType", "EC2 instance type"),
    ("staging", {"environment": "production"}, "environment", "'staging' or 'prod'"),
    ("staging", {"aws:region": "europe"}, "aws:region", "AWS region"),
    ("staging", {"appPort": "22"}, "appPort", "other than 22"),
    ("staging", {"appPort": "70000"}, "appPort", "1 to 65535"),
    ("staging", {"healthCheckPath": "health"}, "healthCheckPath", "absolute URL path"),
    ("staging", {"sslPolicy": "ELBSecurityPolicy-2016-08"}, "sslPolicy", "ELBSecurityPolicy-TLS13-1-2-2021-06"),
    ("staging", {"certificateArn": "arn:aws:iam::123456789012:server-certificate/x"}, "certificateArn", "ACM certificate ARN"),
    ("staging", {"allowHttpOnly": "false", "domainName": "", "hostedZoneId": ""}, "certificateArn",
     "allowHttpOnly true (staging only)"),
    ("prod", {"domainName": "", "hostedZoneId": ""}, "certificateArn", "domainName + hostedZoneId"),
    ("prod", {"domainName": "", "hostedZoneId": "",
              "certificateArn": "arn:aws:acm:eu-central-1:123456789012:certificate/0a1b2c3d-0000-4000-8000-0123456789ab"},
     "domainName", "the host name certificateArn is issued for"),
    ("staging", {"smtpPort": "465"}, "smtpPort", "587 or 25"),
    ("prod", {"allowHttpOnly": "true"}, "allowHttpOnly", "false when environment is prod"),
    ("prod", {"hostedZoneId": ""}, "hostedZoneId", "Route 53 zone"),
    ("prod", {"deletionProtection": "false"}, "deletionProtection", "true when environment is prod"),
    ("staging", {"domainName": "API.Example.com"}, "domainName", "lower-case DNS name"),
    ("staging", {"appArtifactUrl": "https://example.com/app.tar.gz"}, "appArtifactUrl", "{version}"),
    ("staging", {"appVersion": "1.0 beta"}, "appVersion", "release name"),
    ("staging", {"dbEngineVersion": "13"}, "dbEngineVersion", "major 14, 15, 16, 17"),
    ("staging", {"dbEngineVersion": "9.6"}, "dbEngineVersion", "major 14, 15, 16, 17"),
    ("staging", {"dbEngineVersion": "sixteen"}, "dbEngineVersion", "major 14, 15, 16, 17"),
    ("staging", {"dbInstanceClass": "m6g.large"}, "dbInstanceClass", "RDS instance class"),
    ("staging", {"dbAllocatedStorageGb": "10"}, "dbAllocatedStorageGb", "20 to 65536"),
    ("staging", {"dbMaxAllocatedStorageGb": "50", "dbAllocatedStorageGb": "60"}, "dbMaxAllocatedStorageGb", "at least dbAllocatedStorageGb"),
    ("staging", {"dbBackupRetentionDays": "0"}, "dbBackupRetentionDays", "1 to 35"),
    ("staging", {"dbBackupRetentionDays": "36"}, "dbBackupRetentionDays", "1 to 35"),
    ("staging", {"dbName": "Psychology-DB"}, "dbName", "lower-case identifier"),
    ("staging", {"dbPerformanceInsightsRetentionDays": "30"}, "dbPerformanceInsightsRetentionDays", "multiple of 31"),
    ("staging", {"dbMonitoringIntervalSeconds": "20"}, "dbMonitoringIntervalSeconds", "one of 0, 1, 5"),
    ("prod", {"dbMultiAz": "false"}, "dbMultiAz", "true when environment is prod"),
    ("staging", {"redisEngineVersion": "6.2"}, "redisEngineVersion", "7.0, 7.1"),
    ("staging", {"redisNodeType": "m6g.large"}, "redisNodeType", "ElastiCache node type"),
    ("staging", {"redisNumNodes": "0"}, "redisNumNodes", "1 to 6"),
    ("prod", {"redisNumNodes": "1"}, "redisNumNodes", "at least 2 when environment is prod"),
    ("staging", {"redisSnapshotRetentionDays": "0"}, "redisSnapshotRetentionDays", "1 to 35"),
    ("staging", {"smtpPort": "2525"}, "smtpPort", "587 or 25"),
    ("staging", {"emailFrom": "not-an-address"}, "emailFrom", "e-mail address"),
    ("staging", {"alarmEmail": "ops@"}, "alarmEmail", "e-mail address"),
    ("staging", {"monitoringVolumeGb": "5"}, "monitoringVolumeGb", "20 to 16384"),
    ("staging", {"backupSchedule": "daily; rm -rf /"}, "backupSchedule", "OnCalendar"),
    ("staging", {"maintenance": "maybe"}, "maintenance", "true or false"),
    ("staging", {"migrationLockTimeoutSeconds": "0"}, "migrationLockTimeoutSeconds", "1 to 60"),
    ("staging", {"migrationLockAttempts": "11"}, "migrationLockAttempts", "1 to 10"),
    ("staging", {"migrationStatementTimeoutSeconds": "5"}, "migrationStatementTimeoutSeconds", "10 to 600"),
    ("staging", {"migrationLockTimeoutSeconds": "60", "migrationLockAttempts": "5"}, "migrationStatementTimeoutSeconds",
     "at most 525 with 315 s of lock waits"),
]


@pytest.mark.parametrize(("stack", "overrides", "key", "allowed"), BAD_VALUES,
                         ids=[f"{case[2]}={list(case[1].values())[0]}" for case in BAD_VALUES])
def test_each_rule_names_key_value_and_what_is_allowed(stack: str, overrides: dict[str, Any], key: str, allowed: str) -> None:
    lines = problems_for(stack, **overrides)
    full = key if ":" in key else f"psychology-api:{key}"
    matching = [line for line in lines if line.startswith(f"invalid configuration: {full} = ")]
    assert matching, lines
    assert allowed in matching[0], matching[0]
    if key in overrides:
        shown = overrides[key]
        assert (str(shown) if not isinstance(shown, list) else shown[0]) in matching[0]


def _keys(lines: list[str]) -> list[str]:
    return sorted(line.split(" = ")[0].rsplit(":", 1)[1] for line in lines)


def test_all_problems_are_reported_together() -> None:
    # Type and range problems are reported together; so are the cross-key rules, which run
    # once every value has its type.
    assert _keys(problems_for("staging", azCount="9", backupRetentionDays="0", dbName="X")) == [
        "azCount", "backupRetentionDays", "dbName"]
    assert _keys(problems_for("staging", vpcCidr="10.0.0.0/8", adminCidrs=["0.0.0.0/0"], smtpPort="2525")) == [
        "adminCidrs", "smtpPort", "vpcCidr"]


def test_unknown_and_missing_keys_are_named() -> None:
    raw = raw_config("staging")
    del raw["environment"]
    raw["vpcCidrs"] = "10.0.0.0/16"
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw)
    text = str(err.value)
    assert "psychology-api:vpcCidrs" in text and "declared in Pulumi.yaml" in text
    assert "psychology-api:environment = null" in text and "required" in text


def test_every_declared_key_is_in_the_typed_config() -> None:
    project = yaml.safe_load((ROOT_DIR / "Pulumi.yaml").read_text())
    declared = {k for k in project["config"] if ":" not in k}
    from infra.config import SECRET_KEYS

    typed = {info.alias or name for name, info in StackConfig.model_fields.items()}
    assert declared == (typed - {"aws:region"}) | set(SECRET_KEYS)
    for key, decl in project["config"].items():
        if ":" in key:
            continue
        assert decl.get("description"), key
        assert decl.get("type") in {"string", "integer", "boolean", "array"}, key
        if key != "environment":
            assert "default" in decl, f"{key} has no default"


def test_bad_config_registers_nothing() -> None:
    registered: list[str] = []

    class Spy(mock_engine.RecordingMonitor):
        def RegisterResource(self, request: Any) -> Any:
            registered.append(request.type)
            return super().RegisterResource(request)

    original = mock_engine.RecordingMonitor
    mock_engine.RecordingMonitor = Spy  # type: ignore[misc]
    try:
        with pytest.raises(ConfigError):
            run_program("staging", overrides={"vpcCidr": "10.0.0.0/33"})
    finally:
        mock_engine.RecordingMonitor = original  # type: ignore[misc]
    assert [t for t in registered if t != "pulumi:pulumi:Stack"] == []


def test_more_azs_than_the_region_has_is_a_config_error() -> None:
    cidrs = {
        "azCount": 4,
        "publicSubnetCidrs": [f"10.20.{i}.0/24" for i in range(4)],
        "privateSubnetCidrs": [f"10.20.{16 * (i + 1)}.0/20" for i in range(4)],
        "databaseSubnetCidrs": [f"10.20.{128 + i}.0/24" for i in range(4)],
    }
    with pytest.raises(ConfigError, match=r"psychology-api:azCount = 4 .*at most 3, the AZs available in eu-central-1"):
        run_program("staging", overrides=cidrs)


def test_secret_keys_set_in_plain_text_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        run_program("staging", overrides={"telegramBotToken": "123456:plain-text-token"})
    text = str(err.value)
    assert "psychology-api:telegramBotToken" in text and "pulumi config set --secret telegramBotToken" in text
    assert "plain-text-token" not in text


def _plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.plan", *args], cwd=ROOT_DIR, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("replace", "key"), [
    (("vpcCidr: 10.20.0.0/16", "vpcCidr: 10.0.0.0/33"), "psychology-api:vpcCidr"),
    (("adminCidrs: []", 'adminCidrs: ["0.0.0.0/0"]'), "psychology-api:adminCidrs"),
])
def test_plan_cli_exits_2_with_one_line_per_problem(tmp_path: Path, replace: tuple[str, str], key: str) -> None:
    text = (ROOT_DIR / "Pulumi.staging.yaml").read_text()
    assert replace[0] in text
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(text.replace(*replace))
    result = _plan_cli("--stack", "staging", "--config-file", str(bad))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
