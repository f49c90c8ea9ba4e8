"""The backups bucket as the plan builds it (versioned, SSE-KMS, Object Lock in governance mode
with the plan's default retention) in moto's server, and real backups of a real PostgreSQL:
every backup version is locked for the retention, nothing the backup writes can replace an
object already there (If-None-Match on CompleteMultipartUpload and PutObject), and two
backups started in the same second end at two keys.

What moto checks for real: the default retention stamped on new versions written by PutObject
(moto does not stamp multipart completions, S3 does), the refusal to delete a locked version
without the governance bypass, and the 412 of a conditional write to an existing key (PutObject
and CompleteMultipartUpload). What it cannot: IAM (the monitoring role holds neither a delete action
nor s3:BypassGovernanceRetention; tests/unit/test_monitoring.py checks the role's document)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg import sql

from harness.mock_engine import Plan
from scripts import backup
from scripts.lib import cli
from scripts.lib.db import target_from_dsn
from scripts.lib.pgbackup import MANIFEST_SUFFIX
from tests.services import MotoServer, PgServer

pytestmark = pytest.mark.integration
BUCKET = "psychology-backups-lock-test"
DATA_SQL = """
create table clients (id int primary key, full_name text);
insert into clients select g, 'client ' || g from generate_series(1, 20000) g;
"""
MOMENT = datetime(2026, 3, 1, 23, 0, 5, tzinfo=UTC)


@pytest.fixture
def retention_days(staging: Plan) -> int:
    lock = staging.one("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", "backups-object-lock").inputs
    assert lock["objectLockEnabled"] == "Enabled" and lock["rule"]["defaultRetention"]["mode"] == "GOVERNANCE"
    return int(lock["rule"]["defaultRetention"]["days"])


@pytest.fixture
def s3(moto: MotoServer, retention_days: int) -> tuple[Any, str]:
    """The bucket, configured with the same API calls the provider makes for the plan's resources."""
    key_arn = boto3.client("kms", endpoint_url=moto.endpoint_url).create_key(Description="backups")["KeyMetadata"]["Arn"]
    client = boto3.client("s3", endpoint_url=moto.endpoint_url)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    client.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True}]})
    client.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": retention_days}}})
    return client, key_arn


@pytest.fixture
def source(pg_server: PgServer) -> Iterator[str]:
    name = f"lock_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(DATA_SQL)
    yield name
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def pipeline(pg_server: PgServer, db: str, s3: tuple[Any, str], on_part: Any = None) -> backup.BackupPipeline:
    options = backup.BackupOptions(bucket=BUCKET, kms_key_id=s3[1], part_size=5 * 1024 * 1024, concurrency=1)
    return backup.BackupPipeline(target_from_dsn(pg_server.dsn(db)), s3[0], options, on_part=on_part)


def manifests(client: Any) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return sorted(o["Key"] for o in listed if o["Key"].endswith(MANIFEST_SUFFIX))


def test_every_backup_version_is_locked_for_the_retention(pg_server: PgServer, source: str, s3: tuple[Any, str],
                                                         retention_days: int) -> None:
    client = s3[0]
    result = pipeline(pg_server, source, s3).run()
    # moto stamps the default retention on PutObject but not on CompleteMultipartUpload (S3
    # does both): the manifest, a plain PutObject, is what can be checked here.
    for key in (result.manifest_key,):
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert until > datetime.now(UTC) + timedelta(days=retention_days - 1)
        with pytest.raises(ClientError, match="AccessDenied"):
            client.delete_object(Bucket=BUCKET, Key=key, VersionId=head["VersionId"])
    # A conditional write never replaces the current version either.
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=BUCKET, Key=result.manifest.key, Body=b"not a backup", IfNoneMatch="*")


def test_two_backups_started_in_the_same_second_keep_both(pg_server: PgServer, source: str, s3: tuple[Any, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The second run starts and finishes while the first is uploading its first part, both
    stamped with the same second: each ends at its own key with its own manifest."""
    monkeypatch.setattr(backup, "utc_now", lambda: MOMENT)
    inner: list[backup.BackupResult] = []

    def start_another(_: backup.BackupPipeline, part: int) -> None:
        if part == 1:
            inner.append(pipeline(pg_server, source, s3).run())

    outer = pipeline(pg_server, source, s3, on_part=start_another).run()
    assert outer.manifest.key != inner[0].manifest.key
    assert manifests(s3[0]) == sorted([outer.manifest_key, inner[0].manifest_key])
    for result in (outer, inner[0]):
        assert result.manifest.key.startswith("postgres/" + source + "/20260301T230005Z-")
        versions = s3[0].list_object_versions(Bucket=BUCKET, Prefix=result.manifest.key)["Versions"]
        assert len([v for v in versions if v["Key"] == result.manifest.key]) == 1


def test_a_taken_key_fails_the_run_and_replaces_nothing(pg_server: PgServer, source: str, s3: tuple[Any, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Even aimed at the same key (the run token forced equal), the second completion is refused."""
    monkeypatch.setattr(backup, "utc_now", lambda: MOMENT)
    monkeypatch.setattr(backup.secrets, "token_hex", lambda _: "samekey0")
    inner: list[backup.BackupResult] = []

    def finish_first(_: backup.BackupPipeline, part: int) -> None:
        if part == 1:
            inner.append(pipeline(pg_server, source, s3).run())

    with pytest.raises(cli.ScriptError, match="already exists .*nothing was overwritten"):
        pipeline(pg_server, source, s3, on_part=finish_first).run()
    key = inner[0].manifest.key
    versions = [v for v in s3[0].list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"] if v["Key"] == key]
    assert [v["VersionId"] for v in versions] == [inner[0].manifest.version_id]
    assert s3[0].list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
