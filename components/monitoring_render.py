"""Rendering of the monitoring host's files: Prometheus, Alertmanager, blackbox_exporter,
Grafana, systemd units and timers, the boot script, the cloud-init user data and the
operations bundle.

Everything here is a pure function of `MonitoringSettings` (plain values, no Outputs), so the
same code renders the user data inside `pulumi up` and the files the validator tests feed to
promtool, amtool, cloud-init, shellcheck and systemd-analyze. Templates live in
`components/templates/monitoring/` and are rendered with StrictUndefined: a missing value is an
error, never an empty string in a config file.

Two delivery paths:
* the user data (cloud-init, gzip + base64, under EC2's 16 KB limit) carries only what runs
  before the bundle is there: the boot script and the script that installs the bundle, which
  pins the bundle's SHA-256;
* the operations bundle (a zip in the backups bucket under `ops/`, rendered per stack, its name
  carrying the SHA-256 of its checksum list) carries everything else: the host's rendered files
  (configs, systemd units and timers, the credential scripts; installed from its manifest),
  the backup/restore scripts with their pinned requirements, the alert rule files and the
  dashboards. The host refuses a bundle whose files do not match the pinned checksum list.
Any change to any file changes the bundle's SHA-256 and so the user data: the host is replaced
and boots with exactly what the repository holds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Optional

import jinja2
import yaml

from components.loadbalancer import MAINTENANCE_MARKER
from components.releases import pinned_releases
from components.security import APP_METRICS_PORT
from components.storage import BACKUP_PREFIX
from components.userdata import encode_user_data
from scripts.lib import rds_ca

ROOT_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates" / "monitoring"

# Paths on the host.
DATA_DIR = "/var/lib/monitoring"                       # the separate, persistent EBS volume
TEXTFILE_DIR = "/var/lib/node_exporter/textfile"       # contract: backup metrics go here
OPS_DIR = "/opt/psychology-ops"
SECRETS_DIR = "/etc/psychology/secrets"
ALERTMANAGER_SECRETS_DIR = "/etc/alertmanager/secrets"
RULES_DIR = "/etc/prometheus/rules"
ALERTMANAGER_TEMPLATES_DIR = "/etc/alertmanager/templates"
DASHBOARDS_DIR = f"{OPS_DIR}/current/monitoring/dashboards"
BOOTSTRAP_PATH = "/usr/local/sbin/psychology-monitoring-bootstrap"
BUNDLE_INSTALL_PATH = "/usr/local/sbin/psychology-monitoring-bundle"
EXPORTER_SECRETS_PATH = "/usr/local/sbin/psychology-exporter-secrets"
# The RDS certificate authorities, from the operations bundle (the scripts use the same file).
DB_CA_BUNDLE = f"{OPS_DIR}/current/{rds_ca.PACKAGE_PATH}"
GRAFANA_ADMIN_PASSWORD_PATH = "/usr/local/sbin/psychology-grafana-admin-password"  # noqa: S105 - a path
GRAFANA_PASSWORD_FILE = "/etc/grafana/secrets/admin_password"  # noqa: S105 - a path

CLOUDWATCH_NAMESPACE = "PsychologyApi/MonitoringHost"
# A month (the SLO window) and the restore drill's 35-day checks, which need that much history,
# with a margin for the oldest block (Prometheus drops whole blocks of up to a tenth of this).
RETENTION_DAYS = 40

# What scripts/ imports on the host; versions come from requirements.txt (one place).
OPS_PACKAGES = ("boto3", "psycopg[binary]", "rich", "tenacity")
OPS_REQUIREMENTS_FILE = TEMPLATES_DIR / "requirements-ops.txt"
# The part of scripts/ the host runs: the shared layer and the backup/restore tools. Other
# operator scripts stay out, so changing them does not replace the monitoring host.
OPS_SCRIPT_PATTERNS = ("__init__.py", "lib/*.py", "lib/**/*.py", "backup*.py", "restore*.py",
                       "backup*/**/*.py", "restore*/**/*.py")

# External APIs probed for reachability over HTTPS (unauthenticated: 2xx-4xx all prove the
# path works). E-mail cannot be probed from here: the monitoring host has no SMTP egress.
INTEGRATION_PROBES = (
    ("google-calendar", "https://www.googleapis.com/calendar/v3/colors"),
    ("payments", "https://api.yookassa.ru/v3/me"),
    ("telegram", "https://api.telegram.org/"),
)

# Alerts that planned maintenance (alert MaintenanceMode) holds back: what users see through
# the load balancer.
MAINTENANCE_INHIBITS = ("PublicEndpointDown", "APIHighErrorRate", "APIHighLatency", "APIAvailabilityBelowSLO")

UNIT_TEMPLATES = (
    "prometheus.service", "alertmanager.service", "node_exporter.service", "postgres_exporter.service",
    "redis_exporter.service", "blackbox_exporter.service", "grafana-server.service",
    "psychology-backup.service", "psychology-backup.timer",
    "psychology-restore-drill.service", "psychology-restore-drill.timer",
    "psychology-exporter-secrets-refresh.service", "psychology-exporter-secrets-refresh.timer",
    "psychology-grafana-admin-password.service", "psychology-grafana-admin-password.timer",
)
DASHBOARD_FILES = ("golden-paths.json", "errors-latency.json", "integrations-health.json")

# The operations bundle's own files: the checksum list (its SHA-256 is pinned in the user data),
# the manifest of host files ("MODE OWNER:GROUP PATH" lines) and the folder those files are in.
CHECKSUMS_FILE = "SHA256SUMS"
HOST_FILES_MANIFEST = "host-files.txt"
HOST_FILES_DIR = "host"
HOST_FILES_OWNER = "root:root"
# What the shell on the host handles without quoting (sha256sum lists, `read`, install's arguments).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/-]+")
_MODE = re.compile(r"0[0-7]{3}")


@dataclass(frozen=True)
class MonitoringSettings:
    """Everything that differs between stacks, as plain values."""

    project: str
    stack: str
    environment: str
    region: str
    public_url: str                       # https://api.example.com or http://<alb dns>
    https: bool
    alerts_topic_arn: str
    backup_bucket: str
    kms_key_arn: str
    db_host: str
    db_name: str
    db_backup_secret_arn: str
    db_drill_secret_arn: str
    grafana_secret_arn: str
    grafana_secret_name: str
    data_volume_id: str
    volume_gb: int
    backup_schedule: str
    restore_drill_schedule: str
    db_port: int = 5432
    db_monitor_secret_arn: Optional[str] = None
    redis_secret_arn: Optional[str] = None
    alerting_secret_arn: Optional[str] = None
    webhook_enabled: bool = False
    pagerduty_enabled: bool = False
    postgres_client_major: int = 16
    probe_paths: tuple[str, ...] = ("/health/", "/api/v1/health/")

    @property
    def probe_urls(self) -> list[str]:
        base = self.public_url.rstrip("/")
        return [f"{base}{path}" for path in self.probe_paths]


def _shquote(value: Any) -> str:
    return shlex.quote("" if value is None else str(value))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - YAML, INI, shell and unit files, never HTML
    )
    env.filters["shquote"] = _shquote
    return env


def render_template(name: str, **values: Any) -> str:
    return _environment().get_template(name).render(**values)


def template_text(name: str) -> str:
    return (TEMPLATES_DIR / name).read_text()


@cache
def releases() -> dict[str, dict[str, Any]]:
    """Pinned versions, URLs and SHA-256 sums of the software downloaded at boot."""
    return pinned_releases()


def _common(s: MonitoringSettings) -> dict[str, Any]:
    return {
        "project": s.project, "stack": s.stack, "environment": s.environment, "region": s.region,
        "data_dir": DATA_DIR, "textfile_dir": TEXTFILE_DIR, "ops_dir": OPS_DIR, "secrets_dir": SECRETS_DIR,
    }


# --- Prometheus ----------------------------------------------------------------------

def prometheus_config(s: MonitoringSettings, rules_dir: str = RULES_DIR) -> str:
    return render_template(
        "prometheus/prometheus.yml.j2", **_common(s),
        rules_dir=rules_dir,
        postgres_exporter=s.db_monitor_secret_arn is not None,
        redis_exporter=s.redis_secret_arn is not None,
        db_instance_label=s.db_host.split(".")[0],
        redis_instance_label="redis",
        api_jobs=[
            {"name": "api-node", "port": 9100, "metrics_path": "/metrics"},
            # django-prometheus through nginx's metrics port (not reachable from the load balancer).
            {"name": "api", "port": APP_METRICS_PORT, "metrics_path": "/metrics"},
        ],
        probe_urls=s.probe_urls,
        integrations=[{"name": name, "url": url} for name, url in INTEGRATION_PROBES],
    )


def rule_files() -> dict[str, str]:
    rules = TEMPLATES_DIR / "prometheus" / "rules"
    return {p.name: p.read_text() for p in sorted(rules.glob("*.yml"))}


def blackbox_config(s: MonitoringSettings) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", MAINTENANCE_MARKER):
        raise ValueError(f"the maintenance marker {MAINTENANCE_MARKER!r} must be a plain word: it is used as a regexp")
    return render_template("blackbox/blackbox.yml.j2", **_common(s), https=s.https, maintenance_marker=MAINTENANCE_MARKER)


# --- Alertmanager ----------------------------------------------------------------------

def alert_receivers(s: MonitoringSettings) -> list[dict[str, Any]]:
    """Spec 5.3.2 routing with the channels this stack has. Chat (a Slack-compatible incoming
    webhook) takes every severity, PagerDuty pages critical alerts only; a receiver left
    without a channel sends to the SNS topic, so no alert is ever dropped."""
    chat, pager = s.webhook_enabled, s.pagerduty_enabled
    return [
        {"name": "default", "chat": chat, "pager": False, "sns": not chat},
        {"name": "critical", "chat": chat, "pager": pager, "sns": not (chat or pager)},
        {"name": "warning", "chat": chat, "pager": False, "sns": not chat},
    ]


def alertmanager_config(s: MonitoringSettings, secrets_dir: str = ALERTMANAGER_SECRETS_DIR,
                        templates_dir: str = ALERTMANAGER_TEMPLATES_DIR) -> str:
    channels = [name for name, on in (("chat webhook", s.webhook_enabled), ("PagerDuty (critical)", s.pagerduty_enabled)) if on]
    comment = (f"Channels: {', '.join(channels)}; a receiver without one sends to the SNS topic." if channels
               else "No chat webhook or PagerDuty key configured: every alert goes to the SNS topic.")
    values = {**_common(s), "secrets_dir": secrets_dir}
    return render_template(
        "alertmanager/alertmanager.yml.j2", **values,
        templates_dir=templates_dir, alerts_topic_arn=s.alerts_topic_arn,
        receivers=alert_receivers(s), channels_comment=comment, maintenance_inhibits=MAINTENANCE_INHIBITS)


# --- Grafana ---------------------------------------------------------------------------

def grafana_files(s: MonitoringSettings, dashboards_dir: str = DASHBOARDS_DIR) -> dict[str, str]:
    return {
        "/etc/grafana/grafana.ini": render_template(
            "grafana/grafana.ini.j2", **_common(s), grafana_secret_name=s.grafana_secret_name),
        "/etc/grafana/provisioning/datasources/prometheus.yml": template_text("grafana/datasource.yml"),
        "/etc/grafana/provisioning/dashboards/psychology-api.yml": render_template(
            "grafana/dashboards.yml.j2", dashboards_dir=dashboards_dir),
    }


def dashboards() -> dict[str, str]:
    return {name: template_text(f"grafana/dashboards/{name}") for name in DASHBOARD_FILES}


# --- systemd -----------------------------------------------------------------------------

def systemd_units(s: MonitoringSettings) -> dict[str, str]:
    values = {
        **_common(s),
        "retention_days": RETENTION_DAYS,
        # Leave a fifth of the volume to Grafana, Alertmanager and compaction headroom.
        "retention_size_gb": max(1, int(s.volume_gb * 0.8)),
        "db_backup_secret_arn": s.db_backup_secret_arn,
        "db_drill_secret_arn": s.db_drill_secret_arn,
        "db_host": s.db_host,
        "db_name": s.db_name,
        "backup_bucket": s.backup_bucket,
        "backup_prefix": BACKUP_PREFIX,
        "kms_key_arn": s.kms_key_arn,
        "scratch_db": f"{s.db_name}_restore_drill",
        "backup_schedule": s.backup_schedule,
        "restore_drill_schedule": s.restore_drill_schedule,
        "exporter_secrets_path": EXPORTER_SECRETS_PATH,
        "grafana_admin_password_path": GRAFANA_ADMIN_PASSWORD_PATH,
    }
    return {name: render_template(f"systemd/{name}.j2", **values) for name in UNIT_TEMPLATES}


# --- the boot script and cloud-init ---------------------------------------------------------

def postgres_client_package(major: int) -> str:
    # Amazon Linux 2023 ships PostgreSQL clients 15, 16 and 17; pg_dump must be at least as
    # new as the server, and a newer one dumps older servers.
    return f"postgresql{max(16, major)}"


def exporter_secrets_script(s: MonitoringSettings, *, secrets_dir: str = SECRETS_DIR,
                            postgres_exporter_group: str = "postgres_exporter",
                            redis_exporter_group: str = "redis_exporter") -> str:
    """The script that writes the exporters' credentials at boot and daily (the tests render it
    with a scratch directory and their own group to run it)."""
    return render_template(
        "host/exporter-secrets.sh.j2", **{**_common(s), "secrets_dir": secrets_dir},
        db_monitor_secret_arn=s.db_monitor_secret_arn or "", redis_secret_arn=s.redis_secret_arn or "",
        db_host=s.db_host, db_port=s.db_port, db_name=s.db_name, db_ca_bundle=DB_CA_BUNDLE,
        postgres_exporter_group=postgres_exporter_group, redis_exporter_group=redis_exporter_group)


def grafana_admin_password_script(s: MonitoringSettings, *, password_file: str = GRAFANA_PASSWORD_FILE,
                                  grafana_home: str = "/opt/grafana", grafana_db: str = f"{DATA_DIR}/grafana/grafana.db",
                                  grafana_user: str = "grafana") -> str:
    """The script that applies a rotated Grafana admin password (the tests render it with a
    scratch directory, their own user and a stand-in for the Grafana CLI to run it)."""
    return render_template(
        "host/grafana-admin-password.sh.j2", **_common(s),
        grafana_secret_arn=s.grafana_secret_arn, grafana_secret_name=s.grafana_secret_name,
        password_file=password_file, grafana_home=grafana_home, grafana_config="/etc/grafana/grafana.ini",
        grafana_db=grafana_db,
        grafana_user=grafana_user)


def bootstrap_script(s: MonitoringSettings) -> str:
    return render_template(
        "host/bootstrap.sh.j2", **_common(s),
        data_volume_id=s.data_volume_id,
        grafana_secret_arn=s.grafana_secret_arn, alerting_secret_arn=s.alerting_secret_arn or "",
        db_monitor_secret_arn=s.db_monitor_secret_arn or "", redis_secret_arn=s.redis_secret_arn or "",
        db_host=s.db_host, db_port=s.db_port, db_name=s.db_name,
        webhook_enabled=s.webhook_enabled, pagerduty_enabled=s.pagerduty_enabled,
        postgres_client_package=postgres_client_package(s.postgres_client_major),
        exporter_secrets_path=EXPORTER_SECRETS_PATH, bundle_install_path=BUNDLE_INSTALL_PATH,
        releases=releases())


def bundle_install_script(s: MonitoringSettings, *, ops_dir: str = OPS_DIR, host_root: str = "",
                          python: str = "python3.11") -> str:
    """The script that downloads, verifies and installs this stack's operations bundle (the
    tests render it with a scratch directory as the host's root and run it)."""
    digest = bundle_digest(ops_bundle(s))
    return render_template(
        "host/bundle-install.sh.j2", **{**_common(s), "ops_dir": ops_dir},
        backup_bucket=s.backup_bucket, bundle_key=bundle_key_of(digest), bundle_sha256=digest,
        host_root=host_root, python=python, checksums_file=CHECKSUMS_FILE, manifest_file=HOST_FILES_MANIFEST,
        host_files_dir=HOST_FILES_DIR)


def boot_files(s: MonitoringSettings) -> dict[str, tuple[str, str]]:
    """What cloud-init writes: only what runs before the operations bundle is on the host."""
    return {
        BOOTSTRAP_PATH: (bootstrap_script(s), "0755"),
        BUNDLE_INSTALL_PATH: (bundle_install_script(s), "0755"),
    }


def host_files(s: MonitoringSettings) -> dict[str, tuple[str, str]]:
    """Every rendered file the operations bundle installs on the host, root-owned:
    path -> (content, permissions). None holds a secret."""
    files: dict[str, tuple[str, str]] = {
        "/etc/prometheus/prometheus.yml": (prometheus_config(s), "0644"),
        "/etc/alertmanager/alertmanager.yml": (alertmanager_config(s), "0644"),
        "/etc/blackbox_exporter/blackbox.yml": (blackbox_config(s), "0644"),
        "/etc/psychology/cloudwatch-agent.json": (render_template(
            "host/cloudwatch-agent.json.j2", cloudwatch_namespace=CLOUDWATCH_NAMESPACE, data_dir=DATA_DIR), "0644"),
        EXPORTER_SECRETS_PATH: (exporter_secrets_script(s), "0755"),
        "/etc/dnf/automatic.conf": (render_template("host/dnf-automatic.conf.j2"), "0644"),
        GRAFANA_ADMIN_PASSWORD_PATH: (grafana_admin_password_script(s), "0755"),
    }
    for path, content in grafana_files(s).items():
        files[path] = (content, "0644")
    for name, content in systemd_units(s).items():
        files[f"/etc/systemd/system/{name}"] = (content, "0644")
    return files


class _LiteralDumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def cloud_config(s: MonitoringSettings) -> str:
    document = {
        "write_files": [
            {"path": path, "owner": "root:root", "permissions": mode, "content": content}
            for path, (content, mode) in sorted(boot_files(s).items())
        ],
        "runcmd": [[BOOTSTRAP_PATH]],
    }
    header = (f"#cloud-config\n# Monitoring host of {s.project}/{s.stack}, rendered by components/monitoring_render.py.\n")
    return header + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000, allow_unicode=True)


def user_data_base64(s: MonitoringSettings) -> str:
    """The cloud-config, gzipped and base64-encoded (components/userdata.py)."""
    return encode_user_data(cloud_config(s), host="monitoring host")


# --- the operations bundle -------------------------------------------------------------------

def _requirement_name(line: str) -> str:
    return re.split(r"[=<>!~;\s]", line, maxsplit=1)[0].strip().lower()


def ops_requirements(requirements_file: Path = ROOT_DIR / "requirements.txt",
                     locked_file: Path = OPS_REQUIREMENTS_FILE) -> str:
    """The host's virtualenv requirements: the hashed file, whose top-level pins must be the
    ones requirements.txt has (so the host runs what the tests ran)."""
    pinned = {}
    for raw in requirements_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            pinned[_requirement_name(line)] = line
    missing = [p for p in OPS_PACKAGES if p.lower() not in pinned]
    if missing:
        raise ValueError(f"requirements.txt pins none of {missing}, which the ops scripts need")
    text = locked_file.read_text()
    locked = locked_requirements(text)
    for package in OPS_PACKAGES:
        if locked.get(_requirement_name(package)) != pinned[package.lower()]:
            raise ValueError(f"{locked_file.name} pins {locked.get(_requirement_name(package))!r}, requirements.txt "
                             f"{pinned[package.lower()]!r}: regenerate it (see its header)")
    return text


def locked_requirements(text: str) -> dict[str, str]:
    """name -> "name==version" of a hashed requirements file; every entry must carry a hash."""
    entries: dict[str, str] = {}
    for entry in re.split(r"\n(?=\S)", "\n".join(line for line in text.splitlines() if not line.startswith("#"))):
        requirement = entry.split("\\", 1)[0].strip()
        if not requirement:
            continue
        if "==" not in requirement or "--hash=sha256:" not in entry:
            raise ValueError(f"every ops requirement needs == and a sha256 hash: {requirement}")
        entries[_requirement_name(requirement)] = requirement
    return entries


def is_ops_script(relative_path: str) -> bool:
    """Whether a file of scripts/ (path relative to it) belongs in the operations bundle."""
    if "__pycache__" in relative_path.split("/"):
        return False
    return any(fnmatch.fnmatchcase(relative_path, pattern) for pattern in OPS_SCRIPT_PATTERNS)


def bundle_files() -> dict[str, str]:
    """Archive path -> text of the part of the operations bundle that is the same for every
    stack (sorted, deterministic); `ops_bundle` adds the stack's rendered files."""
    files: dict[str, str] = {}
    scripts = ROOT_DIR / "scripts"
    for path in sorted(scripts.rglob("*.py")):
        if is_ops_script(path.relative_to(scripts).as_posix()):
            files[path.relative_to(ROOT_DIR).as_posix()] = path.read_text()
    if rds_ca.RDS_CA_BUNDLE.is_file():  # what the scripts verify the database against
        files[rds_ca.PACKAGE_PATH] = rds_ca.RDS_CA_BUNDLE.read_text()
    files["requirements-ops.txt"] = ops_requirements()
    for name, content in rule_files().items():
        files[f"monitoring/rules/{name}"] = content
    for name, content in dashboards().items():
        files[f"monitoring/dashboards/{name}"] = content
    files["monitoring/alertmanager/psychology.tmpl"] = template_text("alertmanager/psychology.tmpl")
    return dict(sorted(files.items()))


def host_files_manifest(files: Mapping[str, tuple[str, str]]) -> str:
    """"MODE OWNER:GROUP PATH" lines, what the bundle's install script reads."""
    lines = []
    for path, (_, mode) in sorted(files.items()):
        if not (path.startswith("/") and _PLAIN_PATH.fullmatch(path) and ".." not in path.split("/") and _MODE.fullmatch(mode)):
            raise ValueError(f"host file {path!r} (mode {mode!r}) needs an absolute plain path and an octal mode")
        lines.append(f"{mode} {HOST_FILES_OWNER} {path}\n")
    return "".join(lines)


def ops_bundle(s: MonitoringSettings) -> dict[str, str]:
    """Archive path -> text of the stack's whole operations bundle: the shared files
    (`bundle_files`), the host's rendered files with their manifest, and the checksum list."""
    rendered = host_files(s)
    files = dict(bundle_files())
    for path, (content, _) in rendered.items():
        files[f"{HOST_FILES_DIR}{path}"] = content
    files[HOST_FILES_MANIFEST] = host_files_manifest(rendered)
    files[CHECKSUMS_FILE] = bundle_checksums(files)
    return dict(sorted(files.items()))


def bundle_checksums(files: Mapping[str, str]) -> str:
    """`sha256sum` lines of every file but the list itself (what `sha256sum --check` reads)."""
    lines = []
    for name in sorted(files):
        if name == CHECKSUMS_FILE:
            continue
        if not _PLAIN_PATH.fullmatch(name) or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bundle member {name!r} needs a plain relative path")
        lines.append(f"{hashlib.sha256(files[name].encode()).hexdigest()}  {name}\n")
    return "".join(lines)


def bundle_digest(files: Mapping[str, str]) -> str:
    """The SHA-256 of the checksum list: it covers every member's name and content."""
    return hashlib.sha256(bundle_checksums(files).encode()).hexdigest()


def bundle_key_of(digest: str) -> str:
    return f"ops/monitoring-bundle-{digest[:16]}.zip"


def bundle_key(files: Mapping[str, str]) -> str:
    return bundle_key_of(bundle_digest(files))
