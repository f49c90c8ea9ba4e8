"""The API hosts' nginx configuration, served for real: the public port proxies the app but
never its metrics; the metrics port serves /metrics only, presented to Django as an HTTPS request
for the public host. The files are the ones in prod's launch-template user data."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from components.hostconfig import GUNICORN_BIND
from components.security import APP_METRICS_PORT
from harness.mock_engine import Plan
from tests.services import free_port
from tests.unit.test_host_templates import host_files_of

pytestmark = pytest.mark.integration


class Echo(http.server.BaseHTTPRequestHandler):
    """Stands where gunicorn listens: answers with what nginx sent it."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"path": self.path, "host": self.headers["Host"],
                           "proto": self.headers.get("X-Forwarded-Proto")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError("nginx did not start")


@pytest.fixture
def site(prod: Plan, tmp_path: Path) -> Iterator[dict[str, int]]:
    nginx = shutil.which("nginx")
    if nginx is None or not Path("/etc/nginx/mime.types").exists():
        pytest.skip("nginx is not installed (.ci/run installs it)")
    files = host_files_of(prod, tmp_path / "host")
    ports = {"app": free_port(), "metrics": free_port(), "upstream": free_port()}
    conf = tmp_path / "nginx"
    (conf / "conf.d").mkdir(parents=True)
    main = files.text("/etc/psychology-api/nginx.conf").replace("/var/log/nginx/access.log", str(conf / "access.log"))
    (conf / "nginx.conf").write_text(main)
    app_port = prod.one("aws:lb/targetGroup:TargetGroup").inputs["port"]
    # Free ports instead of the host's fixed ones; everything else exactly as rendered.
    site_conf = (files.text("/etc/nginx/conf.d/psychology-api.conf")
                 .replace(f"listen {app_port} default_server;", f"listen 127.0.0.1:{ports['app']} default_server;")
                 .replace(f"listen {APP_METRICS_PORT};", f"listen 127.0.0.1:{ports['metrics']};")
                 .replace(GUNICORN_BIND, f"127.0.0.1:{ports['upstream']}"))
    (conf / "conf.d" / "psychology-api.conf").write_text(site_conf)
    shutil.copy(files.path("/etc/nginx/psychology-api-security-headers.conf"), conf)
    shutil.copy("/etc/nginx/mime.types", conf)
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", ports["upstream"]), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    process = subprocess.Popen([nginx, "-c", str(conf / "nginx.conf"), "-p", str(conf),
                                "-g", f"daemon off; pid {conf}/nginx.pid; error_log stderr;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(ports["app"], process)
        yield ports
    finally:
        process.terminate()
        process.wait(timeout=10)
        upstream.shutdown()


def test_public_port_proxies_the_app_but_never_its_metrics(site: dict[str, int], prod: Plan) -> None:
    app = f"http://127.0.0.1:{site['app']}"
    public_host = prod.outputs["api_url"].split("://", 1)[1]
    page = requests.get(f"{app}/api/v1/health/", headers={"Host": public_host, "X-Forwarded-Proto": "https"}, timeout=5)
    assert page.status_code == 200 and page.json() == {"path": "/api/v1/health/", "host": public_host, "proto": "https"}
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    metrics = requests.get(f"{app}/metrics", headers={"Host": public_host}, timeout=5)
    assert metrics.status_code == 404


def test_metrics_port_serves_metrics_only_as_https_for_the_public_host(site: dict[str, int], prod: Plan) -> None:
    metrics = f"http://127.0.0.1:{site['metrics']}"
    public_host = prod.outputs["api_url"].split("://", 1)[1]
    # Prometheus scrapes by private IP: Django still sees its public host over HTTPS.
    scrape = requests.get(f"{metrics}/metrics", headers={"Host": "10.30.16.10"}, timeout=5)
    assert scrape.status_code == 200
    assert scrape.json() == {"path": "/metrics", "host": public_host, "proto": "https"}
    assert requests.get(f"{metrics}/api/v1/health/", timeout=5).status_code == 404
    assert requests.get(f"{metrics}/admin/", timeout=5).status_code == 404
