"""Bootstrap files of the API hosts, rendered from the templates in components/templates/api/.

Each file a host needs (nginx, gunicorn, systemd units, the bootstrap and secrets scripts, the
CloudWatch agent and logrotate configuration) is a real template file. `render_api_files`
renders them all; `render_api_user_data` wraps them into one `#cloud-config` document, which
`components.userdata.encode_user_data` compresses and base64-encodes for the launch template.

Only non-secret values are rendered: secret ARNs (identifiers, not credentials) go in, and
the hosts fetch the secret values at boot with their instance role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import jinja2

from components.releases import pinned_releases
from components.security import APP_METRICS_PORT
from scripts.lib import rds_ca

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "api"

# node_exporter is not in the Amazon Linux 2023 repositories: fetched over HTTPS from the
# project's GitHub release and checked against the published SHA-256 before it is installed.
# The same pinned node_exporter as the monitoring host (components/templates/releases.yaml).
NODE_EXPORTER_VERSION = str(pinned_releases()["node_exporter"]["version"])
NODE_EXPORTER_SHA256 = str(pinned_releases()["node_exporter"]["sha256"])

# Packages from the Amazon Linux 2023 repositories (served over HTTPS, which the hosts'
# egress rules allow). The AWS CLI v2 ships with the image.
PACKAGES = ("nginx", "python3.11", "python3.11-pip", "amazon-cloudwatch-agent", "jq", "logrotate", "tar", "gzip")

SERVICE_USER = "psychology-api"
APP_ROOT = "/opt/psychology-api"
GUNICORN_BIND = "127.0.0.1:8000"
# Under /run: the gunicorn workers' shared metrics files (prometheus_client multiprocess mode).
METRICS_RUNTIME_DIRECTORY = "psychology-api-metrics"
# Django's settings module and WSGI application inside the release archive (spec 3.5, 3.7.2).
DJANGO_SETTINGS_MODULE = "config.settings.production"
WSGI_APPLICATION = "config.wsgi:application"
CLIENT_MAX_BODY_SIZE = "20m"
# The RDS certificate authorities the app verifies the database against (DB_SSLMODE=verify-full):
# downloaded at boot, accepted only with the SHA-256 of the copy in scripts/lib/certs/.
RDS_CA_BUNDLE_PATH = "/etc/psychology-api/rds-ca-bundle.pem"


@dataclass(frozen=True)
class HostFile:
    path: str
    template: str
    permissions: str
    owner: str = "root:root"


# Every file cloud-init writes, in the order it writes them. Scripts are root-only.
API_HOST_FILES: tuple[HostFile, ...] = (
    # Staged here and installed over the package's nginx.conf by the bootstrap, once the
    # package is present (cloud-init writes files before it installs packages).
    HostFile("/etc/psychology-api/nginx.conf", "nginx.conf.j2", "0644"),
    HostFile("/etc/nginx/conf.d/psychology-api.conf", "nginx-site.conf.j2", "0644"),
    HostFile("/etc/nginx/psychology-api-security-headers.conf", "nginx-security-headers.conf.j2", "0644"),
    HostFile("/etc/psychology-api/gunicorn.conf.py", "gunicorn.conf.py.j2", "0644"),
    HostFile("/etc/psychology-api/settings.env", "settings.env.j2", "0644"),
    HostFile("/etc/systemd/system/psychology-api.service", "psychology-api.service.j2", "0644"),
    HostFile("/etc/systemd/system/psychology-api-secrets-refresh.service",
             "psychology-api-secrets-refresh.service.j2", "0644"),
    HostFile("/etc/systemd/system/psychology-api-secrets-refresh.timer",
             "psychology-api-secrets-refresh.timer.j2", "0644"),
    HostFile("/etc/systemd/system/node_exporter.service", "node_exporter.service.j2", "0644"),
    HostFile("/etc/logrotate.d/psychology-api", "logrotate.j2", "0644"),
    HostFile("/opt/aws/amazon-cloudwatch-agent/etc/psychology-api.json", "amazon-cloudwatch-agent.json.j2", "0644"),
    HostFile("/usr/local/sbin/psychology-api-fetch-env", "fetch-env.sh.j2", "0750"),
    HostFile("/usr/local/sbin/psychology-api-bootstrap", "bootstrap.sh.j2", "0750"),
)


@dataclass(frozen=True)
class ApiHostSettings:
    """Everything the templates need; plain values only (resolved Outputs)."""

    environment: str
    region: str
    app_version: str
    artifact_bucket: str
    artifact_key: str
    app_port: int
    health_check_path: str
    vpc_cidr: str
    # Host name clients use (domain, or the load balancer's DNS name): ALLOWED_HOSTS, and the
    # Host the health check presents to Django.
    public_host: str
    log_group_name: str
    app_secret_arn: str
    integration_secret_arns: Mapping[str, str] = field(default_factory=dict)
    database_secret_arn: Optional[str] = None
    redis_secret_arn: Optional[str] = None


@dataclass(frozen=True)
class RenderedFile:
    path: str
    permissions: str
    owner: str
    content: str


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - configuration files and shell, not HTML
    )


def _context(settings: ApiHostSettings) -> dict[str, object]:
    return {
        "s": settings,
        "integration_secret_arns": [settings.integration_secret_arns[k] for k in sorted(settings.integration_secret_arns)],
        "service_user": SERVICE_USER,
        "app_root": APP_ROOT,
        "gunicorn_bind": GUNICORN_BIND,
        "metrics_runtime_directory": METRICS_RUNTIME_DIRECTORY,
        "metrics_port": APP_METRICS_PORT,
        "django_settings_module": DJANGO_SETTINGS_MODULE,
        "wsgi_application": WSGI_APPLICATION,
        "client_max_body_size": CLIENT_MAX_BODY_SIZE,
        "node_exporter_version": NODE_EXPORTER_VERSION,
        "node_exporter_sha256": NODE_EXPORTER_SHA256,
        "packages": PACKAGES,
        "rds_ca_bundle_url": rds_ca.RDS_CA_BUNDLE_URL,
        # Empty while the repository holds no bundle: the bootstrap then stops (never unverified TLS).
        "rds_ca_bundle_sha256": rds_ca.bundle_sha256() or "",
        "rds_ca_bundle_path": RDS_CA_BUNDLE_PATH,
    }


def render_api_files(settings: ApiHostSettings) -> list[RenderedFile]:
    """Every bootstrap file of an API host, rendered."""
    env = _environment()
    context = _context(settings)
    return [RenderedFile(f.path, f.permissions, f.owner, env.get_template(f.template).render(context))
            for f in API_HOST_FILES]


def render_api_user_data(settings: ApiHostSettings) -> str:
    """The `#cloud-config` document that writes every file and runs the bootstrap."""
    env = _environment()
    context = dict(_context(settings), files=render_api_files(settings))
    return env.get_template("cloud-config.yaml.j2").render(context)
