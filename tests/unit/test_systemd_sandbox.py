"""Every systemd service we ship (the API hosts' and the monitoring host's), taken from each
stack's plan (the API hosts' user data, the monitoring host's operations bundle) and scored offline by `systemd-analyze security`: the overall
exposure must be at most 4.5. The services keep what they need: tested here as the settings
that grant it (write paths, address families, capabilities)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.mock_engine import Plan
from tests.unit.test_host_templates import host_files_of, unit_settings
from tests.unit.test_monitoring import written_files

pytestmark = pytest.mark.tools
ROOT = Path(__file__).resolve().parents[2]
MAX_EXPOSURE = 4.5
TEMPLATES = sorted({p.name.removesuffix(".j2") for p in (ROOT / "components" / "templates").rglob("*.service.j2")})


def shipped_services(plan: Plan, tmp_path: Path) -> dict[str, Path]:
    """name -> rendered unit file, for both hosts of the stack."""
    units: dict[str, Path] = {}
    for host, files in (("api", {e["path"]: e["content"] for e in host_files_of(plan, tmp_path / "api").document["write_files"]}),
                        ("monitoring", written_files(plan))):
        directory = tmp_path / f"{host}-units"
        directory.mkdir()
        for path, content in files.items():
            if path.startswith("/etc/systemd/system/") and path.endswith(".service"):
                target = directory / Path(path).name
                target.write_text(content)
                units[f"{host}/{target.name}"] = target
    return units


def exposure(unit: Path) -> tuple[float, str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs systemd)")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", f"--threshold={int(MAX_EXPOSURE * 10)}",
                             f"./{unit.name}"], capture_output=True, text=True, cwd=unit.parent, timeout=120, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert found is not None, result.stdout + result.stderr
    return float(found.group(1)), result.stdout


def test_every_service_we_ship_is_sandboxed(plan: Plan, tmp_path: Path) -> None:
    units = shipped_services(plan, tmp_path)
    assert sorted({name.split("/")[1] for name in units}) == TEMPLATES
    scores = {name: exposure(path) for name, path in units.items()}
    too_exposed = {name: score for name, (score, _) in scores.items() if score > MAX_EXPOSURE}
    assert too_exposed == {}, "\n".join(f"{name}: {score}" for name, score in too_exposed.items())


def test_services_keep_what_they_need(plan: Plan, tmp_path: Path) -> None:
    units = {name: unit_settings(path) for name, path in shipped_services(plan, tmp_path).items()}
    writes = {name: " ".join(u.get("ReadWritePaths", [])) for name, u in units.items()}
    assert writes["monitoring/prometheus.service"] == "/var/lib/monitoring/prometheus"
    assert writes["monitoring/grafana-server.service"] == "/var/lib/monitoring/grafana /var/log/grafana"
    assert writes["monitoring/psychology-backup.service"] == "/var/lib/node_exporter/textfile"
    assert "/restore-spool" in writes["monitoring/psychology-restore-drill.service"]
    assert writes["monitoring/psychology-exporter-secrets-refresh.service"] == "/etc/psychology/secrets"
    # The Grafana admin password: its file, and Grafana's database and logs for `grafana cli`.
    assert writes["monitoring/psychology-grafana-admin-password.service"] == \
        "/etc/grafana/secrets /var/lib/monitoring/grafana /var/log/grafana"
    assert writes["api/psychology-api-secrets-refresh.service"] == "/etc/psychology-api"
    for name, unit in units.items():
        families = unit["RestrictAddressFamilies"][0].split()
        assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families), name   # AWS APIs, the database, systemd
        if name.endswith("node_exporter.service"):
            assert "AF_NETLINK" in families and "ProcSubset" not in unit   # network and /proc collectors
    # Files handed to the exporters' groups: the only capability any of them keeps.
    assert units["monitoring/psychology-exporter-secrets-refresh.service"]["CapabilityBoundingSet"] == ["CAP_CHOWN"]
    # The password file handed to Grafana's group, `grafana cli` run as grafana: runs as root
    # (no User=) with exactly those three capabilities, no way to read past file permissions.
    grafana_password = units["monitoring/psychology-grafana-admin-password.service"]
    assert "User" not in grafana_password
    assert grafana_password["CapabilityBoundingSet"] == ["CAP_CHOWN CAP_SETUID CAP_SETGID"]
    assert {u["CapabilityBoundingSet"][0] for n, u in units.items()
            if "exporter-secrets" not in n and "grafana-admin-password" not in n} == {""}
