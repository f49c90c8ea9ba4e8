"""The API hosts' bootstrap files, taken from the launch template's user data of each stack's
plan and checked with the real tools: cloud-init, nginx, shellcheck, systemd-analyze, jq."""

from __future__ import annotations

import ast
import base64
import functools
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.hostconfig import (
    NODE_EXPORTER_SHA256,
    NODE_EXPORTER_VERSION,
    RDS_CA_BUNDLE_PATH,
    ApiHostSettings,
    render_api_files,
)
from components.userdata import USER_DATA_LIMIT_BYTES, decode_user_data
from harness.mock_engine import Plan, run_program
from scripts.lib import rds_ca
from tests.services import self_signed_certificate
from tests.unit.node_exporter import unwatched_units

LT = "aws:ec2/launchTemplate:LaunchTemplate"
# Created on the host at boot (the release's virtualenv, the downloaded node_exporter, the
# scripts cloud-init writes): systemd-analyze cannot find them in this container.
INSTALLED_AT_BOOT = {
    "/opt/psychology-api/current/venv/bin/gunicorn",
    "/usr/local/bin/node_exporter",
    "/usr/local/sbin/psychology-api-fetch-env",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    return path


@dataclass
class HostFiles:
    stack: str
    user_data: str          # the launch template's userData (gzip + base64)
    cloud_config: str       # the decoded #cloud-config text
    document: dict[str, Any]
    root: Path              # every write_files entry written below this directory

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def text(self, host_path: str) -> str:
        return self.path(host_path).read_text()


def host_files_of(plan: Plan, root: Path) -> HostFiles:
    user_data = plan.one(LT).inputs["userData"]
    cloud_config = decode_user_data(user_data)
    document = yaml.safe_load(cloud_config)
    for entry in document["write_files"]:
        target = root / entry["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["content"])
    return HostFiles(plan.stack, user_data, cloud_config, document, root)


@pytest.fixture(scope="module")
def host(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> HostFiles:
    return host_files_of(plan, tmp_path_factory.mktemp(f"host-{plan.stack}"))


# --- cloud-init document -------------------------------------------------------------------

def test_user_data_is_gzip_base64_cloud_config_under_the_ec2_limit(host: HostFiles) -> None:
    raw = base64.b64decode(host.user_data)
    assert raw[:2] == b"\x1f\x8b"  # gzip: cloud-init decompresses it
    assert len(raw) < USER_DATA_LIMIT_BYTES
    assert gzip.decompress(raw).decode().startswith("#cloud-config\n")


def test_cloud_init_schema_accepts_the_user_data(host: HostFiles, tmp_path: Path) -> None:
    cloud_init = require("cloud-init")
    config = tmp_path / "user-data.yaml"
    config.write_text(host.cloud_config)
    result = subprocess.run([cloud_init, "schema", "--config-file", str(config)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_config_installs_packages_writes_files_and_runs_the_bootstrap(host: HostFiles) -> None:
    doc = host.document
    assert set(doc) == {"package_update", "package_upgrade", "packages", "write_files", "runcmd"}
    assert {"nginx", "python3.11", "python3.11-pip", "amazon-cloudwatch-agent", "jq"} <= set(doc["packages"])
    assert doc["runcmd"] == [["/usr/local/sbin/psychology-api-bootstrap"]]
    for entry in doc["write_files"]:
        assert isinstance(entry["permissions"], str) and re.fullmatch(r"0[0-7]{3}", entry["permissions"])
        if entry["path"].startswith("/usr/local/sbin/"):
            assert entry["permissions"] == "0750"


def test_write_files_carry_the_rendered_templates_unchanged(host: HostFiles, plan: Plan) -> None:
    """YAML embedding keeps every file byte for byte (indentation, blank lines, quotes)."""
    settings = settings_from(host)
    rendered = {f.path: f.content for f in render_api_files(settings)}
    written = {e["path"]: e["content"] for e in host.document["write_files"]}
    assert written == rendered


def grab(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, pattern
    return found.group(1)


def settings_from(host: HostFiles) -> ApiHostSettings:
    """The settings the component rendered with, read back from the files themselves."""
    fetch = host.text("/usr/local/sbin/psychology-api-fetch-env")
    env = dict(line.split("=", 1) for line in host.text("/etc/psychology-api/settings.env").splitlines()
               if line and not line.startswith("#"))
    bootstrap = host.text("/usr/local/sbin/psychology-api-bootstrap")
    artifact = re.search(r'ARTIFACT_URL="s3://([^/]+)/([^"]+)"', bootstrap)
    assert artifact is not None
    integrations = re.search(r"INTEGRATION_SECRET_ARNS=\(\n(.*?)\n\)", fetch, re.S)
    assert integrations is not None
    arns = re.findall(r'"([^"]+)"', integrations.group(1))
    cw = json.loads(host.text("/opt/aws/amazon-cloudwatch-agent/etc/psychology-api.json"))
    site = host.text("/etc/nginx/conf.d/psychology-api.conf")
    return ApiHostSettings(
        environment=env["APP_ENVIRONMENT"], region=env["AWS_DEFAULT_REGION"], app_version=env["APP_VERSION"],
        artifact_bucket=artifact.group(1), artifact_key=artifact.group(2),
        app_port=int(grab(r"listen (\d+) default_server", site)),
        health_check_path=grab(r"location = (\S+) \{", site),
        vpc_cidr=grab(r"set_real_ip_from (\S+);", site),
        public_host=env["ALLOWED_HOSTS"],
        log_group_name=cw["logs"]["logs_collected"]["files"]["collect_list"][0]["log_group_name"],
        app_secret_arn=grab(r'APP_SECRET_ARN="([^"]+)"', fetch),
        integration_secret_arns={str(i): arn for i, arn in enumerate(arns)},
        database_secret_arn=grab(r'DATABASE_SECRET_ARN="([^"]*)"', fetch) or None,
        redis_secret_arn=grab(r'REDIS_SECRET_ARN="([^"]*)"', fetch) or None,
    )


# --- secrets stay out of user data ---------------------------------------------------------

def test_no_secret_value_reaches_user_data() -> None:
    fake = {"paymentsSecretKey": "test-payments-secret-3f9a1c", "telegramBotToken": "123456:telegram-token-7b2e",
            "smtpPassword": "smtp-password-c41d", "googleCalendarClientSecret": "gcal-secret-9e0a"}
    plan = run_program("staging", secret_overrides=fake)
    text = decode_user_data(plan.one(LT).inputs["userData"])
    for value in fake.values():
        assert value not in text
    generated = [r.outputs["result"] for r in plan.of_type("random:index/randomPassword:RandomPassword")]
    assert len(generated) >= 2  # the Django key and the Redis AUTH token at least
    for value in generated:
        assert value not in text
    # What the hosts get instead: the ARNs they read at boot.
    for arn in [plan.outputs["app_secret_arn"], *plan.outputs["integration_secret_arns"].values(),
                plan.outputs["redis_secret_arn"]]:
        assert f'"{arn}"' in text


def test_fetch_env_reads_each_secret_by_arn(host: HostFiles, plan: Plan) -> None:
    fetch = host.text("/usr/local/sbin/psychology-api-fetch-env")
    assert f'readonly APP_SECRET_ARN="{plan.outputs["app_secret_arn"]}"' in fetch
    for arn in plan.outputs["integration_secret_arns"].values():
        assert f'  "{arn}"' in fetch
    assert "umask 077" in fetch
    assert "chmod 0600" in fetch
    assert "set -euo pipefail" in fetch


# --- shell scripts ---------------------------------------------------------------------------

def scripts(host: HostFiles) -> list[Path]:
    return [host.path(e["path"]) for e in host.document["write_files"] if e["content"].startswith("#!")]


def test_every_shell_script_passes_shellcheck(host: HostFiles) -> None:
    shellcheck = require("shellcheck")
    found = scripts(host)
    assert {p.name for p in found} == {"psychology-api-bootstrap", "psychology-api-fetch-env"}
    result = subprocess.run([shellcheck, "--shell=bash", "--severity=style", *map(str, found)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bootstrap_uses_imdsv2_and_pinned_node_exporter(host: HostFiles) -> None:
    bootstrap = host.text("/usr/local/sbin/psychology-api-bootstrap")
    assert bootstrap.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in bootstrap
    assert "X-aws-ec2-metadata-token-ttl-seconds" in bootstrap and "X-aws-ec2-metadata-token:" in bootstrap
    assert f'NODE_EXPORTER_VERSION="{NODE_EXPORTER_VERSION}"' in bootstrap
    assert re.fullmatch(r"[0-9a-f]{64}", NODE_EXPORTER_SHA256)
    assert f'NODE_EXPORTER_SHA256="{NODE_EXPORTER_SHA256}"' in bootstrap
    assert "sha256sum --check" in bootstrap
    assert 'NODE_EXPORTER_URL="https://github.com/prometheus/node_exporter/releases/download/' in bootstrap
    assert "--proto '=https'" in bootstrap
    assert "pip\" install --quiet --no-index --find-links" in bootstrap
    assert "collectstatic --noinput" in bootstrap
    assert "/var/lib/node_exporter/textfile" in bootstrap


# --- TLS to the database: the RDS certificate authorities -------------------------------------

def test_the_app_verifies_the_database_certificate(host: HostFiles) -> None:
    """verify-full against the bundle the bootstrap installs, for the app's settings and for
    libpq itself (PG* variables), SCRAM only."""
    env = dict(line.split("=", 1) for line in host.text("/etc/psychology-api/settings.env").splitlines()
               if line and not line.startswith("#"))
    assert {k: env.get(k) for k in ("DB_SSLROOTCERT", "PGSSLROOTCERT", "PGSSLMODE", "PGREQUIREAUTH")} == {
        "DB_SSLROOTCERT": RDS_CA_BUNDLE_PATH, "PGSSLROOTCERT": RDS_CA_BUNDLE_PATH, "PGSSLMODE": "verify-full",
        "PGREQUIREAUTH": "scram-sha-256"}
    bootstrap = host.text("/usr/local/sbin/psychology-api-bootstrap")
    assert f'RDS_CA_BUNDLE_URL="{rds_ca.RDS_CA_BUNDLE_URL}"' in bootstrap
    assert f'RDS_CA_BUNDLE_SHA256="{rds_ca.bundle_sha256() or ""}"' in bootstrap
    main = bootstrap[bootstrap.index("main() {"):]
    assert main.index("install_rds_ca_bundle") < main.index("psychology-api.service")


@contextmanager
def https_server(directory: Path, certificate: tuple[Path, Path]) -> Iterator[str]:
    """A local HTTPS server for `directory`, standing in for AWS's trust store."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def install_bundle(host: HostFiles, tmp_path: Path, url: str, sha256: str, cert: Path) -> subprocess.CompletedProcess[str]:
    """The bootstrap's install_rds_ca_bundle, run by real bash, curl and sha256sum."""
    require("curl")
    bootstrap = host.text("/usr/local/sbin/psychology-api-bootstrap")
    start = bootstrap.index("install_rds_ca_bundle() {")
    function = bootstrap[start:bootstrap.index("\n}\n", start) + 3]
    runner = tmp_path / "install.sh"
    runner.write_text(f'set -euo pipefail\nlog() {{ echo "$*" >&2; }}\nRDS_CA_BUNDLE_URL="{url}"\n'
                      f'RDS_CA_BUNDLE_SHA256="{sha256}"\nRDS_CA_BUNDLE_PATH="{tmp_path}/installed.pem"\n'
                      f"{function}\ninstall_rds_ca_bundle\n")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path / "tmp"), "CURL_CA_BUNDLE": str(cert)}
    return subprocess.run(["bash", str(runner)], capture_output=True, text=True, env=env, check=False, timeout=60)


def test_the_bootstrap_installs_only_the_pinned_bundle(host: HostFiles, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    certificate = self_signed_certificate(tmp_path)
    bundle = served / "global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\ninvented test content\n-----END CERTIFICATE-----\n")
    pin = hashlib.sha256(bundle.read_bytes()).hexdigest()
    with https_server(served, certificate) as base:
        url = f"{base}/global-bundle.pem"
        installed = install_bundle(host, tmp_path, url, pin, certificate[0])
        assert installed.returncode == 0, installed.stderr
        assert (tmp_path / "installed.pem").read_bytes() == bundle.read_bytes()
        assert stat.S_IMODE((tmp_path / "installed.pem").stat().st_mode) == 0o644
        (tmp_path / "installed.pem").unlink()

        bundle.write_text(bundle.read_text() + "-----BEGIN CERTIFICATE-----\nan added authority\n-----END CERTIFICATE-----\n")
        tampered = install_bundle(host, tmp_path, url, pin, certificate[0])
        assert tampered.returncode == 1 and "does not match the pinned SHA-256" in tampered.stderr
        assert "(docs/security.md#tls-to-the-database)" in tampered.stderr
        assert not (tmp_path / "installed.pem").exists()

    unpinned = install_bundle(host, tmp_path, "https://127.0.0.1:9/never-fetched.pem", "", certificate[0])
    assert unpinned.returncode == 1 and "no RDS CA bundle is pinned" in unpinned.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # no download left behind


def test_the_pin_is_the_sha256_of_the_copy_in_the_repository(host: HostFiles, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "rds-global-bundle.pem"
    copy.write_text("-----BEGIN CERTIFICATE-----\ninvented test content\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", copy)
    rendered = {f.path: f.content for f in render_api_files(settings_from(host))}
    bootstrap = rendered["/usr/local/sbin/psychology-api-bootstrap"]
    assert f'RDS_CA_BUNDLE_SHA256="{hashlib.sha256(copy.read_bytes()).hexdigest()}"' in bootstrap


def env_lines(host: HostFiles, secret: dict[str, Any], program: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run one of the script's jq programs (real jq) on a secret document."""
    require("jq")
    fetch = host.text("/usr/local/sbin/psychology-api-fetch-env")
    start = fetch.index("readonly JQ_DEFS=")
    definitions = fetch[start:fetch.index("# Prints the secret's JSON")]
    runner = tmp_path / "run-jq.sh"
    runner.write_text(f"set -euo pipefail\n{definitions}\njq -r \"${program}\"\n")
    return subprocess.run(["bash", str(runner)], input=json.dumps(secret), capture_output=True, text=True, check=False)


def sourced(lines: str, tmp_path: Path, names: list[str]) -> dict[str, str]:
    env_file = tmp_path / "env"
    env_file.write_text(lines)
    script = f"set -a; . {env_file}; " + "; ".join(f'printf "%s\\0" "${name}"' for name in names)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={}).stdout
    return dict(zip(names, out.split("\0")[:-1], strict=True))


HARD = 'a"b\\c`d$e !#%&*()-_=+[]{}<>:?\''


def test_secret_values_survive_quoting(host: HostFiles, tmp_path: Path) -> None:
    result = env_lines(host, {"SECRET_KEY": HARD, "EMPTY": ""}, "JQ_DIRECT", tmp_path)
    assert result.returncode == 0, result.stderr
    assert sourced(result.stdout, tmp_path, ["SECRET_KEY", "EMPTY"]) == {"SECRET_KEY": HARD, "EMPTY": ""}


def test_secret_key_fallbacks_become_one_comma_separated_variable(host: HostFiles, tmp_path: Path) -> None:
    """The app secret after a rotation (scripts/dbops/generated_rotation.py): the signing key and
    [announced next key, previous key], which settings split on commas."""
    current, announced, previous = "k1!#%&*()-_=+[]{}<>:?" + "a" * 40, "n2" + "b" * 60, "p0" + "c" * 60
    app = {"SECRET_KEY": current, "SECRET_KEY_FALLBACKS": [announced, previous]}
    result = env_lines(host, app, "JQ_DIRECT", tmp_path)
    assert result.returncode == 0, result.stderr
    env = sourced(result.stdout, tmp_path, ["SECRET_KEY", "SECRET_KEY_FALLBACKS"])
    assert env == {"SECRET_KEY": current, "SECRET_KEY_FALLBACKS": f"{announced},{previous}"}
    assert [k for k in env["SECRET_KEY_FALLBACKS"].split(",") if k] == [announced, previous]
    assert sourced(env_lines(host, {"SECRET_KEY": current, "SECRET_KEY_FALLBACKS": []}, "JQ_DIRECT", tmp_path).stdout,
                   tmp_path, ["SECRET_KEY_FALLBACKS"]) == {"SECRET_KEY_FALLBACKS": ""}


def test_database_and_redis_secrets_map_to_the_contract(host: HostFiles, tmp_path: Path) -> None:
    db = {"engine": "postgres", "host": "db.internal", "port": 5432, "dbname": "psychology",
          "username": "app_b", "password": HARD}
    result = env_lines(host, db, "JQ_DATABASE", tmp_path)
    assert result.returncode == 0, result.stderr
    names = ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE"]
    assert sourced(result.stdout, tmp_path, names) == {
        "DB_HOST": "db.internal", "DB_PORT": "5432", "DB_NAME": "psychology", "DB_USER": "app_b",
        "DB_PASSWORD": HARD, "DB_SSLMODE": "verify-full"}

    redis = {"host": "master.redis.internal", "port": 6379, "auth_token": "to:k/en#?", "tls": True}
    result = env_lines(host, redis, "JQ_REDIS", tmp_path)
    assert result.returncode == 0, result.stderr
    values = sourced(result.stdout, tmp_path, ["REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_URL"])
    assert values == {"REDIS_HOST": "master.redis.internal", "REDIS_PORT": "6379", "REDIS_PASSWORD": "to:k/en#?",
                      "REDIS_URL": "rediss://:to%3Ak%2Fen%23%3F@master.redis.internal:6379/0"}


@pytest.mark.parametrize(("program", "secret"), [
    ("JQ_DATABASE", {"host": "db", "port": 5432, "dbname": "d", "username": "u"}),   # no password
    ("JQ_REDIS", {"host": "r", "port": 6379, "tls": True}),                          # no token
    ("JQ_DIRECT", {"NOT A NAME": "x"}),
    ("JQ_DIRECT", {"MULTILINE": "line1\nline2"}),
    ("JQ_DIRECT", {"SECRET_KEY_FALLBACKS": ["x\"line2,", "y"]}),
])
def test_malformed_secrets_fail_without_printing_values(host: HostFiles, tmp_path: Path,
                                                        program: str, secret: dict[str, Any]) -> None:
    result = env_lines(host, secret, program, tmp_path)
    assert result.returncode != 0
    assert "line2" not in result.stderr and "x\"" not in result.stderr


# --- nginx -------------------------------------------------------------------------------------

def test_nginx_accepts_the_configuration(host: HostFiles, tmp_path: Path) -> None:
    nginx = require("nginx")
    conf = tmp_path / "nginx"
    (conf / "conf.d").mkdir(parents=True)
    # The layout of /etc/nginx on the host: main file, mime types, conf.d, the header snippet.
    shutil.copy(host.path("/etc/psychology-api/nginx.conf"), conf / "nginx.conf")
    shutil.copy(host.path("/etc/nginx/conf.d/psychology-api.conf"), conf / "conf.d" / "psychology-api.conf")
    shutil.copy(host.path("/etc/nginx/psychology-api-security-headers.conf"), conf)
    mime = Path("/etc/nginx/mime.types")
    if not mime.exists():
        pytest.skip("the nginx package's mime.types is missing")
    shutil.copy(mime, conf)
    result = subprocess.run(
        [nginx, "-t", "-c", str(conf / "nginx.conf"), "-p", str(conf),
         "-g", f"pid {conf}/nginx.pid; error_log stderr;"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_site_proxies_like_the_spec(host: HostFiles, plan: Plan) -> None:
    site = host.text("/etc/nginx/conf.d/psychology-api.conf")
    assert "listen 80 default_server;" in site
    assert "ssl" not in site  # TLS ends at the load balancer
    assert "proxy_pass http://127.0.0.1:8000;" in site
    assert "proxy_set_header Host $host;" in site
    assert "proxy_set_header X-Real-IP $remote_addr;" in site
    assert "proxy_set_header X-Forwarded-Proto $api_forwarded_proto;" in site
    assert "default $http_x_forwarded_proto;" in site
    assert f"set_real_ip_from {plan.outputs['vpc_cidr']};" in site
    assert "real_ip_header X-Forwarded-For;" in site
    assert "client_max_body_size" in site
    static = site[site.index("location /static/"):site.index("location /media/")]
    assert "alias /var/www/static/;" in static and "expires 30d;" in static
    assert 'add_header Cache-Control "public, immutable";' in static
    media = site[site.index("location /media/"):site.index("location / {")]
    assert "alias /var/www/media/;" in media and "expires 7d;" in media and 'Cache-Control "public"' in media
    # Every location that sets its own headers re-includes the security headers.
    assert site.count("include psychology-api-security-headers.conf;") == 3
    headers = host.text("/etc/nginx/psychology-api-security-headers.conf")
    for header in ('X-Frame-Options "SAMEORIGIN"', 'X-Content-Type-Options "nosniff"', "Referrer-Policy"):
        assert header in headers


def test_health_check_reaches_django_as_an_allowed_https_request(host: HostFiles, plan: Plan) -> None:
    site = host.text("/etc/nginx/conf.d/psychology-api.conf")
    health = site[site.index("location = /health/ {"):site.index("location /static/")]
    public_host = plan.outputs["api_url"].split("://", 1)[1]
    assert f'proxy_set_header Host "{public_host}";' in health
    assert "proxy_set_header X-Forwarded-Proto https;" in health
    assert "proxy_pass http://127.0.0.1:8000;" in health
    settings = host.text("/etc/psychology-api/settings.env")
    assert f"ALLOWED_HOSTS={public_host}\n" in settings


def test_nginx_keeps_connections_longer_than_the_load_balancer(host: HostFiles, plan: Plan) -> None:
    main = host.text("/etc/psychology-api/nginx.conf")
    keepalive = int(grab(r"keepalive_timeout (\d+)s;", main))
    assert keepalive > plan.one("aws:lb/loadBalancer:LoadBalancer").inputs["idleTimeout"]


# --- gunicorn ------------------------------------------------------------------------------------

def test_gunicorn_settings_follow_the_spec(host: HostFiles) -> None:
    source = host.text("/etc/psychology-api/gunicorn.conf.py")
    ast.parse(source)
    namespace: dict[str, Any] = {}
    exec(compile(source, "gunicorn.conf.py", "exec"), namespace)  # noqa: S102 - our own rendered file
    import multiprocessing
    assert namespace["bind"] == "127.0.0.1:8000"
    assert namespace["workers"] == multiprocessing.cpu_count() * 2 + 1
    assert namespace["worker_class"] == "sync"
    assert namespace["timeout"] == 30
    assert namespace["keepalive"] == 2
    assert (namespace["max_requests"], namespace["max_requests_jitter"]) == (1000, 50)
    assert namespace["preload_app"] is True
    assert namespace["control_socket_disable"] is True
    assert namespace["accesslog"] == "/var/log/gunicorn/access.log"
    assert namespace["errorlog"] == "/var/log/gunicorn/error.log"


# The metrics gunicorn serves from its workers: tests/unit/test_gunicorn_metrics.py.


# --- systemd -------------------------------------------------------------------------------------

def units(host: HostFiles) -> list[Path]:
    return sorted(host.path(e["path"]) for e in host.document["write_files"]
                  if e["path"].startswith("/etc/systemd/system/"))


def test_systemd_analyze_verifies_the_units(host: HostFiles) -> None:
    analyze = require("systemd-analyze")
    found = units(host)
    assert {p.name for p in found} == {"psychology-api.service", "psychology-api-secrets-refresh.service",
                                       "psychology-api-secrets-refresh.timer", "node_exporter.service"}
    result = subprocess.run([analyze, "verify", *map(str, found)], capture_output=True, text=True,
                            check=False, cwd=found[0].parent)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = []
    for line in lines:
        missing = re.fullmatch(r"\S+: Command (\S+) is not executable: No such file or directory", line)
        if missing is None or missing.group(1) not in INSTALLED_AT_BOOT:
            unexpected.append(line)
    # Anything else (unknown keys, bad values, bad sections) fails the test.
    assert unexpected == [], "\n".join(lines)


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_node_exporter_reports_the_state_of_every_unit_we_ship(host: HostFiles) -> None:
    """SystemdUnitFailed can only fire for a unit node_exporter exports: a failing daily secrets
    refresh would otherwise go unseen until the next rotation broke the host's login."""
    shipped = [path.name for path in units(host)]
    assert "psychology-api-secrets-refresh.service" in shipped
    assert unwatched_units(host.text("/etc/systemd/system/node_exporter.service"), shipped) == []


def test_app_unit_is_hardened_and_restarts(host: HostFiles) -> None:
    unit = unit_settings(host.path("/etc/systemd/system/psychology-api.service"))
    assert unit["Type"] == ["notify"]
    assert unit["User"] == ["psychology-api"] and unit["Group"] == ["psychology-api"]
    assert unit["EnvironmentFile"] == ["/etc/psychology-api/settings.env", "/etc/psychology-api/env"]
    assert unit["Restart"] == ["always"] and unit["RestartSec"] == ["5"]
    assert unit["ExecStart"][0].startswith("/opt/psychology-api/current/venv/bin/gunicorn --config /etc/psychology-api/gunicorn.conf.py")
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["PrivateTmp"] == ["yes"]
    assert unit["ReadWritePaths"] == ["/var/log/gunicorn /var/log/django /var/www/media"]


def test_secrets_refresh_runs_daily_and_restarts_only_on_change(host: HostFiles) -> None:
    timer = unit_settings(host.path("/etc/systemd/system/psychology-api-secrets-refresh.timer"))
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"]
    service = unit_settings(host.path("/etc/systemd/system/psychology-api-secrets-refresh.service"))
    assert service["ExecStart"] == ["/usr/local/sbin/psychology-api-fetch-env --restart-on-change"]
    fetch = host.text("/usr/local/sbin/psychology-api-fetch-env")
    assert 'cmp -s "$tmp" "$ENV_FILE"' in fetch
    assert "systemctl restart psychology-api.service" in fetch


def test_node_exporter_listens_on_9100_with_the_textfile_collector(host: HostFiles) -> None:
    unit = unit_settings(host.path("/etc/systemd/system/node_exporter.service"))
    assert "--web.listen-address=:9100" in unit["ExecStart"][0]
    assert "--collector.textfile.directory=/var/lib/node_exporter/textfile" in unit["ExecStart"][0]
    assert unit["User"] == ["node_exporter"]


def test_cloudwatch_agent_ships_logs_to_the_encrypted_group(host: HostFiles, plan: Plan) -> None:
    config = json.loads(host.text("/opt/aws/amazon-cloudwatch-agent/etc/psychology-api.json"))
    collected = config["logs"]["logs_collected"]["files"]["collect_list"]
    group = plan.named("api-logs")
    assert {c["log_group_name"] for c in collected} == {group.inputs["name"]}
    assert group.inputs["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert {"/var/log/nginx/access.log", "/var/log/gunicorn/error.log"} <= {c["file_path"] for c in collected}
