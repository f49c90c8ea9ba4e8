"""Credential rotation with alternating users, against a real PostgreSQL and Secrets Manager in
moto's server mode. The rotation function's handler is called directly with the events Secrets
Manager sends (moto runs no Lambda code without Docker)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.dbops import handlers
from scripts.dbops.credentials import can_log_in, ensure_role_matches_secret
from scripts.dbops.rotation import EXCLUDE_CHARACTERS, STEPS, Rotation, RotationError, rotate_all
from scripts.lib import cli
from scripts.lib.db import DbTarget, connect, target_from_document
from tests.integration.dbops_support import DbSecrets, creds, event, read_json, stage_rotation, stages, version_with
from tests.services import MotoServer, PgServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
# Rotations back to back stand for rotations a period apart (see the fixture).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("rotations_days_apart")]
ROOT = Path(__file__).resolve().parents[2]










def test_full_rotation_switches_users_and_keeps_the_previous_credentials(
        sm: Any, rotation_enabled: DbSecrets, function_env: DbSecrets) -> None:
    secret = rotation_enabled.app_arn
    before = creds(sm, secret)
    assert before.user == "psychology_app_a" and can_log_in(before)
    token = stage_rotation(secret)

    for step in STEPS:
        handlers.rotation_handler(event(secret, token, step))

    current = creds(sm, secret)
    previous = creds(sm, secret, "AWSPREVIOUS")
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert current.user == "psychology_app_b" and current.password != before.password
    assert previous.user == before.user and previous.password == before.password
    assert can_log_in(current) and can_log_in(previous)  # hosts holding either version keep working
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())
    assert not set(EXCLUDE_CHARACTERS) & set(current.password) and len(current.password) == 32
    doc = read_json(sm, secret)
    assert doc["engine"] == "postgres" and doc["masterarn"] == rotation_enabled.master_arn
    with connect(current) as conn:  # objects made by one user stay usable by the other
        conn.execute("CREATE TABLE made_by_b (id int)")
        conn.commit()
    with connect(previous) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == ("psychology_app_a", "psychology_app")
        conn.execute("INSERT INTO made_by_b VALUES (1)")
        conn.execute("ALTER TABLE made_by_b ADD COLUMN note text")
        conn.commit()

    # The next rotation goes back to user a with a fresh password; b (now previous) still works.
    token2 = stage_rotation(secret)
    for step in STEPS:
        handlers.rotation_handler(event(secret, token2, step))
    second = creds(sm, secret)
    assert second.user == "psychology_app_a" and second.password != before.password
    assert can_log_in(second) and can_log_in(creds(sm, secret, "AWSPREVIOUS"))
    assert not can_log_in(before)  # a's original password ends two rotations later


def test_every_step_twice_is_harmless(sm: Any, rotation_enabled: DbSecrets, function_env: DbSecrets) -> None:
    secret = rotation_enabled.app_arn
    before = creds(sm, secret)
    token = stage_rotation(secret)
    outcomes = []
    for step in STEPS:
        for _ in range(2):
            outcomes.append(Rotation(sm, secret, token, master_secret_id=rotation_enabled.master_arn).run(step).outcome)
    assert outcomes == ["done", "already-done", "done", "already-done", "done", "done", "done", "already-current"]
    versions = stages(sm, secret)
    assert [v for v, s in versions.items() if "AWSCURRENT" in s] == [token]
    assert len([v for v, s in versions.items() if s]) == 2  # current and previous, nothing stray
    assert can_log_in(creds(sm, secret)) and can_log_in(before)
    # After finishing, every step called with that token returns at once.
    for step in STEPS:
        assert Rotation(sm, secret, token).run(step).outcome == "already-current"


@pytest.mark.parametrize("failure", ["wrong master password", "database unreachable"])
def test_failure_in_set_secret_leaves_current_working(
        sm: Any, rotation_enabled: DbSecrets, function_env: DbSecrets, pg_server: PgServer,
        monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    secret = rotation_enabled.app_arn
    current_version = version_with(sm, secret, "AWSCURRENT")
    before = creds(sm, secret)
    if failure == "wrong master password":
        sm.put_secret_value(SecretId=rotation_enabled.master_arn, SecretString=json.dumps(
            {"username": pg_server.superuser, "password": "not-the-master-password"}))
    token = stage_rotation(secret)
    if failure == "database unreachable":
        # The function's environment points at a port where nothing listens.
        from tests.services import free_port

        monkeypatch.setenv("DB_PORT", str(free_port()))
    handlers.rotation_handler(event(secret, token, "createSecret"))
    with pytest.raises(RuntimeError) as err:
        handlers.rotation_handler(event(secret, token, "setSecret"))
    message = str(err.value)
    assert "not-the-master-password" not in message and pg_server.password not in message
    assert ("password authentication failed" in message) if failure == "wrong master password" else ("cannot connect" in message)
    with pytest.raises(RuntimeError):
        handlers.rotation_handler(event(secret, token, "testSecret"))

    assert version_with(sm, secret, "AWSCURRENT") == current_version
    assert can_log_in(before) and creds(sm, secret) == before

    # Fixed, the same rotation completes: every step is safe to retry.
    if failure == "wrong master password":
        sm.put_secret_value(SecretId=rotation_enabled.master_arn, SecretString=json.dumps(
            {"username": pg_server.superuser, "password": pg_server.password}))
        for step in ("setSecret", "testSecret", "finishSecret"):
            handlers.rotation_handler(event(secret, token, step))
        assert version_with(sm, secret, "AWSCURRENT") == token
        assert can_log_in(creds(sm, secret)) and can_log_in(before)


def test_contract_checks(sm: Any, app_ready: DbSecrets, function_env: DbSecrets, request: pytest.FixtureRequest) -> None:
    secret = app_ready.app_arn
    current_version = version_with(sm, secret, "AWSCURRENT")
    token = stage_rotation(secret)
    with pytest.raises(RuntimeError, match="not enabled for rotation"):
        handlers.rotation_handler(event(secret, token, "createSecret"))
    request.getfixturevalue("rotation_enabled")
    token = stage_rotation(secret)
    with pytest.raises(RuntimeError, match="has no stage for rotation"):
        handlers.rotation_handler(event(secret, "1" * 36, "createSecret"))
    with pytest.raises(ValueError, match="lacks 'Step'"):
        handlers.rotation_handler({"SecretId": secret, "ClientRequestToken": token})
    with pytest.raises(RuntimeError, match="unknown step"):
        handlers.rotation_handler(event(secret, token, "dropDatabase"))
    # A version that is already current: nothing to do, whatever the step.
    handlers.rotation_handler(event(secret, current_version, "setSecret"))
    assert version_with(sm, secret, "AWSCURRENT") == current_version


def test_set_secret_never_touches_the_current_user(sm: Any, rotation_enabled: DbSecrets, function_env: DbSecrets) -> None:
    """A pending version naming the current user (not alternating) is refused: changing that
    user's password would cut off every host holding AWSCURRENT."""
    secret = rotation_enabled.app_arn
    token = stage_rotation(secret)
    doc = read_json(sm, secret)
    doc["password"] = "some-other-password-123"
    sm.put_secret_value(SecretId=secret, ClientRequestToken=token, SecretString=json.dumps(doc), VersionStages=["AWSPENDING"])
    with pytest.raises(RuntimeError, match="has the current user"):
        handlers.rotation_handler(event(secret, token, "setSecret"))
    assert can_log_in(creds(sm, secret))


def test_initial_credentials_and_monitor_role_through_the_migrate_handler(
        sm: Any, db_secrets: DbSecrets, function_env: DbSecrets, admin_target: DbTarget) -> None:
    first = handlers.migrate_handler({})
    assert first["ok"] and first["latest"] == "0005_backup_and_drill_roles.sql"
    assert {c["role"] for c in first["credentials"]} == {"psychology_app_a", "psychology_monitor_a"}
    app = creds(sm, db_secrets.app_arn)
    monitor = target_from_document(read_json(sm, db_secrets.monitor_arn))
    assert can_log_in(app) and can_log_in(monitor)
    with connect(monitor) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
    second = handlers.migrate_handler({})
    assert second["ok"] and second["applied"] == []
    assert [c["password_set"] for c in second["credentials"]] == [False, False]
    assert app.password not in json.dumps(first) + json.dumps(second)


def test_migrate_handler_reports_failures_without_secrets(
        sm: Any, db_secrets: DbSecrets, function_env: DbSecrets, pg_server: PgServer) -> None:
    sm.put_secret_value(SecretId=db_secrets.master_arn, SecretString=json.dumps(
        {"username": pg_server.superuser, "password": "wrong-master-password-42"}))
    answer = handlers.migrate_handler({})
    assert answer["ok"] is False and "password authentication failed" in answer["error"]
    assert "wrong-master-password-42" not in json.dumps(answer)


def test_only_project_roles_are_managed(migrated: DbTarget, pg_server: PgServer) -> None:
    tampered = DbTarget(host=pg_server.host, port=pg_server.port, dbname=migrated.dbname, user=pg_server.superuser,
                        password="attacker-chosen-password")
    with pytest.raises(cli.ScriptError, match="not one of"):
        ensure_role_matches_secret(migrated, tampered, secret_label="a tampered secret")


def test_rotate_cli_by_hand(sm: Any, app_ready: DbSecrets, aws_env: MotoServer, pg_server: PgServer) -> None:
    secret = app_ready.app_arn
    before = creds(sm, secret)
    base = [sys.executable, "-m", "scripts.rotate", "--secret-id", secret, "--endpoint-url", aws_env.endpoint_url]
    assert subprocess.run([sys.executable, "-m", "scripts.rotate", "--help"], cwd=ROOT, capture_output=True,
                          text=True).returncode == 0

    created = subprocess.run([*base, "--step", "createSecret", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    for step in ("setSecret", "testSecret", "finishSecret"):
        run = subprocess.run([*base, "--step", step], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert version_with(sm, secret, "AWSCURRENT") == token

    # A second rotation right after the first would retire the credentials that clients which have
    # not refreshed yet still use: refused (the CLI runs in its own process, with the rule on)...
    too_soon = subprocess.run([*base, "--json"], cwd=ROOT, capture_output=True, text=True)
    assert too_soon.returncode == 1 and too_soon.stdout == ""
    assert re.search(r"error: secret \S+ has been current for only 0\.0 h: clients re-read it within 26 h", too_soon.stderr)
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())
    # ... unless the operator says every client has refreshed.
    full = subprocess.run([*base, "--json", "--force"], cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    assert [s["outcome"] for s in json.loads(full.stdout)["steps"]] == ["done"] * 4
    assert "PASS:" in full.stderr.splitlines()[-1]
    assert creds(sm, secret).user == before.user and can_log_in(creds(sm, secret))
    everything = created.stdout + created.stderr + full.stdout + full.stderr
    for secret_value in (before.password, creds(sm, secret).password, pg_server.password):
        assert secret_value not in everything

    missing = subprocess.run([*base, "--step", "setSecret"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and "no rotation" in missing.stderr


def test_rotate_all_in_process(sm: Any, app_ready: DbSecrets) -> None:
    results = rotate_all(sm, app_ready.app_arn)
    assert [r.step for r in results] == list(STEPS)
    assert can_log_in(creds(sm, app_ready.app_arn))
    stage_rotation(app_ready.app_arn)
    with pytest.raises(RotationError, match="already in progress"):
        rotate_all(sm, app_ready.app_arn, token="2" * 36)


@pytest.fixture
def stale_pending(sm: Any, moto_lambda: MotoServer, app_ready: DbSecrets) -> tuple[str, str]:
    """Rotation switched on with RotateImmediately=false and the AWSPENDING version moto leaves
    behind: a copy of AWSCURRENT (same user, same password). Yields (secret, that version)."""
    from tests.integration.dbops_fixtures import ROTATION_FUNCTION
    from tests.integration.dbops_support import create_function

    secret = app_ready.app_arn
    sm.rotate_secret(SecretId=secret, RotationLambdaARN=create_function(moto_lambda.endpoint_url, ROTATION_FUNCTION),
                     RotationRules={"AutomaticallyAfterDays": 90}, RotateImmediately=False)
    stale = next(v for v, s in stages(sm, secret).items() if "AWSPENDING" in s and "AWSCURRENT" not in s)
    assert read_json(sm, secret, VersionId=stale) == read_json(sm, secret)  # the copy that used to wedge setSecret
    return secret, stale


def test_a_stale_pending_copy_of_the_current_user_is_made_again(
        sm: Any, stale_pending: tuple[str, str], function_env: DbSecrets) -> None:
    secret, stale = stale_pending
    before = creds(sm, secret)
    for step in STEPS:  # Secrets Manager retrying the rotation in progress, with its token
        handlers.rotation_handler(event(secret, stale, step))
    current = creds(sm, secret)
    assert version_with(sm, secret, "AWSCURRENT") == stale
    assert current.user == "psychology_app_b" and current.password != before.password
    assert can_log_in(current) and can_log_in(creds(sm, secret, "AWSPREVIOUS")) and can_log_in(before)
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())


def test_a_rotation_by_hand_finishes_past_a_stale_pending_version(
        sm: Any, stale_pending: tuple[str, str], function_env: DbSecrets) -> None:
    """`scripts.rotate` picks up the version in progress, which is the stale copy."""
    secret, stale = stale_pending
    lines: list[str] = []
    results = rotate_all(sm, secret, master_secret_id=function_env.master_arn, log=lines.append)
    assert [r.outcome for r in results] == ["done"] * 4 and {r.token for r in results} == {stale}
    assert any(line.startswith(f"createSecret: version {stale} holds a copy of the current credentials; making it again")
               for line in lines)
    assert creds(sm, secret).user == "psychology_app_b" and can_log_in(creds(sm, secret))
