"""Every file the monitoring host runs on, checked with the real tools: promtool (config, rules,
rule unit tests), amtool, blackbox_exporter, cloud-init, shellcheck, systemd-analyze; plus the
dashboards' JSON and PromQL.

Files are rendered into a temporary directory with paths that point at each other (the
Prometheus config at its rule files, Alertmanager at its templates and secret files), so the
tools check the same cross-references the host relies on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from components import monitoring_render as render
from components.loadbalancer import MAINTENANCE_MARKER, maintenance_page
from components.monitoring_render import MonitoringSettings
from components.userdata import USER_DATA_LIMIT_BYTES, decode_user_data, user_data_size
from harness.mock_engine import ROOT_DIR, load_stack_config_file
from tests.dependencies import installed_closure
from tests.unit.node_exporter import unwatched_units

pytestmark = pytest.mark.tools

PROMTOOL_TESTS = ROOT_DIR / "tests" / "unit" / "promtool"
FAKE_WEBHOOK = "https://hooks.example.com/services/T000/B000/fake-test-token"
FAKE_ROUTING_KEY = "0123456789abcdef0123456789abcdef"


def tool(name: str, *alternatives: str) -> str:
    """Path of a validator; in CI a missing one is a failure, locally a skip with the reason."""
    for candidate in (name, *alternatives):
        found = shutil.which(candidate)
        if found:
            return found
    message = f"{name} is not installed (Debian package list in .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def settings(**changes: Any) -> MonitoringSettings:
    base = MonitoringSettings(
        project="psychology-api", stack="prod", environment="prod", region="eu-central-1",
        public_url="https://api.psychology.example.com", https=True,
        alerts_topic_arn="arn:aws:sns:eu-central-1:123456789012:psychology-api-prod-alerts",
        backup_bucket="backups-bucket-0123456789ab",
        kms_key_arn="arn:aws:kms:eu-central-1:123456789012:key/0a1b2c3d-0000-4000-8000-0123456789ab",
        db_host="psychology-api-prod-db.c0abcdefghij.eu-central-1.rds.amazonaws.com", db_name="psychology",
        db_backup_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/database/backup-AbCdEf",
        db_drill_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/database/drill-AbCdEf",
        grafana_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/grafana-AbCdEf",
        grafana_secret_name="psychology-api/prod/grafana",
        data_volume_id="vol-0123456789abcdef0", volume_gb=100,
        backup_schedule="*-*-* 02:00:00 Europe/Moscow", restore_drill_schedule="*-*-01 04:00:00 Europe/Moscow",
        db_monitor_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/database/monitor-AbCdEf",
        redis_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/redis-AbCdEf",
    )
    return dataclasses.replace(base, **changes)


# Variants that change what is rendered: channels, TLS, optional exporters.
VARIANTS = {
    "prod-sns-only": settings(),
    "prod-chat-and-pager": settings(alerting_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:a-AbCdEf",
                                    webhook_enabled=True, pagerduty_enabled=True),
    "prod-pager-only": settings(alerting_secret_arn="arn:aws:secretsmanager:eu-central-1:123456789012:secret:a-AbCdEf",
                                pagerduty_enabled=True),
    "staging-http-no-exporters": settings(
        stack="staging", environment="staging", https=False, volume_gb=50,
        public_url="http://psychology-api-staging-alb-1234567890.eu-central-1.elb.amazonaws.com",
        db_monitor_secret_arn=None, redis_secret_arn=None, postgres_client_major=17),
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> MonitoringSettings:
    return VARIANTS[request.param]


# --- Prometheus ------------------------------------------------------------------------------

def write_prometheus(s: MonitoringSettings, directory: Path) -> Path:
    rules = directory / "rules"
    rules.mkdir()
    for name, content in render.rule_files().items():
        (rules / name).write_text(content)
    config = directory / "prometheus.yml"
    config.write_text(render.prometheus_config(s, rules_dir=str(rules)))
    return config


def test_promtool_checks_config_and_the_rule_files_it_loads(variant: MonitoringSettings, tmp_path: Path) -> None:
    config = write_prometheus(variant, tmp_path)
    result = run(tool("promtool"), "check", "config", str(config))
    assert f"SUCCESS: {len(render.rule_files())} rule files found" in result.stdout


def test_promtool_checks_rules_without_lint_findings() -> None:
    paths = [str(p) for p in sorted((render.TEMPLATES_DIR / "prometheus" / "rules").glob("*.yml"))]
    result = run(tool("promtool"), "check", "rules", *paths)
    assert "FAILED" not in result.stdout + result.stderr


@pytest.mark.parametrize("test_file", sorted(p.name for p in PROMTOOL_TESTS.glob("*_test.yml")))
def test_promtool_rule_unit_tests(test_file: str) -> None:
    run(tool("promtool"), "test", "rules", test_file, cwd=PROMTOOL_TESTS)


def _alert_names() -> set[str]:
    names = set()
    for content in render.rule_files().values():
        for group in yaml.safe_load(content)["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


_HISTORY_CONDITION = re.compile(r"time\(\) - prometheus_tsdb_lowest_timestamp_seconds > (\d+) \* (\d+)")
_RANGE = re.compile(r"\[((?:\d+(?:ms|[smhdwy]))+)(?::[^\]]*)?\]")
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def _duration_seconds(duration: str) -> float:
    """A Prometheus duration ("35d", "1d12h", "90s") in seconds."""
    return sum(int(count) * _SECONDS[unit] for count, unit in _DURATION_PART.findall(duration))


def test_the_rules_never_ask_for_more_history_than_prometheus_keeps() -> None:
    """A rule that waits for N days of history, or looks back N days, can only fire when the
    retention keeps N days: Prometheus drops its oldest block once all of it is older than the
    retention, so the oldest sample is never younger than the retention (once that much has been
    kept), and never older than it by more than one block."""
    retention = render.RETENTION_DAYS * 86400
    judged = 0
    for content in render.rule_files().values():
        for group in yaml.safe_load(content)["groups"]:
            for rule in group["rules"]:
                for count, unit in _HISTORY_CONDITION.findall(rule["expr"]):
                    assert int(count) * int(unit) <= retention, (rule.get("alert") or rule.get("record"), rule["expr"])
                    judged += 1
                for duration in _RANGE.findall(rule["expr"]):
                    assert _duration_seconds(duration) <= retention, rule["expr"]
    assert judged >= 2
    assert [_duration_seconds(d) for d in _RANGE.findall("x[1d12h] y[35d:1h] z[5m] w[2w] v[500ms]")] == [
        129600, 35 * 86400, 300, 14 * 86400, 0.5]


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS.glob("*_test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = _alert_names()
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet on a good series"


# Alerts that inform and never page: severity info, routed to the default receiver.
INFORMATIONAL_ALERTS = {"MaintenanceMode"}


def test_rules_cover_the_spec_and_the_backups() -> None:
    assert {"APIHighErrorRate", "APIHighLatency", "APIAvailabilityBelowSLO", "DatabaseHighConnections",
            "DatabaseSizeHigh", "HighCPUUsage", "HighMemoryUsage", "DiskSpaceLow", "BackupMissing",
            "BackupFailed", "RestoreDrillFailed", "RestoreDrillOverdue", "APIHostDown", "ExporterDown",
            "PublicEndpointDown", "MaintenanceMode"} <= _alert_names()
    for content in render.rule_files().values():
        for group in yaml.safe_load(content)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    allowed = ("info",) if rule["alert"] in INFORMATIONAL_ALERTS else ("critical", "warning")
                    assert rule["labels"]["severity"] in allowed, rule["alert"]
                    assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
                    assert "for" in rule, rule["alert"]


def test_error_rate_alert_is_a_ratio_not_a_rate() -> None:
    api = yaml.safe_load(render.rule_files()["api.yml"])
    rule = next(r for g in api["groups"] for r in g["rules"] if r.get("alert") == "APIHighErrorRate")
    numerator, denominator = re.split(r"\n\s*/\s*\n", rule["expr"].strip())
    assert 'status=~"5.."' in numerator and "status=" not in denominator.split("> 0.01")[0]
    latency = next(r for g in api["groups"] for r in g["rules"] if r.get("alert") == "APIHighLatency")
    assert "sum by (job, le)" in latency["expr"]


# --- Alertmanager ------------------------------------------------------------------------------

@pytest.fixture
def alertmanager_dir(variant: MonitoringSettings, tmp_path: Path) -> Iterator[tuple[MonitoringSettings, Path]]:
    secrets = tmp_path / "secrets"
    templates = tmp_path / "templates"
    secrets.mkdir()
    templates.mkdir()
    (secrets / "webhook_url").write_text(FAKE_WEBHOOK)
    (secrets / "pagerduty_routing_key").write_text(FAKE_ROUTING_KEY)
    (templates / "psychology.tmpl").write_text(render.template_text("alertmanager/psychology.tmpl"))
    (tmp_path / "alertmanager.yml").write_text(
        render.alertmanager_config(variant, secrets_dir=str(secrets), templates_dir=str(templates)))
    yield variant, tmp_path


def test_amtool_checks_config(alertmanager_dir: tuple[MonitoringSettings, Path]) -> None:
    _, directory = alertmanager_dir
    result = run(tool("amtool"), "check-config", str(directory / "alertmanager.yml"))
    assert "1 templates" in result.stdout and "3 receivers" in result.stdout
    assert FAKE_WEBHOOK not in (directory / "alertmanager.yml").read_text()
    assert FAKE_ROUTING_KEY not in (directory / "alertmanager.yml").read_text()


def test_amtool_routes_by_severity(alertmanager_dir: tuple[MonitoringSettings, Path]) -> None:
    _, directory = alertmanager_dir
    config = f"--config.file={directory / 'alertmanager.yml'}"
    amtool = tool("amtool")
    for labels, receiver in ((("severity=critical", "alertname=DatabaseDown"), "critical"),
                             (("severity=warning", "alertname=HighCPUUsage"), "warning"),
                             (("alertname=Unlabelled",), "default")):
        result = run(amtool, "config", "routes", "test", config, *labels)
        assert result.stdout.strip() == receiver, (labels, result.stdout)


def test_receivers_match_the_configured_channels(variant: MonitoringSettings) -> None:
    document = yaml.safe_load(render.alertmanager_config(variant))
    receivers = {r["name"]: set(r) - {"name"} for r in document["receivers"]}
    if not (variant.webhook_enabled or variant.pagerduty_enabled):
        assert receivers == {name: {"sns_configs"} for name in ("default", "critical", "warning")}
    if variant.pagerduty_enabled and not variant.webhook_enabled:
        assert receivers["critical"] == {"pagerduty_configs"}
        assert receivers["warning"] == {"sns_configs"}
    if variant.webhook_enabled:
        assert all("slack_configs" in kinds for kinds in receivers.values())
    critical_route = document["route"]["routes"][0]
    assert critical_route["matchers"] == ['severity="critical"'] and critical_route["continue"] is True
    assert document["inhibit_rules"][0]["equal"] == ["alertname", "instance"]


# --- blackbox_exporter ------------------------------------------------------------------------

def test_blackbox_exporter_checks_config(variant: MonitoringSettings, tmp_path: Path) -> None:
    config = tmp_path / "blackbox.yml"
    config.write_text(render.blackbox_config(variant))
    run(tool("blackbox_exporter", "prometheus-blackbox-exporter"), f"--config.file={config}", "--config.check")
    modules = yaml.safe_load(config.read_text())["modules"]
    assert modules["http_2xx"]["http"]["fail_if_not_ssl"] is variant.https


# --- cloud-init, the boot script, systemd --------------------------------------------------------

def test_cloud_init_accepts_the_user_data(variant: MonitoringSettings, tmp_path: Path) -> None:
    decoded = decode_user_data(render.user_data_base64(variant))
    assert decoded == render.cloud_config(variant)
    path = tmp_path / "user-data.yaml"
    path.write_text(decoded)
    result = run(tool("cloud-init"), "schema", "--config-file", str(path))
    assert "Valid cloud-config" in result.stdout


def test_user_data_stays_under_ec2_limit(variant: MonitoringSettings) -> None:
    encoded = render.user_data_base64(variant)
    assert user_data_size(encoded) <= USER_DATA_LIMIT_BYTES  # what EC2 counts: the gzip bytes
    assert len(encoded) < USER_DATA_LIMIT_BYTES  # headroom: even the base64 text fits today


def test_shellcheck_passes_the_boot_script(variant: MonitoringSettings, tmp_path: Path) -> None:
    script = tmp_path / "bootstrap.sh"
    script.write_text(render.bootstrap_script(variant))
    run(tool("shellcheck"), "--severity=style", "--shell=bash", str(script))


def test_shellcheck_passes_the_bundle_installer(variant: MonitoringSettings, tmp_path: Path) -> None:
    script = tmp_path / "bundle-install.sh"
    script.write_text(render.bundle_install_script(variant))
    run(tool("shellcheck"), "--severity=style", "--shell=bash", str(script))


def test_boot_script_installs_the_bundle_before_anything_uses_its_files() -> None:
    """cloud-init no longer writes the configuration, units and scripts: the installer puts them
    in place first, and systemd reloads before any unit of the bundle is enabled."""
    lines = render.bootstrap_script(settings()).splitlines()

    def first(fragment: str) -> int:
        return next(number for number, line in enumerate(lines) if fragment in line and not line.lstrip().startswith("#"))

    installed = first('"$BUNDLE_INSTALL"')
    for user in ("systemctl enable --now dnf-automatic.timer", "/etc/prometheus/", '"$EXPORTER_SECRETS"',
                 "promtool check config", "amazon-cloudwatch-agent-ctl", "grafana cli"):
        assert installed < first(user), user
    enables = [n for n, line in enumerate(lines) if line.startswith("systemctl enable --now") and "dnf-automatic" not in line]
    reloads = [n for n, line in enumerate(lines) if line == "systemctl daemon-reload"]
    assert installed < reloads[0] and all(any(installed < r < n for r in reloads) for n in enables)


def test_shellcheck_passes_the_exporter_secrets_script(variant: MonitoringSettings, tmp_path: Path) -> None:
    script = tmp_path / "exporter-secrets.sh"
    script.write_text(render.exporter_secrets_script(variant))
    run(tool("shellcheck"), "--severity=style", "--shell=bash", str(script))


def test_host_applies_security_updates_daily() -> None:
    """The host is long-lived (not replaced on a newer image): dnf-automatic installs security
    updates every day, from the latest Amazon Linux release, not the image's frozen one."""
    import configparser

    files = render.host_files(settings())
    config = configparser.ConfigParser()
    config.read_string(files["/etc/dnf/automatic.conf"][0])
    assert config["commands"]["upgrade_type"] == "security"
    assert config["commands"]["download_updates"] == "yes" and config["commands"]["apply_updates"] == "yes"
    script = render.bootstrap_script(settings())
    assert "echo latest > /etc/dnf/vars/releasever" in script
    assert re.search(r"dnf install [^\n]*\\\n[^\n]* dnf-automatic\n", script)
    assert "systemctl enable --now dnf-automatic.timer" in script
    assert script.index("releasever") < script.index("dnf install") < script.index("dnf-automatic.timer")


def test_shellcheck_passes_the_grafana_admin_password_script(variant: MonitoringSettings, tmp_path: Path) -> None:
    script = tmp_path / "grafana-admin-password.sh"
    script.write_text(render.grafana_admin_password_script(variant))
    run(tool("shellcheck"), "--severity=style", "--shell=bash", str(script))


def test_boot_script_verifies_every_download() -> None:
    script = render.bootstrap_script(settings())
    for name, release in render.releases().items():
        assert release["url"].startswith("https://")
        line = next(line for line in script.splitlines() if line.startswith(f"install_release {name} "))
        assert release["sha256"] in line and release["url"] in line
    assert "sha256sum --check" in script and "--proto '=https'" in script
    commands = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in commands
    assert not [line for line in commands if re.match(r"set\s+-\w*x", line)], "secrets must never be traced"


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for `systemd-analyze verify --root`: the system's own units (targets such as
    sysinit.target) and stand-ins for the binaries the host installs at boot."""
    root = tmp_path_factory.mktemp("systemd-root")
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if system_units is None:
        pytest.skip("no systemd unit directory on this machine")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    for binary in ("usr/local/bin/prometheus", "usr/local/bin/alertmanager", "usr/local/bin/node_exporter",
                   "usr/local/bin/postgres_exporter", "usr/local/bin/redis_exporter", "usr/local/bin/blackbox_exporter",
                   "opt/grafana/bin/grafana", "opt/psychology-ops/venv/bin/python", "bin/kill", "usr/bin/install",
                   "usr/local/sbin/psychology-exporter-secrets", "usr/local/sbin/psychology-grafana-admin-password"):
        path = root / binary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return root


def test_node_exporter_reports_the_state_of_every_unit_we_ship(variant: MonitoringSettings) -> None:
    """SystemdUnitFailed can only fire for a unit node_exporter exports (its include pattern is
    anchored at both ends)."""
    shipped = render.systemd_units(variant)
    assert unwatched_units(shipped["node_exporter.service"], shipped) == []


def test_systemd_analyze_verifies_units_and_timers(variant: MonitoringSettings, systemd_root: Path) -> None:
    analyze = tool("systemd-analyze")
    unit_dir = systemd_root / "etc/systemd/system"
    if unit_dir.exists():
        shutil.rmtree(unit_dir)
    unit_dir.mkdir(parents=True)
    units = render.systemd_units(variant)
    for name, content in units.items():
        (unit_dir / name).write_text(content)
    result = run(analyze, "verify", f"--root={systemd_root}", "--man=no", *sorted(units))
    problems = [line for line in result.stderr.splitlines()
                if re.search(r"unknown|failed|invalid|ignoring|not executable|bad", line, re.IGNORECASE)]
    assert problems == [], result.stderr


def _stack_schedules() -> set[str]:
    schedules = set()
    for stack in ("staging", "prod"):
        values, _ = load_stack_config_file(stack)
        schedules |= {values["psychology-api:backupSchedule"], values["psychology-api:restoreDrillSchedule"]}
    return schedules


@pytest.mark.parametrize("expression", sorted(_stack_schedules() | {"*-*-* 02:00:00 Europe/Moscow"}))
def test_systemd_parses_the_configured_calendars(expression: str) -> None:
    result = run(tool("systemd-analyze"), "calendar", expression)
    assert "Next elapse:" in result.stdout


def test_backup_timer_fires_at_two_in_the_morning_moscow_time() -> None:
    result = run(tool("systemd-analyze"), "calendar", "--iterations=2", "*-*-* 02:00:00 Europe/Moscow")
    # Moscow is UTC+3 all year: 02:00 MSK is 23:00 UTC on the previous day.
    utc_lines = [line for line in result.stdout.splitlines() if "(in UTC)" in line or "Next elapse" in line]
    assert any("23:00:00 UTC" in line for line in utc_lines), result.stdout


def test_timers_and_services_call_the_contracted_commands() -> None:
    units = render.systemd_units(settings())
    backup = units["psychology-backup.service"]
    for flag in ("--secret-id", "--db-host", "--db-name", "--bucket", "--kms-key-id", "--textfile"):
        assert f"  {flag} " in backup
    assert "-m scripts.backup" in backup and "-m scripts.restore_drill" in units["psychology-restore-drill.service"]
    assert "Persistent=true" in units["psychology-backup.timer"]
    assert "RandomizedDelaySec=" in units["psychology-backup.timer"]


# --- Grafana ------------------------------------------------------------------------------------

def test_grafana_provisioning_points_at_local_prometheus_and_the_bundle() -> None:
    files = render.grafana_files(settings())
    datasource = yaml.safe_load(files["/etc/grafana/provisioning/datasources/prometheus.yml"])["datasources"][0]
    assert (datasource["type"], datasource["url"], datasource["uid"]) == ("prometheus", "http://127.0.0.1:9090", "prometheus")
    provider = yaml.safe_load(files["/etc/grafana/provisioning/dashboards/psychology-api.yml"])["providers"][0]
    assert provider["options"]["path"] == render.DASHBOARDS_DIR
    ini = files["/etc/grafana/grafana.ini"]
    assert "admin_password = $__file{/etc/grafana/secrets/admin_password}" in ini
    assert "allow_sign_up = false" in ini and "[auth.anonymous]\nenabled = false" in ini


EXPECTED_PANELS = {
    "golden-paths.json": ["G1 request rate", "G2 error ratio (5xx)", "G3 latency p50 / p95", "G4 request rate"],
    "errors-latency.json": ["5xx error ratio by endpoint", "Latency p50 / p95 / p99", "Throughput (requests per second)"],
    "integrations-health.json": ["Google Calendar API: reachable", "Payments (YooKassa) webhooks: application requests by status",
                                 "Telegram Bot API: reachable", "E-mail delivery rate",
                                 "Last successful backup (age)", "Last restore drill status"],
}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboards_are_valid_and_have_the_expected_panels() -> None:
    uids = set()
    for name, text in render.dashboards().items():
        dashboard = json.loads(text)
        assert dashboard["uid"] and dashboard["title"].startswith("psychology-api")
        uids.add(dashboard["uid"])
        titles = [p["title"] for p in _panels(dashboard)]
        assert set(EXPECTED_PANELS[name]) <= set(titles), name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in _panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    assert len(uids) == 3


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker, so every panel query becomes a recording rule
    (Grafana's variables replaced by what they expand to) and the file goes to `check rules`."""
    rules = []
    for name, text in render.dashboards().items():
        for panel in _panels(json.loads(text)):
            for target in panel["targets"]:
                expr = re.sub(r"\$__rate_interval", "5m", target["expr"])
                expr = re.sub(r"\$\w+", ".*", expr)
                rules.append({"record": f"dashboard:{name.split('.')[0].replace('-', '_')}:q{len(rules)}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run(tool("promtool"), "check", "rules", str(path))


# --- the bundle and the render module ------------------------------------------------------------

def test_ops_requirements_are_pinned_from_requirements_txt() -> None:
    requirements = render.ops_requirements()
    pinned = {line for line in (ROOT_DIR / "requirements.txt").read_text().splitlines() if "==" in line}
    locked = render.locked_requirements(requirements)
    tops = [locked[render._requirement_name(p)] for p in render.OPS_PACKAGES]
    assert tops and all(line in pinned for line in tops)
    assert [line.split("==")[0] for line in tops] == list(render.OPS_PACKAGES)


def test_ops_requirements_are_hashed_and_complete() -> None:
    """pip --require-hashes needs the whole closure, each with a hash: the file lists exactly
    what the pinned packages pull in, at the versions the tests run with."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = render.ops_requirements()
    locked = render.locked_requirements(text)
    listed = {canonicalize_name(Requirement(line).name): line.split("==")[1] for line in locked.values()}
    assert listed == installed_closure(list(render.OPS_PACKAGES))
    assert text.count("--hash=sha256:") >= len(listed)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in re.findall(r"--hash=sha256:(\S+)", text))
    assert render.bundle_files()["requirements-ops.txt"] == text
    assert '--require-hashes --only-binary=:all: -r "$OPS_DIR/current/requirements-ops.txt"' in render.bootstrap_script(settings())


def test_unhashed_or_drifted_ops_requirements_are_refused(tmp_path: Path) -> None:
    locked = tmp_path / "requirements-ops.txt"
    locked.write_text("boto3==1.44.8\n")
    with pytest.raises(ValueError, match="sha256 hash"):
        render.ops_requirements(locked_file=locked)
    original = render.OPS_REQUIREMENTS_FILE.read_text()
    locked.write_text(original.replace("tenacity==9.2.1", "tenacity==9.0.0"))
    with pytest.raises(ValueError, match="regenerate"):
        render.ops_requirements(locked_file=locked)


def test_bundle_holds_the_scripts_the_timers_run_and_nothing_else() -> None:
    units = render.systemd_units(settings())
    modules = {m for text in units.values() for m in re.findall(r"-m scripts\.(\w+)", text)}
    assert modules == {"backup", "restore_drill"}
    for module in (*modules, "restore", "lib/cli", "lib/db", "lib/aws", "lib/secrets"):
        assert render.is_ops_script(f"{module}.py"), module
    assert render.is_ops_script("__init__.py")
    for unrelated in ("plan.py", "smoke.py", "migrate.py", "lib/__pycache__/cli.cpython-311.pyc"):
        assert not render.is_ops_script(unrelated), unrelated
    assert "scripts/plan.py" not in render.bundle_files()


def test_bundle_is_deterministic_and_named_by_content() -> None:
    first, second = render.bundle_files(), render.bundle_files()
    assert first == second and render.bundle_key(first) == render.bundle_key(second)
    changed = dict(first, **{"monitoring/rules/api.yml": first["monitoring/rules/api.yml"] + "\n"})
    assert render.bundle_key(changed) != render.bundle_key(first)


def test_stack_bundle_carries_the_rendered_files_and_a_change_reaches_the_user_data() -> None:
    """The per-stack bundle holds the host's rendered files with their manifest and checksum
    list; a change to any of them (here a schedule in a timer) changes the bundle's key and the
    SHA-256 the user data pins."""
    s = settings()
    bundle = render.ops_bundle(s)
    assert render.ops_bundle(s) == bundle and set(render.bundle_files().items()) <= set(bundle.items())
    rendered = render.host_files(s)
    assert {f"host{path}" for path in rendered} | set(render.bundle_files()) | {"host-files.txt", "SHA256SUMS"} == set(bundle)
    assert bundle["host-files.txt"] == "".join(f"{mode} root:root {path}\n" for path, (_, mode) in sorted(rendered.items()))
    assert bundle["host/etc/systemd/system/psychology-backup.timer"] == render.systemd_units(s)["psychology-backup.timer"]
    rescheduled = render.ops_bundle(dataclasses.replace(s, backup_schedule="*-*-* 03:00:00 Europe/Moscow"))
    assert render.bundle_key(rescheduled) != render.bundle_key(bundle)
    pinned = f"readonly BUNDLE_SHA256={render.bundle_digest(bundle)}\n"
    assert pinned in render.cloud_config(s)
    assert pinned not in render.cloud_config(dataclasses.replace(s, backup_schedule="*-*-* 03:00:00 Europe/Moscow"))


@pytest.mark.parametrize("path", ["etc/relative.conf", "/etc/two words.conf", "/etc/../root/.ssh/authorized_keys"])
def test_host_files_need_plain_absolute_paths(path: str) -> None:
    with pytest.raises(ValueError, match="absolute plain path"):
        render.host_files_manifest({path: ("x", "0644")})


def test_templates_fail_on_a_missing_value() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render.render_template("systemd/psychology-backup.timer.j2", stack="prod")


def test_releases_are_pinned_https_with_sha256() -> None:
    data = render.releases()
    assert set(data) == {"prometheus", "alertmanager", "node_exporter", "postgres_exporter",
                         "redis_exporter", "blackbox_exporter", "grafana"}
    for release in data.values():
        assert release["url"].startswith("https://") and re.fullmatch(r"[0-9a-f]{64}", release["sha256"])
        assert release["version"] in release["url"]


def test_restore_drill_spools_on_the_data_volume() -> None:
    unit = render.systemd_units(settings())["psychology-restore-drill.service"]
    spool = f"{render.DATA_DIR}/restore-spool"
    assert f"--spool-dir {spool}" in unit
    assert re.search(rf"^ReadWritePaths=.*\s{re.escape(spool)}$", unit, re.M)
    assert f"-o psychology-ops -g psychology-ops -m 0700 {spool}" in unit


def test_exporters_without_their_secrets_stay_off() -> None:
    """The component leaves postgres_exporter and redis_exporter out when it gets no secret for them."""
    bare = VARIANTS["staging-http-no-exporters"]
    jobs = {j["job_name"] for j in yaml.safe_load(render.prometheus_config(bare))["scrape_configs"]}
    assert "postgres" not in jobs and "redis" not in jobs
    script = render.exporter_secrets_script(bare)
    assert "readonly DB_MONITOR_SECRET_ARN=''\n" in script and "readonly REDIS_SECRET_ARN=''\n" in script
    full = {j["job_name"] for j in yaml.safe_load(render.prometheus_config(settings()))["scrape_configs"]}
    assert {"postgres", "redis"} <= full


# --- planned maintenance: probe, alert, routing, inhibition ----------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 15) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local test servers
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextlib.contextmanager
def serving(command: list[str], ready_url: str) -> Iterator[None]:
    """A validator run as a server until the block ends (stopped by its own pid)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if http_get(ready_url, timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.communicate()[0]
                pytest.fail(f"{command[0]} did not start:\n{output}")
            time.sleep(0.2)
        yield
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


# What the load balancer answers: its maintenance rule, its own 503 with no healthy target
# (an outage), and the application's health endpoint.
LB_ANSWERS = {
    "/maintenance/": (503, "text/html; charset=utf-8", maintenance_page()),
    "/no-healthy-target/": (503, "text/html", "<html><body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>"),
    "/health/": (200, "application/json", '{"status": "ok"}'),
}


@pytest.fixture(scope="module")
def load_balancer_answers() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, content_type, body = LB_ANSWERS[self.path]
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("variant_name", ["staging-http-no-exporters", "prod-sns-only"])
def test_blackbox_maintenance_probe_tells_planned_maintenance_from_an_outage(
        variant_name: str, load_balancer_answers: str, tmp_path: Path) -> None:
    """The real blackbox_exporter with the rendered modules: http_maintenance succeeds only on
    the maintenance page's 503, http_2xx only on the healthy answer. Over plain HTTP the
    maintenance probe of a TLS stack fails like http_2xx does (TLS stays required)."""
    variant = VARIANTS[variant_name]
    config = tmp_path / "blackbox.yml"
    config.write_text(render.blackbox_config(variant))
    port = free_port()
    exporter = tool("blackbox_exporter", "prometheus-blackbox-exporter")
    results: dict[tuple[str, str], int] = {}
    with serving([exporter, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
                 f"http://127.0.0.1:{port}/-/healthy"):
        for module in ("http_maintenance", "http_2xx"):
            for path in LB_ANSWERS:
                query = urllib.parse.urlencode({"module": module, "target": load_balancer_answers + path})
                status, text = http_get(f"http://127.0.0.1:{port}/probe?{query}")
                assert status == 200, text
                results[module, path] = int(re.search(r"^probe_success (\d)$", text, re.M).group(1))  # type: ignore[union-attr]
    if variant.https:
        assert set(results.values()) == {0}, results
    else:
        assert results == {
            ("http_maintenance", "/maintenance/"): 1, ("http_maintenance", "/no-healthy-target/"): 0,
            ("http_maintenance", "/health/"): 0,
            ("http_2xx", "/maintenance/"): 0, ("http_2xx", "/no-healthy-target/"): 0, ("http_2xx", "/health/"): 1}


def test_maintenance_probe_watches_the_public_urls(variant: MonitoringSettings) -> None:
    jobs = {j["job_name"]: j for j in yaml.safe_load(render.prometheus_config(variant))["scrape_configs"]}
    maintenance = jobs["blackbox-maintenance"]
    assert maintenance["params"] == {"module": ["http_maintenance"]}
    # The same targets and instance label as blackbox-http: PublicEndpointDown joins on instance.
    assert maintenance["static_configs"] == jobs["blackbox-http"]["static_configs"]
    assert maintenance["relabel_configs"] == jobs["blackbox-http"]["relabel_configs"]
    module = yaml.safe_load(render.blackbox_config(variant))["modules"]["http_maintenance"]["http"]
    assert module["valid_status_codes"] == [503]
    assert module["fail_if_body_not_matches_regexp"] == [MAINTENANCE_MARKER]
    assert re.search(MAINTENANCE_MARKER, maintenance_page())


def test_maintenance_alert_informs_without_paging(alertmanager_dir: tuple[MonitoringSettings, Path]) -> None:
    """Routing only (amtool): MaintenanceMode reaches the default receiver, which has no pager."""
    variant, directory = alertmanager_dir
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={directory / 'alertmanager.yml'}",
                 "alertname=MaintenanceMode", "severity=info", "job=blackbox-maintenance")
    assert result.stdout.strip() == "default"
    receivers = {r["name"]: r for r in yaml.safe_load(render.alertmanager_config(variant))["receivers"]}
    assert "pagerduty_configs" not in receivers["default"]


def post_alerts(base: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(alerts).encode(),  # noqa: S310 - local Alertmanager
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local Alertmanager
        assert response.status == 200


def inhibited_alerts(base: str) -> dict[tuple[str, str], bool]:
    """(alertname, cluster) -> inhibited, as Alertmanager's API reports it."""
    _, text = http_get(f"{base}/api/v2/alerts?active=true&inhibited=true&silenced=true")
    return {(a["labels"]["alertname"], a["labels"]["cluster"]): bool(a["status"]["inhibitedBy"]) for a in json.loads(text)}


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_alertmanager_holds_back_page_alerts_while_maintenance_fires(
        alertmanager_dir: tuple[MonitoringSettings, Path]) -> None:
    """The rendered configuration in a real Alertmanager: with MaintenanceMode active, exactly
    the public-endpoint, error-rate, latency and availability alerts of the same cluster are
    inhibited (never notified); other alerts, and those of another cluster, are not; once
    MaintenanceMode resolves nothing is held back. Receivers are never reached in this test
    (their group_wait outlasts it)."""
    _, directory = alertmanager_dir
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [tool("alertmanager", "prometheus-alertmanager"), f"--config.file={directory / 'alertmanager.yml'}",
               f"--storage.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
               "--cluster.listen-address="]
    cluster, other = "psychology-api-prod", "psychology-api-staging"
    page_alerts = [{"labels": {"alertname": name, "cluster": cluster, "severity": "critical", "job": "api"}}
                   for name in render.MAINTENANCE_INHIBITS]
    unrelated = [{"labels": {"alertname": "DatabaseDown", "cluster": cluster, "severity": "critical", "job": "postgres"}},
                 {"labels": {"alertname": "PublicEndpointDown", "cluster": other, "severity": "critical", "job": "blackbox-http"}}]
    maintenance = {"labels": {"alertname": "MaintenanceMode", "cluster": cluster, "severity": "info", "job": "blackbox-maintenance"}}
    expected_held = {(name, cluster) for name in render.MAINTENANCE_INHIBITS}
    with serving(command, f"{base}/-/ready"):
        post_alerts(base, [maintenance, *page_alerts, *unrelated])
        wait_for(lambda: {k for k, held in inhibited_alerts(base).items() if held} == expected_held,
                 "the page alerts to be inhibited")
        state = inhibited_alerts(base)
        assert state[("DatabaseDown", cluster)] is False and state[("PublicEndpointDown", other)] is False
        assert state[("MaintenanceMode", cluster)] is False

        resolved = dict(maintenance, endsAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60)))
        post_alerts(base, [resolved])
        wait_for(lambda: not any(inhibited_alerts(base).values()), "inhibition to end with maintenance")
        assert ("MaintenanceMode", cluster) not in inhibited_alerts(base)
