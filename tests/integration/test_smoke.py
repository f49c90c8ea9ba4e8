"""Smoke tests against a local web server (HTTP and HTTPS with a self-signed certificate, the
redirect and HSTS of the load balancer), the real database and Redis, and the in-VPC function's
answer through moto's Lambda."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scripts import smoke as smoke_cli
from scripts.dbops import handlers
from scripts.dbops.checks import RedisTarget, redis_check
from scripts.lib.db import target_from_document
from tests.integration.conftest import REDIS_PASSWORD
from tests.integration.dbops_support import DbSecrets, create_function, queue_lambda_result, read_json
from tests.services import MotoServer, PgServer, free_port, self_signed_certificate, tls_redis_server

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FAST = ["--attempts", "2", "--initial-wait", "0.05", "--max-wait", "0.1"]


@dataclass
class Site:
    """What the fake site answers; tests flip these to inject failures."""
    health_status: int = 200
    api_status: str = "ok"
    cache_control: str = "public, max-age=2592000, immutable"
    maintenance: bool = False
    requests: list[str] = field(default_factory=list)


def _handler(site: Site, https_port: int | None, hsts: bool) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def _send(self, status: int, body: bytes, content_type: str = "text/plain", headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if hsts:
                self.send_header("Strict-Transport-Security", "max-age=31536000; includeSubDomains; preload")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            site.requests.append(self.path)
            if https_port is not None:  # the plain-HTTP listener only redirects
                self._send(301, b"", headers={"Location": f"https://127.0.0.1:{https_port}{self.path}"})
            elif site.maintenance:
                self._send(503, b"<h1>Maintenance</h1>", "text/html")
            elif self.path == "/health/":
                self._send(site.health_status, b"ok")
            elif self.path == "/api/v1/health/":
                self._send(200, json.dumps({"status": site.api_status}).encode(), "application/json")
            elif self.path == "/static/admin/css/base.css":
                self._send(200, b"body{}", "text/css", {"Cache-Control": site.cache_control})
            else:
                self._send(404, b"not found")

    return Handler


@dataclass
class WebServer:
    url: str
    http_url: str
    ca_bundle: str
    site: Site


def _serve(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    return self_signed_certificate(directory)


@pytest.fixture
def web(certificate: tuple[Path, Path]) -> Iterator[WebServer]:
    """HTTPS on one port (with HSTS), a plain-HTTP port that answers 301 to it."""
    cert, key = certificate
    site = Site()
    https_port = free_port()
    tls = http.server.ThreadingHTTPServer(("127.0.0.1", https_port), _handler(site, None, hsts=True))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(site, https_port, hsts=False))
    _serve(tls)
    _serve(plain)
    try:
        yield WebServer(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{plain.server_address[1]}", str(cert), site)
    finally:
        for server in (tls, plain):
            server.shutdown()
            server.server_close()


@pytest.fixture
def http_only() -> Iterator[WebServer]:
    site = Site()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(site, None, hsts=False))
    _serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield WebServer(url, url, "", site)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def redis_url(redis_proc: Any) -> str:
    return f"redis://:{REDIS_PASSWORD}@{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture
def app_dsn(sm: Any, app_ready: DbSecrets, pg_server: PgServer) -> str:
    """The application's current credentials, as the application would connect."""
    doc = read_json(sm, app_ready.app_arn)
    return pg_server.dsn(app_ready.dbname, user=doc["username"], password=doc["password"])


def run_smoke(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = smoke_cli.main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def verdicts(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in doc["checks"]}


def test_all_checks_pass(web: WebServer, app_dsn: str, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                                "--dsn", app_dsn, "--redis-url", redis_url], capsys)
    assert code == 0, doc["summary"]
    assert verdicts(doc) == {name: "pass" for name in
                             ("health", "api_health", "static", "https_redirect", "hsts", "database", "redis")}
    for check in doc["checks"]:
        assert check["duration_ms"] >= 0 and check["attempts"] == 1 and check["error"] is None
    checks = {c["name"]: c for c in doc["checks"]}
    assert "at the latest migration" in checks["database"]["detail"]
    assert checks["https_redirect"]["detail"].startswith("301 -> https://")
    assert doc["summary"].startswith("7/7 smoke checks passed")
    assert REDIS_PASSWORD not in json.dumps(doc) + err
    assert "PASS: 7/7" in err.strip().splitlines()[-1]


def test_plain_http_url_skips_the_tls_checks(http_only: WebServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_smoke(["--url", http_only.url], capsys)
    assert code == 0 and list(verdicts(doc)) == ["health", "api_health", "static"]


@pytest.mark.parametrize("failure, failing_check, message", [
    ("health 500", "health", "answered 500, expected 200"),
    ("api status degraded", "api_health", 'status is "degraded"'),
    ("static without cache headers", "static", "expected it to contain 'public'"),
    ("database down", "database", "cannot connect"),
    ("wrong database password", "database", "password authentication failed"),
    ("wrong Redis password", "redis", "authentication failed"),
    ("pending migration", "database", "1 migration(s) pending: 0100_new_table.sql"),
])
def test_each_failure_is_reported_by_name(
        web: WebServer, app_dsn: str, redis_url: str, pg_server: PgServer, app_ready: DbSecrets,
        migrations_copy: Path, capsys: pytest.CaptureFixture[str], failure: str, failing_check: str, message: str) -> None:
    dsn, redis, extra = app_dsn, redis_url, []
    if failure == "health 500":
        web.site.health_status = 500
    elif failure == "api status degraded":
        web.site.api_status = "degraded"
    elif failure == "static without cache headers":
        web.site.cache_control = "no-store"
    elif failure == "database down":
        dsn = app_dsn.replace(f":{pg_server.port}/", f":{free_port()}/")
    elif failure == "wrong database password":
        dsn = pg_server.dsn(app_ready.dbname, user="psychology_app_a", password="wrong-app-password")
    elif failure == "wrong Redis password":
        redis = redis_url.replace(REDIS_PASSWORD, "wrong-redis-password")
    elif failure == "pending migration":
        (migrations_copy / "0100_new_table.sql").write_text("CREATE TABLE t (id int);\n")
        extra = ["--migrations-dir", str(migrations_copy)]
    code, doc, err = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                                "--dsn", dsn, "--redis-url", redis, *FAST, *extra], capsys)
    assert code == 1
    assert doc["ok"] is False and doc["failed"] == [failing_check]
    failed = next(c for c in doc["checks"] if c["name"] == failing_check)
    assert failed["verdict"] == "fail" and message in failed["error"] and failed["attempts"] == 2
    assert all(c["verdict"] == "pass" for c in doc["checks"] if c["name"] != failing_check)
    assert f"failed: {failing_check} (" in doc["summary"]
    assert err.strip().splitlines()[-1].startswith("FAIL: 6/7 smoke checks passed")
    for secret in (REDIS_PASSWORD, "wrong-redis-password", "wrong-app-password", pg_server.password):
        assert secret not in json.dumps(doc) + err


def test_maintenance_mode_expects_503(web: WebServer, capsys: pytest.CaptureFixture[str]) -> None:
    web.site.maintenance = True
    code, doc, _ = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                              "--expect-maintenance"], capsys)
    assert code == 0 and verdicts(doc) == {"maintenance": "pass", "https_redirect": "pass", "hsts": "pass"}
    web.site.maintenance = False
    code, doc, _ = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                              "--expect-maintenance", *FAST], capsys)
    assert code == 1 and doc["failed"] == ["maintenance"]


def test_untrusted_certificate_fails(web: WebServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_smoke(["--url", web.url, "--http-url", web.http_url, *FAST], capsys)
    assert code == 1 and "health" in doc["failed"] and "CERTIFICATE_VERIFY_FAILED" in json.dumps(doc)


def test_health_handler_in_vpc_checks(sm: Any, app_ready: DbSecrets, function_env: DbSecrets, redis_proc: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    redis_arn = sm.create_secret(Name="psychology-api/test/redis", SecretString=json.dumps(
        {"host": redis_proc.host, "port": redis_proc.port, "auth_token": REDIS_PASSWORD, "tls": False}))["ARN"]
    monkeypatch.setenv("REDIS_SECRET_ARN", redis_arn)
    answer = handlers.health_handler({})
    assert answer["ok"] is True and verdicts(answer) == {"database": "pass", "redis": "pass"}
    sm.put_secret_value(SecretId=redis_arn, SecretString=json.dumps(
        {"host": redis_proc.host, "port": redis_proc.port, "auth_token": "not-the-token", "tls": False}))
    answer = handlers.health_handler({"attempts": 1})
    assert answer["ok"] is False and answer["failed"] == ["redis"]
    assert "not-the-token" not in json.dumps(answer) and REDIS_PASSWORD not in json.dumps(answer)


def test_via_function_merges_the_in_vpc_verdicts(
        web: WebServer, sm: Any, app_ready: DbSecrets, function_env: DbSecrets, moto_lambda: MotoServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    create_function(moto_lambda.endpoint_url, "psychology-api-test-db-health")
    queue_lambda_result(moto_lambda.endpoint_url, handlers.health_handler({}))  # the real handler's answer
    code, doc, _ = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                              "--via-function", "psychology-api-test-db-health",
                              "--endpoint-url", moto_lambda.endpoint_url], capsys)
    assert code == 0 and verdicts(doc)["database"] == "pass"
    assert set(verdicts(doc)) == {"health", "api_health", "static", "https_redirect", "hsts", "database"}

    queue_lambda_result(moto_lambda.endpoint_url, {"ok": False, "summary": "0/1 smoke checks passed", "checks": [
        {"name": "database", "ok": False, "verdict": "fail", "duration_ms": 5, "attempts": 4,
         "error": "cannot connect to postgresql://psychology_app_a@db:5432/psychology: timeout", "detail": None}]})
    code, doc, _ = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                              "--via-function", "psychology-api-test-db-health", "--summary-only",
                              "--endpoint-url", moto_lambda.endpoint_url], capsys)
    assert code == 1 and doc["ok"] is False and doc["checks"]["database"] == "fail"
    assert set(doc) == {"ok", "summary", "checks"}  # the compact form kept as the stack output

    code, doc, _ = run_smoke(["--url", web.url, "--http-url", web.http_url, "--ca-bundle", web.ca_bundle,
                              "--via-function", "no-such-function", "--endpoint-url", moto_lambda.endpoint_url, *FAST], capsys)
    assert code == 1 and doc["failed"] == ["in_vpc"]


@pytest.fixture
def tls_redis(certificate: tuple[Path, Path], tmp_path: Path) -> Iterator[str]:
    """A Redis that speaks only TLS and wants AUTH, like ElastiCache with in-transit encryption."""
    cert, key = certificate
    with tls_redis_server(cert, key, REDIS_PASSWORD, tmp_path) as port:
        yield f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"


def test_redis_over_tls(tls_redis: str, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_smoke(["--redis-url", tls_redis, "--redis-ca-bundle", str(certificate[0])], capsys)
    assert code == 0 and verdicts(doc) == {"redis": "pass"}
    assert doc["checks"][0]["detail"].startswith("SET/GET round trip on rediss://127.0.0.1:")
    # Plain Redis against the TLS port, or TLS without trusting the certificate, fails by name.
    code, doc, _ = run_smoke(["--redis-url", tls_redis.replace("rediss://", "redis://"), *FAST], capsys)
    assert code == 1 and doc["failed"] == ["redis"]
    code, doc, _ = run_smoke(["--redis-url", tls_redis, *FAST], capsys)
    assert code == 1 and "certificate verify failed" in doc["checks"][0]["error"].lower()


def test_redis_target_formats() -> None:
    target = RedisTarget.from_url("rediss://:p%40ss-word-1@cache.example:6380/2")
    assert (target.tls, target.host, target.port, target.db, target.password) == (True, "cache.example", 6380, 2, "p@ss-word-1")
    assert "p@ss" not in target.describe()
    secret = RedisTarget.from_secret({"host": "master.x.cache.amazonaws.com", "port": 6379, "auth_token": "tok-12345", "tls": True})
    assert secret.tls and secret.password == "tok-12345"
    assert redis_check(secret).name == "redis"


def test_database_check_with_secret_credentials(sm: Any, app_ready: DbSecrets, aws_env: MotoServer,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_smoke(["--secret-id", app_ready.app_arn, "--endpoint-url", aws_env.endpoint_url], capsys)
    assert code == 0 and verdicts(doc) == {"database": "pass"}
    assert target_from_document(read_json(sm, app_ready.app_arn)).password not in json.dumps(doc)


def test_cli_by_hand(web: WebServer, app_dsn: str, redis_url: str) -> None:
    assert subprocess.run([sys.executable, "-m", "scripts.smoke", "--help"], cwd=ROOT, capture_output=True).returncode == 0
    env = {"SMOKE_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "scripts.smoke", "--url", web.url, "--http-url", web.http_url,
                         "--ca-bundle", web.ca_bundle, "--dsn", app_dsn], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.strip().splitlines()[-1].startswith("PASS: 7/7 smoke checks passed")
    web.site.health_status = 500
    bad = subprocess.run([sys.executable, "-m", "scripts.smoke", "--url", web.url, "--http-url", web.http_url,
                          "--ca-bundle", web.ca_bundle, "--dsn", app_dsn, *FAST], cwd=ROOT, capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "failed: health (" in bad.stderr.strip().splitlines()[-1]
    assert REDIS_PASSWORD not in ok.stderr + bad.stderr
