"""The shared database layer against a real TLS-only PostgreSQL and Secrets Manager on moto."""

from __future__ import annotations

import json

import boto3
import pytest

from scripts.lib import cli
from scripts.lib.db import connect, target_from_dsn, target_from_secret
from tests.services import MotoServer, PgServer


def test_dsn_is_forced_to_tls(pg_server: PgServer, database: str) -> None:
    target = target_from_dsn(pg_server.dsn(database, sslmode="disable"))
    assert target.sslmode == "require"
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
