"""The monitoring host's own database logins (migration 0005) against a real PostgreSQL, with
Secrets Manager, S3 and KMS in moto's server: the migrate function makes them accept their
secrets, the nightly backup runs as the backup login and the drill as the drill login (the
commands the systemd units run), each can do only its job, and both rotate like the others."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import psycopg
import pytest

from scripts import backup, restore_drill
from scripts.dbops import handlers
from scripts.dbops.rotation import STEPS
from scripts.lib.db import DbTarget, connect
from tests.integration.dbops_support import (
    DbSecrets,
    create_function,
    creds,
    event,
    safe_password,
    stage_rotation,
    version_with,
)
from tests.services import MotoServer, PgServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration
BUCKET = "psychology-api-test-backups"
DATA_SQL = """
create table public.clients (id int primary key, full_name text not null);
insert into public.clients select g, 'client ' || g from generate_series(1, 250) g;
create table public.sessions (id int primary key, client_id int references public.clients(id));
insert into public.sessions select g, 1 + g % 250 from generate_series(1, 1000) g;
"""


@pytest.fixture
def host_logins(sm: Any, migrated: DbTarget, function_env: DbSecrets, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The backup and drill secrets with their first users, accepted by the migrate function."""
    arns = {}
    for key, variable in (("backup", "BACKUP_DB_SECRET_ARN"), ("drill", "DRILL_DB_SECRET_ARN")):
        arns[key] = sm.create_secret(Name=f"psychology-api/test/database/{key}", SecretString=json.dumps({
            "username": f"psychology_{key}_a", "password": safe_password(), "host": function_env.host,
            "port": function_env.port, "dbname": function_env.dbname}))["ARN"]
        monkeypatch.setenv(variable, arns[key])
    with connect(migrated, autocommit=True) as conn:
        conn.execute(DATA_SQL)
    answer = handlers.migrate_handler({})
    assert answer["ok"], answer
    assert {c["role"] for c in answer["credentials"]} >= {"psychology_backup_a", "psychology_drill_a"}
    return arns


@pytest.fixture
def bucket(aws_env: MotoServer) -> tuple[Any, str]:
    kms = boto3.client("kms", endpoint_url=aws_env.endpoint_url, region_name="eu-central-1")
    key_arn = kms.create_key(Description="backups test key")["KeyMetadata"]["Arn"]
    s3 = boto3.client("s3", endpoint_url=aws_env.endpoint_url, region_name="eu-central-1")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3, key_arn


def endpoint_args(secret_arn: str, db: DbSecrets, aws_env: MotoServer) -> list[str]:
    return ["--secret-id", secret_arn, "--db-host", db.host, "--db-port", str(db.port), "--db-name", db.dbname,
            "--bucket", BUCKET, "--endpoint-url", aws_env.endpoint_url]


def run_backup(arns: dict[str, str], db: DbSecrets, aws_env: MotoServer, key_arn: str,
               capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = backup.main([*endpoint_args(arns["backup"], db, aws_env), "--kms-key-id", key_arn, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    return report


def run_drill(arns: dict[str, str], db: DbSecrets, aws_env: MotoServer, scratch: str,
              capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    code = restore_drill.main([*endpoint_args(arns["drill"], db, aws_env), "--scratch-db", scratch,
                               "--no-source-counts", *extra, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    return report


def rotate(sm: Any, function_arn: str, secret: str) -> None:
    """Rotation switched on as components/dbops.py does (Secrets Manager tests the function on
    the current version), then one full rotation through the handler."""
    sm.rotate_secret(SecretId=secret, RotationLambdaARN=function_arn, RotationRules={"AutomaticallyAfterDays": 90},
                     RotateImmediately=False)
    token = version_with(sm, secret, "AWSPENDING")
    handlers.rotation_handler(event(secret, token, "testSecret"))
    sm.update_secret_version_stage(SecretId=secret, VersionStage="AWSPENDING", RemoveFromVersionId=token)
    token = stage_rotation(secret)
    for step in STEPS:
        handlers.rotation_handler(event(secret, token, step))


def test_backup_and_drill_run_with_their_own_logins(host_logins: dict[str, str], function_env: DbSecrets, aws_env: MotoServer,
                                                    bucket: tuple[Any, str], capsys: pytest.CaptureFixture[str],
                                                    pg_server: PgServer) -> None:
    report = run_backup(host_logins, function_env, aws_env, bucket[1], capsys)
    assert {t["table"]: t["rows"] for t in report["tables"]}["public.sessions"] == 1000
    scratch = f"drill_{uuid.uuid4().hex[:8]}"
    drilled = run_drill(host_logins, function_env, aws_env, scratch, capsys)
    assert drilled["ok"] and drilled["key"] == report["key"]
    with psycopg.connect(pg_server.dsn("postgres")) as conn:
        assert conn.execute("select count(*) from pg_database where datname = %s", (scratch,)).fetchone() == (0,)


def test_each_login_can_do_only_its_job(host_logins: dict[str, str], sm: Any, migrated: DbTarget) -> None:
    backup_login, drill_login = creds(sm, host_logins["backup"]), creds(sm, host_logins["drill"])
    with connect(backup_login) as conn:
        assert conn.execute("select count(*) from public.clients").fetchone() == (250,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("delete from public.clients")
    with connect(drill_login) as conn:
        assert conn.execute("select current_user").fetchone() == ("psychology_drill",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from public.clients")
    with connect(drill_login) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("create extension pg_buffercache")  # untrusted: superusers only
    with connect(migrated) as conn:
        rows = conn.execute("select rolname, rolsuper, rolcreaterole, rolbypassrls, rolreplication from pg_roles "
                            "where rolname like 'psychology_backup%' or rolname like 'psychology_drill%'").fetchall()
    assert len(rows) == 6 and not any(any(flags) for _, *flags in rows)


def test_both_logins_rotate_and_keep_working(host_logins: dict[str, str], sm: Any, function_env: DbSecrets,
                                             aws_env: MotoServer, moto_lambda: MotoServer, bucket: tuple[Any, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    scratch = f"drill_{uuid.uuid4().hex[:8]}"
    run_backup(host_logins, function_env, aws_env, bucket[1], capsys)
    run_drill(host_logins, function_env, aws_env, scratch, capsys, "--keep-scratch")   # left behind by drill_a
    function_arn = create_function(moto_lambda.endpoint_url, "psychology-api-test-db-rotate")
    for key in ("backup", "drill"):
        rotate(sm, function_arn, host_logins[key])
        assert creds(sm, host_logins[key]).user == f"psychology_{key}_b"
    run_backup(host_logins, function_env, aws_env, bucket[1], capsys)
    # The scratch database belongs to the group: the other user recreates and drops it.
    assert run_drill(host_logins, function_env, aws_env, scratch, capsys)["ok"]
