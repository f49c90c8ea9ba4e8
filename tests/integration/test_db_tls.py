"""Every client of the database verifies the server (issue 9, item 2), against a real PostgreSQL
whose certificate a test CA signed for 127.0.0.1 only: a server signed by another CA is refused
before any password leaves, the configured CA with the right host name is accepted, a wrong
host name is refused; the same for the PostgreSQL tools (pg_dump) and the command line, and a
server that asks for a clear-text password is refused too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from scripts.lib import rds_ca
from scripts.lib.db import DbConnectError, DbTarget, connect, target_from_document, target_from_dsn
from tests.services import PgServer, self_signed_certificate, signed_certificate, start_postgres, stop_postgres

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TlsServer:
    server: PgServer
    trusted_ca: Path    # signed the server's certificate
    untrusted_ca: Path  # a CA of its own, as a spoofed server would present


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("db-tls")
    ca = self_signed_certificate(directory, "ca.crt", "ca.key")
    other_ca, _ = self_signed_certificate(directory, "other-ca.crt", "other-ca.key")
    cert, key = signed_certificate(ca, directory, "IP:127.0.0.1")
    server = start_postgres(certificate=(cert, key, ca[0]))
    try:
        yield TlsServer(server, ca[0], other_ca)
    finally:
        stop_postgres(server)


@pytest.fixture
def bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """What the scripts ship as the RDS bundle, and no PGSSLROOTCERT: how the functions and the
    monitoring host connect. Tests copy the CA of their choice here."""
    path = tmp_path / "certs" / "rds-global-bundle.pem"
    path.parent.mkdir()
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", path, raising=False)
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    return path


def from_secret(tls: TlsServer, host: str = "127.0.0.1") -> DbTarget:
    """As the functions build it: credentials from a secret, the endpoint from their environment."""
    return target_from_document({"username": tls.server.superuser, "password": tls.server.password},
                                host=host, port=tls.server.port, dbname="postgres")


def test_a_server_signed_by_another_ca_is_refused(tls: TlsServer, bundle: Path) -> None:
    bundle.write_bytes(tls.untrusted_ca.read_bytes())
    with pytest.raises(DbConnectError, match="certificate verify failed"):
        connect(from_secret(tls))
    # A DSN asking for less (sslmode=require, what the scripts used to send) is verified just the same.
    weak = f"postgresql://{tls.server.superuser}:{tls.server.password}@127.0.0.1:{tls.server.port}/postgres?sslmode=require"
    with pytest.raises(DbConnectError, match="certificate verify failed"):
        connect(target_from_dsn(weak))


def test_the_configured_ca_with_the_right_host_name_is_accepted(tls: TlsServer, bundle: Path) -> None:
    bundle.write_bytes(tls.trusted_ca.read_bytes())
    with connect(from_secret(tls)) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
    assert from_secret(tls).libpq_env()["PGSSLROOTCERT"] == str(bundle)


def test_a_wrong_host_name_is_refused(tls: TlsServer, bundle: Path) -> None:
    """`localhost` reaches the same server, but its certificate names only 127.0.0.1."""
    bundle.write_bytes(tls.trusted_ca.read_bytes())
    with pytest.raises(DbConnectError, match='does not match host name "localhost"'):
        connect(from_secret(tls, host="localhost"))


def test_pg_tools_verify_the_server_too(tls: TlsServer, bundle: Path) -> None:
    """pg_dump and pg_restore (backups, restores, drills) get the same settings through the environment."""
    bundle.write_bytes(tls.trusted_ca.read_bytes())
    pg_dump = str(tls.server.bin_dir / "pg_dump")
    ok = subprocess.run([pg_dump, "--schema-only"], env=from_secret(tls).libpq_env(), capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr.decode()
    wrong = subprocess.run([pg_dump, "--schema-only"], env=from_secret(tls, host="localhost").libpq_env(),
                           capture_output=True, check=False)
    assert wrong.returncode != 0 and b"does not match host name" in wrong.stderr
    bundle.write_bytes(tls.untrusted_ca.read_bytes())
    spoofed = subprocess.run([pg_dump, "--schema-only"], env=from_secret(tls).libpq_env(), capture_output=True, check=False)
    assert spoofed.returncode != 0 and b"certificate verify failed" in spoofed.stderr


def test_a_server_asking_for_a_clear_text_password_is_refused(tls: TlsServer, bundle: Path) -> None:
    """require_auth=scram-sha-256: even a server with a valid certificate never gets the password itself."""
    bundle.write_bytes(tls.trusted_ca.read_bytes())
    hba = tls.server.data_dir / "pg_hba.conf"
    original = hba.read_text()
    admin = psycopg.connect(**tls.server.conninfo(), autocommit=True)  # type: ignore[arg-type]
    try:
        hba.write_text(original.replace("hostssl all all 127.0.0.1/32 scram-sha-256", "hostssl all all 127.0.0.1/32 password"))
        admin.execute("select pg_reload_conf()")
        with pytest.raises(DbConnectError, match=r"scram-sha-256.*cleartext password"):
            connect(from_secret(tls))
    finally:
        hba.write_text(original)
        admin.execute("select pg_reload_conf()")
        admin.close()
    with connect(from_secret(tls)):
        pass


def test_a_missing_bundle_says_what_to_do(tls: TlsServer, bundle: Path) -> None:
    with pytest.raises(DbConnectError) as missing:
        connect(from_secret(tls))
    message = str(missing.value)
    assert "RDS certificate bundle" in message and str(bundle) in message and rds_ca.RDS_CA_BUNDLE_URL in message
    assert "(docs/security.md#tls-to-the-database)" in message
    assert tls.server.password not in message and "\n" not in message


def migrate_dry_run(tls: TlsServer, host: str, ca: Path) -> subprocess.CompletedProcess[str]:
    dsn = f"postgresql://{tls.server.superuser}@{host}:{tls.server.port}/postgres?sslmode=require"
    env = {**os.environ, "PGPASSWORD": tls.server.password, "PGSSLROOTCERT": str(ca)}
    return subprocess.run([sys.executable, "-m", "scripts.migrate", "--dsn", dsn, "--dry-run", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_command_line_verifies_whatever_sslmode_the_dsn_names(tls: TlsServer) -> None:
    """What an operator types, sslmode=require included: exit 1, one line, no password in it."""
    for host, ca, reason in (("127.0.0.1", tls.untrusted_ca, "certificate verify failed"),
                             ("localhost", tls.trusted_ca, "does not match host name")):
        refused = migrate_dry_run(tls, host, ca)
        assert refused.returncode == 1, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("error: cannot connect to") and reason in last
        assert tls.server.password not in refused.stdout + refused.stderr
    accepted = migrate_dry_run(tls, "127.0.0.1", tls.trusted_ca)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["pending"]
