"""The harness itself: the local services are real and behave like their AWS counterparts
where the scripts depend on it (TLS-only PostgreSQL, password-protected Redis, moto S3)."""

from __future__ import annotations

import boto3
import psycopg
import pytest

from tests.services import MotoServer, PgServer


def test_postgres_requires_tls_and_password(pg_server: PgServer, database: str) -> None:
    with psycopg.connect(pg_server.dsn(database)) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
        assert conn.execute("show server_version_num").fetchone()[0].startswith("15")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.dsn(database, sslmode="disable"), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.dsn(database, password="wrong"), connect_timeout=5)


def test_redis_round_trip(redisdb) -> None:  # type: ignore[no-untyped-def]
    redisdb.set("k", "v")
    assert redisdb.get("k") == b"v"


def test_moto_s3(moto: MotoServer) -> None:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="eu-central-1")
    s3.create_bucket(Bucket="harness-check", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["harness-check"]
