"""The shared database layer against a real TLS-only PostgreSQL and Secrets Manager on moto."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from scripts.lib import cli
from scripts.lib.db import (
    DSN_ENVIRONMENT_VARIABLE,
    add_target_arguments,
    connect,
    target_from_args,
    target_from_dsn,
    target_from_secret,
)
from tests.services import MotoServer, PgServer


def test_dsn_is_forced_to_tls(pg_server: PgServer, database: str) -> None:
    target = target_from_dsn(pg_server.dsn(database, sslmode="disable"))
    assert target.sslmode == "verify-full"
    with connect(target) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
    assert pg_server.password not in target.describe()


def test_credentials_from_rds_style_secret(pg_server: PgServer, database: str, moto: MotoServer) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint_url)
    arn = sm.create_secret(Name="rds-master", SecretString=json.dumps(
        {"username": pg_server.superuser, "password": pg_server.password}))["ARN"]
    with pytest.raises(cli.ScriptError, match="--db-host"):
        target_from_secret(arn, endpoint_url=moto.endpoint_url)
    target = target_from_secret(arn, host=pg_server.host, port=pg_server.port, dbname=database,
                                endpoint_url=moto.endpoint_url)
    with connect(target) as conn:
        assert conn.execute("select current_database()").fetchone() == (database,)


def test_connection_errors_are_one_line_and_masked(pg_server: PgServer, database: str) -> None:
    target = target_from_dsn(pg_server.dsn(database, password="not-the-password-123"))
    with pytest.raises(cli.ScriptError) as err:
        connect(target)
    message = str(err.value)
    assert "\n" not in message and "not-the-password-123" not in message
    assert "password authentication failed" in message


# --- passwords stay out of argv: $PSYCHOLOGY_API_DSN, PGPASSWORD, the password file ---------

ROOT = Path(__file__).resolve().parents[2]


def passwordless_dsn(pg_server: PgServer, database: str) -> str:
    return (f"postgresql://{pg_server.superuser}@{pg_server.host}:{pg_server.port}/{database}?sslmode=require"
            f"&sslrootcert={pg_server.ca_file}")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != DSN_ENVIRONMENT_VARIABLE}
    env.update(extra)
    return env


def migrate_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.migrate", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_dsn_comes_from_the_environment_when_no_option_names_a_database(pg_server: PgServer, database: str) -> None:
    run = migrate_cli("--dry-run", "--json", env=clean_env(**{DSN_ENVIRONMENT_VARIABLE: pg_server.dsn(database)}))
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["pending"]) >= 4
    assert pg_server.password not in run.stdout + run.stderr
    # Nothing anywhere: the usage error names all three ways.
    missing = migrate_cli("--dry-run", env=clean_env())
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: a database is required: --dsn DSN, --secret-id ARN or ${DSN_ENVIRONMENT_VARIABLE}")
    help_run = migrate_cli("--help", env=clean_env())
    assert DSN_ENVIRONMENT_VARIABLE in help_run.stdout and "PGPASSWORD" in help_run.stdout


def test_an_option_wins_over_the_environment(pg_server: PgServer, database: str, moto: MotoServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENVIRONMENT_VARIABLE, "postgresql://nobody@db.invalid/nothing")
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    parser.add_argument("--endpoint-url")
    target = target_from_args(parser.parse_args(["--dsn", pg_server.dsn(database)]))
    assert target is not None and target.host == pg_server.host and target.dbname == database
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint_url)
    arn = sm.create_secret(Name="rds-master-env", SecretString=json.dumps(
        {"username": pg_server.superuser, "password": pg_server.password}))["ARN"]
    target = target_from_args(parser.parse_args(["--secret-id", arn, "--db-host", pg_server.host, "--db-port",
                                                 str(pg_server.port), "--db-name", database,
                                                 "--endpoint-url", moto.endpoint_url]))
    assert target is not None and target.host == pg_server.host
    monkeypatch.setenv(DSN_ENVIRONMENT_VARIABLE, "host=db.invalid")
    with pytest.raises(cli.ScriptError, match=rf"^\${DSN_ENVIRONMENT_VARIABLE} lacks dbname, user$"):
        target_from_args(parser.parse_args([]))


def test_a_dsn_without_password_uses_pgpassword(pg_server: PgServer, database: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = target_from_dsn(passwordless_dsn(pg_server, database))
    # No empty password anywhere, so libpq falls back to PGPASSWORD / the password file.
    assert target.password == "" and "password" not in target.conninfo()
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    assert target.libpq_env()["PGPASSWORD"] == pg_server.password  # the caller's, passed on to pg_dump & co.
    with connect(target) as conn:
        assert conn.execute("select current_database()").fetchone() == (database,)
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    assert "PGPASSWORD" not in target.libpq_env()
    with pytest.raises(cli.ScriptError, match="no password supplied|password authentication failed"):
        connect(target)

    # The command line: the DSN (no password) in the environment, the password in PGPASSWORD.
    run = migrate_cli("--dry-run", "--json", env=clean_env(**{
        DSN_ENVIRONMENT_VARIABLE: passwordless_dsn(pg_server, database), "PGPASSWORD": pg_server.password}))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["pending"]


def test_a_dsn_without_password_uses_the_password_file(pg_server: PgServer, database: str, tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{pg_server.host}:{pg_server.port}:*:{pg_server.superuser}:{pg_server.password}\n")
    passfile.chmod(0o600)
    run = migrate_cli("--dsn", passwordless_dsn(pg_server, database), "--dry-run", "--json",
                      env=clean_env(PGPASSFILE=str(passfile)))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["pending"]
