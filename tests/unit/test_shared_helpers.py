"""Helpers every EC2 host shares (user-data encoding, the Amazon Linux 2023 lookup) and the
guard that each is written once."""

from __future__ import annotations

import base64
import gzip
import random
import re
import string
from pathlib import Path

import pytest

from components import monitoring_render
from components.monitoring_render import MonitoringSettings
from components.userdata import USER_DATA_LIMIT_BYTES, decode_user_data, encode_user_data, user_data_size

COMPONENTS = Path(__file__).resolve().parents[2] / "components"


def incompressible_text(length: int, seed: int = 7) -> str:
    """Text gzip cannot shrink much (random characters), to reach sizes near the limit."""
    rng = random.Random(seed)
    return "#cloud-config\n# " + "".join(rng.choices(string.ascii_letters + string.digits + "+/", k=length))


def gzip_size(text: str) -> int:
    return len(gzip.compress(text.encode(), compresslevel=9, mtime=0))


# --- the user-data encoder -----------------------------------------------------------------------

def test_limit_is_ec2s_16_kib() -> None:
    assert USER_DATA_LIMIT_BYTES == 16384


def test_encoding_round_trips_and_is_deterministic() -> None:
    text = "#cloud-config\nruncmd: [[/bin/true]]\n"
    encoded = encode_user_data(text, host="test")
    assert encoded == encode_user_data(text, host="test")  # no gzip timestamp
    assert base64.b64decode(encoded)[:2] == b"\x1f\x8b"    # cloud-init recognises gzip
    assert decode_user_data(encoded) == text
    assert user_data_size(encoded) == len(base64.b64decode(encoded))


def test_limit_counts_the_gzip_bytes_not_the_base64_text() -> None:
    """A payload of 12-16 KiB gzipped is within EC2's limit although its base64 text is longer
    than 16384 characters (the check the monitoring host had refused it)."""
    text = next(t for t in (incompressible_text(n) for n in range(16000, 23000, 250))
                if 13000 < gzip_size(t) <= USER_DATA_LIMIT_BYTES)
    encoded = encode_user_data(text, host="test")
    assert len(encoded) > USER_DATA_LIMIT_BYTES
    assert user_data_size(encoded) <= USER_DATA_LIMIT_BYTES
    assert decode_user_data(encoded) == text


def test_payload_over_the_limit_is_refused_naming_the_host() -> None:
    text = incompressible_text(30000)
    assert gzip_size(text) > USER_DATA_LIMIT_BYTES
    with pytest.raises(ValueError, match=r"^monitoring host user data is \d+ bytes gzipped; EC2 allows 16384 before base64$"):
        encode_user_data(text, host="monitoring host")


def test_both_hosts_use_the_one_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitoring host's renderer goes through components.userdata (the API hosts' launch
    template does too: components/api_hosts.py imports nothing else that encodes)."""
    calls: list[str] = []

    def spy(cloud_config: str, *, host: str) -> str:
        calls.append(host)
        return encode_user_data(cloud_config, host=host)

    monkeypatch.setattr(monitoring_render, "encode_user_data", spy)
    settings = MonitoringSettings(
        project="p", stack="s", environment="s", region="eu-central-1", public_url="https://api.example.com",
        https=True, alerts_topic_arn="arn:aws:sns:eu-central-1:1:t", backup_bucket="b", kms_key_arn="k", db_host="db.x",
        db_name="d", db_backup_secret_arn="m", db_drill_secret_arn="n", grafana_secret_arn="g", grafana_secret_name="p/s/grafana",
        data_volume_id="vol-1", volume_gb=50, backup_schedule="daily", restore_drill_schedule="monthly")
    encoded = monitoring_render.user_data_base64(settings)
    assert calls == ["monitoring host"]
    assert decode_user_data(encoded) == monitoring_render.cloud_config(settings)


# --- written once ----------------------------------------------------------------------------------

def occurrences(pattern: str) -> list[str]:
    found = []
    for path in sorted(COMPONENTS.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(COMPONENTS.parent)}:{number}")
    return found


@pytest.mark.parametrize(("what", "pattern", "home"), [
    ("the gzip of user data", r"gzip\.compress\(", "components/userdata.py"),
    ("the user-data limit", r"^USER_DATA_LIMIT_BYTES\s*=", "components/userdata.py"),
    ("the AMI lookup", r"\bget_ami\(", "components/ami.py"),
    ("the backups prefix", r"^BACKUP_PREFIX\s*=", "components/storage.py"),
])
def test_shared_definitions_are_written_once(what: str, pattern: str, home: str) -> None:
    found = occurrences(pattern)
    assert len(found) == 1 and found[0].startswith(f"{home}:"), f"{what}: {found}"


# --- the Amazon Linux 2023 image -------------------------------------------------------------------

def test_ami_lookup_is_the_contracts_al2023_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi_aws as aws

    from components import ami

    seen: dict[str, object] = {}
    monkeypatch.setattr(aws.ec2, "get_ami", lambda **kwargs: seen.update(kwargs) or "result")
    assert ami.amazon_linux_2023_ami() == "result"
    assert seen["most_recent"] is True and seen["owners"] == ["amazon"]
    filters = {f.name: f.values for f in seen["filters"]}  # type: ignore[attr-defined]
    assert filters == {"name": ["al2023-ami-2023.*-kernel-*-x86_64"], "architecture": ["x86_64"],
                       "virtualization-type": ["hvm"]}


def test_backup_prefix_is_the_scripts_default() -> None:
    from components.storage import BACKUP_PREFIX
    from scripts.lib.pgbackup import DEFAULT_PREFIX

    assert BACKUP_PREFIX == DEFAULT_PREFIX == "postgres/"


def test_script_output_prints_text_as_it_is() -> None:
    """What the scripts print goes out unchanged: rich would turn the ":secret:" of every Secrets
    Manager ARN into an emoji and read "[...]" as markup."""
    import subprocess
    import sys

    arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/app-AbCdEf"
    text = f"{arn} [bold]x[/bold] :thumbs_up:"
    run = subprocess.run([sys.executable, "-c", f"from scripts.lib import cli; cli.info({text!r}); cli.verdict(True, {arn!r})"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [text, f"PASS: {arn}"]


def test_rotations_wait_for_every_client_refresh() -> None:
    """The spacing between rotations (scripts/dbops/rotation.py) covers the longest gap between
    two runs of the clients' refresh timers (daily, plus their random delay), and the shortest
    schedule the configuration allows keeps it."""
    from infra.config import MIN_ROTATION_DAYS
    from scripts.dbops.rotation import HOST_REFRESH_HOURS, MIN_HOURS_BETWEEN_ROTATIONS

    templates = Path(__file__).resolve().parents[2] / "components" / "templates"
    for timer in ("api/psychology-api-secrets-refresh.timer.j2", "monitoring/systemd/psychology-exporter-secrets-refresh.timer.j2"):
        text = (templates / timer).read_text()
        assert re.search(r"^OnCalendar=daily$", text, re.MULTILINE), timer
        delay = re.search(r"^RandomizedDelaySec=(\d+)h$", text, re.MULTILINE)
        assert delay is not None and 24 + int(delay[1]) <= HOST_REFRESH_HOURS, timer
    assert HOST_REFRESH_HOURS < MIN_HOURS_BETWEEN_ROTATIONS <= MIN_ROTATION_DAYS * 24
