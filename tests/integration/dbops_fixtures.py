"""Fixtures for the database-operations tests (migrations, rotation, smoke): a migrated
database, the project's secrets in moto's Secrets Manager in the formats AWS uses, and the
environment the Lambda functions get. Imported with `pytest_plugins`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from scripts.dbops.credentials import ensure_role_matches_secret
from scripts.dbops.migrations import default_directory, migrate
from scripts.lib.db import DbTarget, target_from_document, target_from_dsn
from tests.integration.dbops_support import DbSecrets, create_function, read_json, safe_password
from tests.services import MotoServer, PgServer

ROTATION_FUNCTION = "psychology-api-test-db-rotate"


@pytest.fixture
def admin_target(pg_server: PgServer, database: str) -> DbTarget:
    """The database as its administrator (the RDS master in AWS)."""
    return target_from_dsn(pg_server.dsn(database))


@pytest.fixture
def migrated(admin_target: DbTarget) -> DbTarget:
    migrate(admin_target)
    return admin_target


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """The project's migrations in a scratch directory the test may add files to."""
    target = tmp_path / "migrations"
    shutil.copytree(default_directory(), target)
    return target


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Every boto3 client created from here on (the handlers' too) talks to moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint_url)
    return moto


@pytest.fixture
def sm(aws_env: MotoServer) -> Any:
    return boto3.client("secretsmanager", endpoint_url=aws_env.endpoint_url, region_name="eu-central-1")


@pytest.fixture
def db_secrets(sm: Any, pg_server: PgServer, database: str) -> DbSecrets:
    """The secrets as AWS holds them before the first migration: the RDS-managed master secret
    ({username, password} only), the application's credentials with the first login user, and
    the monitoring role's credentials. Nothing is set on the database yet."""
    master = sm.create_secret(Name="rds!db-test", SecretString=json.dumps(
        {"username": pg_server.superuser, "password": pg_server.password}))["ARN"]
    app = sm.create_secret(Name="psychology-api/test/database/app", SecretString=json.dumps({
        "engine": "postgres", "host": pg_server.host, "port": pg_server.port, "dbname": database,
        "username": "psychology_app_a", "password": safe_password(), "masterarn": master}))["ARN"]
    monitor = sm.create_secret(Name="psychology-api/test/database/monitor", SecretString=json.dumps({
        "username": "psychology_monitor_a", "password": safe_password(), "host": pg_server.host,
        "port": pg_server.port, "dbname": database}))["ARN"]
    return DbSecrets(master, app, monitor, pg_server.host, pg_server.port, database)


@pytest.fixture
def function_env(db_secrets: DbSecrets, monkeypatch: pytest.MonkeyPatch) -> DbSecrets:
    for key, value in db_secrets.env().items():
        monkeypatch.setenv(key, value)
    return db_secrets


@pytest.fixture
def app_ready(migrated: DbTarget, sm: Any, db_secrets: DbSecrets) -> DbSecrets:
    """Migrated, and the application's current credentials accepted (the initial-credentials step)."""
    doc = read_json(sm, db_secrets.app_arn)
    ensure_role_matches_secret(migrated, target_from_document(doc), secret_label="app secret")
    return db_secrets


@pytest.fixture
def moto_lambda(aws_env: MotoServer) -> Iterator[MotoServer]:
    """moto's Docker-free Lambda: invocations answer what the test queued (the real handler's
    answer, computed by calling the handler directly)."""
    requests.post(f"{aws_env.endpoint_url}/moto-api/config", json={"lambda": {"use_docker": False}}, timeout=10)
    try:
        yield aws_env
    finally:
        requests.post(f"{aws_env.endpoint_url}/moto-api/config", json={"lambda": {"use_docker": True}}, timeout=10)


@pytest.fixture
def rotation_enabled(sm: Any, moto_lambda: MotoServer, app_ready: DbSecrets) -> DbSecrets:
    """Rotation configured as components/dbops.py does (SecretRotation with rotate_immediately
    false): Secrets Manager checks the configuration with the function's testSecret step on a
    copy of the current version, then removes that version's AWSPENDING stage."""
    from scripts.dbops import handlers

    function_arn = create_function(moto_lambda.endpoint_url, ROTATION_FUNCTION)
    sm.rotate_secret(SecretId=app_ready.app_arn, RotationLambdaARN=function_arn,
                     RotationRules={"AutomaticallyAfterDays": 90}, RotateImmediately=False)
    versions = sm.describe_secret(SecretId=app_ready.app_arn)["VersionIdsToStages"]
    token = next(v for v, stages in versions.items() if "AWSPENDING" in stages)
    handlers.rotation_handler({"SecretId": app_ready.app_arn, "ClientRequestToken": token, "Step": "testSecret"})
    sm.update_secret_version_stage(SecretId=app_ready.app_arn, VersionStage="AWSPENDING", RemoveFromVersionId=token)
    assert sm.describe_secret(SecretId=app_ready.app_arn)["RotationEnabled"] is True
    return app_ready


@pytest.fixture
def rotations_days_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests rotate one secret several times in a row, standing for rotations a period
    apart: the spacing rule (tests/integration/test_rotation_spacing.py) is off for them, in this
    process only."""
    from scripts.dbops import rotation

    monkeypatch.setattr(rotation, "MIN_HOURS_BETWEEN_ROTATIONS", 0)
