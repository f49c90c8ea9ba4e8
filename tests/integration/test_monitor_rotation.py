"""Rotation of the monitoring role's credentials (postgres_exporter's) with alternating users
psychology_monitor_a/_b, against a real PostgreSQL and Secrets Manager in moto's server mode,
through the rotation function's handler (the same function rotates the application's secret)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from scripts.dbops import handlers
from scripts.dbops.credentials import can_log_in, ensure_role_matches_secret
from scripts.dbops.rotation import STEPS, Rotation
from scripts.lib.db import DbTarget, connect
from tests.integration.dbops_support import (
    DbSecrets,
    create_function,
    creds,
    event,
    read_json,
    stage_rotation,
    stages,
    version_with,
)
from tests.services import MotoServer, PgServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
# Rotations back to back stand for rotations a period apart (see the fixture).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("rotations_days_apart")]
ROTATION_FUNCTION = "psychology-api-test-db-rotate"
MARKER = "monitor_rotation_marker_7f3a"










def rotate(secret: str) -> str:
    token = stage_rotation(secret)
    for step in STEPS:
        handlers.rotation_handler(event(secret, token, step))
    return token


def enable_rotation(sm: Any, endpoint_url: str, secret: str) -> None:
    """As components/dbops.py does: rotate_immediately false, so Secrets Manager only runs
    testSecret on a copy of the current version."""
    function_arn = create_function(endpoint_url, ROTATION_FUNCTION)
    sm.rotate_secret(SecretId=secret, RotationLambdaARN=function_arn, RotationRules={"AutomaticallyAfterDays": 90},
                     RotateImmediately=False)
    token = next(v for v, s in stages(sm, secret).items() if "AWSPENDING" in s)
    handlers.rotation_handler(event(secret, token, "testSecret"))
    sm.update_secret_version_stage(SecretId=secret, VersionStage="AWSPENDING", RemoveFromVersionId=token)


@pytest.fixture
def monitor_rotation(sm: Any, migrated: DbTarget, db_secrets: DbSecrets, function_env: DbSecrets,
                     moto_lambda: MotoServer) -> str:
    """Migrated, the monitoring secret's first user accepted (what the migrate function does),
    rotation switched on; yields the secret's ARN."""
    ensure_role_matches_secret(migrated, creds(sm, db_secrets.monitor_arn), secret_label="monitoring secret")
    enable_rotation(sm, moto_lambda.endpoint_url, db_secrets.monitor_arn)
    return db_secrets.monitor_arn


def exporter_reads(target: DbTarget, admin: DbTarget) -> None:
    """What postgres_exporter needs, through pg_monitor: the statistics views, including the
    text of other users' statements, and nothing that writes."""
    with connect(admin) as conn:  # constants are normalised away; a column alias is kept
        conn.execute(f"SELECT 1 AS {MARKER}").fetchone()
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM pg_catalog.pg_stat_database").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s",
                            (f"%{MARKER}%",)).fetchone()[0] >= 1  # pg_read_all_stats, from pg_monitor
        assert conn.execute("SELECT pg_has_role(session_user, 'pg_monitor', 'USAGE')").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE written_by_the_exporter (id int)")


def test_full_rotation_switches_users_and_keeps_the_previous_credentials(
        sm: Any, monitor_rotation: str, migrated: DbTarget) -> None:
    secret = monitor_rotation
    before = creds(sm, secret)
    assert before.user == "psychology_monitor_a" and can_log_in(before)
    token = rotate(secret)

    current, previous = creds(sm, secret), creds(sm, secret, "AWSPREVIOUS")
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert current.user == "psychology_monitor_b" and current.password != before.password
    assert (previous.user, previous.password) == (before.user, before.password)
    assert can_log_in(current) and can_log_in(previous)  # the exporter's credentials stay valid
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())
    for target in (current, previous):
        exporter_reads(target, migrated)
    doc = read_json(sm, secret, VersionStage="AWSCURRENT")
    assert {doc["host"], doc["dbname"]} == {before.host, before.dbname}

    token2 = rotate(secret)
    second = creds(sm, secret)
    assert version_with(sm, secret, "AWSCURRENT") == token2
    assert second.user == "psychology_monitor_a" and second.password != before.password
    assert can_log_in(second) and can_log_in(creds(sm, secret, "AWSPREVIOUS"))
    assert not can_log_in(before)  # a's first password ends two rotations later


def test_every_step_twice_is_harmless(sm: Any, monitor_rotation: str, db_secrets: DbSecrets) -> None:
    secret = monitor_rotation
    before = creds(sm, secret)
    token = stage_rotation(secret)
    outcomes = [Rotation(sm, secret, token, master_secret_id=db_secrets.master_arn).run(step).outcome
                for step in STEPS for _ in range(2)]
    assert outcomes == ["done", "already-done", "done", "already-done", "done", "done", "done", "already-current"]
    assert [v for v, s in stages(sm, secret).items() if "AWSCURRENT" in s] == [token]
    assert can_log_in(creds(sm, secret)) and can_log_in(before)


def test_failure_in_set_secret_leaves_current_working(
        sm: Any, monitor_rotation: str, db_secrets: DbSecrets, pg_server: PgServer) -> None:
    secret = monitor_rotation
    current_version, before = version_with(sm, secret, "AWSCURRENT"), creds(sm, secret)
    sm.put_secret_value(SecretId=db_secrets.master_arn, SecretString=json.dumps(
        {"username": pg_server.superuser, "password": "not-the-master-password"}))
    token = stage_rotation(secret)
    handlers.rotation_handler(event(secret, token, "createSecret"))
    with pytest.raises(RuntimeError, match="password authentication failed") as err:
        handlers.rotation_handler(event(secret, token, "setSecret"))
    assert "not-the-master-password" not in str(err.value)
    with pytest.raises(RuntimeError):
        handlers.rotation_handler(event(secret, token, "testSecret"))
    assert version_with(sm, secret, "AWSCURRENT") == current_version
    assert can_log_in(before) and creds(sm, secret) == before

    sm.put_secret_value(SecretId=db_secrets.master_arn, SecretString=json.dumps(
        {"username": pg_server.superuser, "password": pg_server.password}))
    for step in ("setSecret", "testSecret", "finishSecret"):
        handlers.rotation_handler(event(secret, token, step))
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert can_log_in(creds(sm, secret)) and can_log_in(before)


def test_a_secret_from_before_the_user_pair_moves_over_without_a_gap(
        sm: Any, migrated: DbTarget, db_secrets: DbSecrets, function_env: DbSecrets, moto_lambda: MotoServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment from before migration 0004: its monitoring secret names the single login
    psychology_monitor (Pulumi never rewrites the value). The first rotation moves to user a
    while the exporter's psychology_monitor keeps working; the second turns that login off."""
    legacy = creds(sm, db_secrets.monitor_arn).with_credentials("psychology_monitor", "legacy-monitor-password-42")
    secret = sm.create_secret(Name="psychology-api/test/database/monitor-from-0002", SecretString=json.dumps(
        {"username": legacy.user, "password": legacy.password, "host": legacy.host, "port": legacy.port,
         "dbname": legacy.dbname}))["ARN"]
    monkeypatch.setenv("MONITOR_DB_SECRET_ARN", secret)
    answer = handlers.migrate_handler({})  # the bootstrap: sets the password the secret holds
    assert answer["ok"] and {c["role"] for c in answer["credentials"]} == {"psychology_app_a", "psychology_monitor"}
    assert can_log_in(legacy)
    enable_rotation(sm, moto_lambda.endpoint_url, secret)

    rotate(secret)
    first = creds(sm, secret)
    assert first.user == "psychology_monitor_a" and can_log_in(first)
    assert can_log_in(legacy)  # AWSPREVIOUS names it: the exporter has until the next rotation
    exporter_reads(first, migrated)

    rotate(secret)
    assert creds(sm, secret).user == "psychology_monitor_b" and can_log_in(creds(sm, secret)) and can_log_in(first)
    assert not can_log_in(legacy)
    with connect(migrated) as conn:
        assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'psychology_monitor'").fetchone() == (False,)
        # Still the group that gives both users pg_monitor.
        assert conn.execute("SELECT pg_has_role('psychology_monitor_b', 'pg_monitor', 'USAGE')").fetchone() == (True,)
    exporter_reads(creds(sm, secret), migrated)


def test_a_monitoring_version_cannot_hand_out_an_application_users_password(
        sm: Any, monitor_rotation: str, db_secrets: DbSecrets) -> None:
    secret = monitor_rotation
    token = stage_rotation(secret)
    doc = read_json(sm, secret, VersionStage="AWSCURRENT")
    doc.update(username="psychology_app_b", password="chosen-by-an-attacker-1234")
    sm.put_secret_value(SecretId=secret, ClientRequestToken=token, SecretString=json.dumps(doc),
                        VersionStages=["AWSPENDING"])
    with pytest.raises(RuntimeError, match="current user is psychology_monitor_a"):
        handlers.rotation_handler(event(secret, token, "setSecret"))
    app = creds(sm, db_secrets.app_arn)
    assert not can_log_in(app.with_credentials("psychology_app_b", "chosen-by-an-attacker-1234"))
