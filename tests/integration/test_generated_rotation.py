"""Rotation of the generated secrets (Django SECRET_KEY, Grafana admin password) by the
generated-secret rotation function, called directly with Secrets Manager in moto's server
mode: all four steps, twice over, every step repeated, and the overlap that keeps sessions."""

from __future__ import annotations

import json
import logging
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.dbops import handlers
from scripts.dbops.generated_rotation import (
    DJANGO_KEY_EXCLUDE,
    DJANGO_KEY_LENGTH,
    GRAFANA_PASSWORD_LENGTH,
    GeneratedSecretRotation,
)
from scripts.dbops.rotation import STEPS
from tests.integration.dbops_support import create_function, event, stage_rotation, stages
from tests.integration.dbops_support import read_json as read_version
from tests.services import MotoServer

ROOT = Path(__file__).resolve().parents[2]

pytest_plugins = ["tests.integration.dbops_fixtures"]
# Rotations back to back stand for rotations a period apart (see the fixture).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("rotations_days_apart")]
FUNCTION = "psychology-api-test-db-rotate-generated"
# Invented values in the shapes components/secrets.py and components/monitoring.py write.
FIRST_KEY = "k0-" + "a1B2c3D4e5F6g7H8" * 4
ANNOUNCED_KEY = "n1-" + "Z9y8X7w6V5u4T3s2" * 4
FIRST_PASSWORD = "Grafana0first0password0abcdefghi"


def read_json(sm: Any, secret_id: str, VersionStage: str = "AWSCURRENT") -> dict[str, Any]:  # noqa: N803 - the API's name
    return read_version(sm, secret_id, VersionStage=VersionStage)


def enable_rotation(sm: Any, moto_lambda: MotoServer, secret: str) -> str:
    """As components/dbops.py configures it (rotate_immediately false): Secrets Manager runs
    testSecret on a copy of the current version, then removes that version's stage."""
    function = f"{FUNCTION}-{secret.rsplit(':', 1)[1].rsplit('/', 1)[1]}"
    sm.rotate_secret(SecretId=secret, RotationLambdaARN=create_function(moto_lambda.endpoint_url, function),
                     RotationRules={"AutomaticallyAfterDays": 90}, RotateImmediately=False)
    token = next(v for v, s in stages(sm, secret).items() if "AWSPENDING" in s)
    handlers.generated_rotation_handler(event(secret, token, "testSecret"))
    sm.update_secret_version_stage(SecretId=secret, VersionStage="AWSPENDING", RemoveFromVersionId=token)
    return secret


@pytest.fixture
def django_secret(sm: Any, moto_lambda: MotoServer) -> str:
    arn = sm.create_secret(Name="psychology-api/test/app", SecretString=json.dumps(
        {"SECRET_KEY": FIRST_KEY, "SECRET_KEY_FALLBACKS": [ANNOUNCED_KEY]}))["ARN"]
    return enable_rotation(sm, moto_lambda, str(arn))


@pytest.fixture
def legacy_django_secret(sm: Any, moto_lambda: MotoServer) -> str:
    """An app secret written before keys were announced: SECRET_KEY alone."""
    arn = sm.create_secret(Name="psychology-api/test/app-legacy", SecretString=json.dumps({"SECRET_KEY": FIRST_KEY}))["ARN"]
    return enable_rotation(sm, moto_lambda, str(arn))


@pytest.fixture
def grafana_secret(sm: Any, moto_lambda: MotoServer) -> str:
    arn = sm.create_secret(Name="psychology-api/test/grafana", SecretString=json.dumps(
        {"admin_user": "admin", "admin_password": FIRST_PASSWORD}))["ARN"]
    return enable_rotation(sm, moto_lambda, str(arn))


def rotate(secret: str) -> str:
    token = stage_rotation(secret)
    for step in STEPS:
        handlers.generated_rotation_handler(event(secret, token, step))
    return token


def accepted(doc: dict[str, Any]) -> set[str]:
    """The keys a host on this version accepts signatures of."""
    return {doc["SECRET_KEY"], *doc.get("SECRET_KEY_FALLBACKS", [])}


def assert_overlap(before: dict[str, Any], after: dict[str, Any]) -> None:
    # A host still on `before` accepts what `after` signs, and the other way round.
    assert after["SECRET_KEY"] in accepted(before)
    assert before["SECRET_KEY"] in accepted(after)


def test_two_rotations_promote_the_announced_key_and_keep_the_previous(sm: Any, django_secret: str) -> None:
    first = read_json(sm, django_secret)
    token = rotate(django_secret)
    second = read_json(sm, django_secret)
    assert [v for v, s in stages(sm, django_secret).items() if "AWSCURRENT" in s] == [token]
    assert read_json(sm, django_secret, VersionStage="AWSPREVIOUS") == first
    announced = second["SECRET_KEY_FALLBACKS"][0]
    assert second == {"SECRET_KEY": ANNOUNCED_KEY, "SECRET_KEY_FALLBACKS": [announced, FIRST_KEY]}
    assert len(announced) == DJANGO_KEY_LENGTH and not set(announced) & set(DJANGO_KEY_EXCLUDE)
    assert announced not in (FIRST_KEY, ANNOUNCED_KEY)
    assert_overlap(first, second)

    rotate(django_secret)
    third = read_json(sm, django_secret)
    # The key announced by the first rotation signs now; the first key is gone; two fallbacks at most.
    assert third["SECRET_KEY"] == announced
    assert third["SECRET_KEY_FALLBACKS"][1] == ANNOUNCED_KEY and len(third["SECRET_KEY_FALLBACKS"]) == 2
    assert FIRST_KEY not in accepted(third)
    assert_overlap(second, third)
    assert not any("AWSPENDING" in s for s in stages(sm, django_secret).values())


def test_every_step_twice_is_harmless(sm: Any, django_secret: str) -> None:
    token = stage_rotation(django_secret)
    outcomes = [GeneratedSecretRotation(sm, django_secret, token).run(step).outcome for step in STEPS for _ in range(2)]
    assert outcomes == ["done", "already-done", "done", "done", "done", "done", "done", "already-current"]
    doc = read_json(sm, django_secret)
    assert doc["SECRET_KEY"] == ANNOUNCED_KEY and doc["SECRET_KEY_FALLBACKS"][1] == FIRST_KEY
    for step in STEPS:
        assert GeneratedSecretRotation(sm, django_secret, token).run(step).outcome == "already-current"


def test_a_secret_without_announced_key_announces_first_then_rotates(sm: Any, legacy_django_secret: str) -> None:
    rotate(legacy_django_secret)
    announcing = read_json(sm, legacy_django_secret)
    # The signing key stays (hosts not yet refreshed know no other); the next one is announced.
    assert announcing["SECRET_KEY"] == FIRST_KEY and len(announcing["SECRET_KEY_FALLBACKS"]) == 1
    assert_overlap({"SECRET_KEY": FIRST_KEY}, announcing)
    rotate(legacy_django_secret)
    rotated = read_json(sm, legacy_django_secret)
    assert rotated["SECRET_KEY"] == announcing["SECRET_KEY_FALLBACKS"][0]
    assert rotated["SECRET_KEY_FALLBACKS"][1] == FIRST_KEY
    assert_overlap(announcing, rotated)


@pytest.mark.parametrize(("pending", "reason"), [
    ({"SECRET_KEY": "u" + ANNOUNCED_KEY[1:], "SECRET_KEY_FALLBACKS": [FIRST_KEY]}, "never announced"),
    ({"SECRET_KEY": ANNOUNCED_KEY, "SECRET_KEY_FALLBACKS": []}, "drops the current SECRET_KEY"),
    ({"SECRET_KEY": ANNOUNCED_KEY, "SECRET_KEY_FALLBACKS": ["x" * 60, "y" * 60, FIRST_KEY]}, "at most 2"),
    ({"SECRET_KEY": "short"}, "at least 50"),
    ({"SECRET_KEY": ANNOUNCED_KEY, "SECRET_KEY_FALLBACKS": [FIRST_KEY + ",x"]}, "cannot carry"),
])
def test_test_secret_refuses_a_version_that_would_lose_sessions(sm: Any, django_secret: str, pending: dict[str, Any],
                                                                 reason: str) -> None:
    token = stage_rotation(django_secret)
    sm.put_secret_value(SecretId=django_secret, ClientRequestToken=token, SecretString=json.dumps(pending),
                        VersionStages=["AWSPENDING"])
    with pytest.raises(RuntimeError, match=reason):
        handlers.generated_rotation_handler(event(django_secret, token, "testSecret"))
    assert read_json(sm, django_secret)["SECRET_KEY"] == FIRST_KEY


def test_grafana_password_rotates_twice_user_kept(sm: Any, grafana_secret: str) -> None:
    rotate(grafana_secret)
    first_rotated = read_json(sm, grafana_secret)
    rotate(grafana_secret)
    second_rotated = read_json(sm, grafana_secret)
    for doc in (first_rotated, second_rotated):
        assert doc["admin_user"] == "admin"
        password = doc["admin_password"]
        assert len(password) == GRAFANA_PASSWORD_LENGTH and set(password) <= set(string.ascii_letters + string.digits)
    assert len({FIRST_PASSWORD, first_rotated["admin_password"], second_rotated["admin_password"]}) == 3
    # Until the monitoring host applies the new one, the previous version is the one that logs in.
    assert read_json(sm, grafana_secret, VersionStage="AWSPREVIOUS") == first_rotated


def test_logs_name_steps_never_values(sm: Any, django_secret: str, grafana_secret: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="psychology_api.dbops"):
        rotate(django_secret)
        rotate(grafana_secret)
    text = caplog.text
    assert "createSecret" in text and "finishSecret" in text
    values = [*accepted(read_json(sm, django_secret)), read_json(sm, grafana_secret)["admin_password"], FIRST_PASSWORD]
    assert not [v for v in values if v in text]


def test_a_secret_of_another_kind_is_refused(sm: Any, moto_lambda: MotoServer) -> None:
    arn = str(sm.create_secret(Name="psychology-api/test/other", SecretString=json.dumps({"username": "u", "password": "p"}))["ARN"])
    sm.rotate_secret(SecretId=arn, RotationLambdaARN=create_function(moto_lambda.endpoint_url, FUNCTION),
                     RotationRules={"AutomaticallyAfterDays": 90}, RotateImmediately=False)
    token = stage_rotation(arn)
    with pytest.raises(RuntimeError, match="neither a Django secret"):
        handlers.generated_rotation_handler(event(arn, token, "createSecret"))


@pytest.mark.parametrize("kind", ["django", "grafana"])
def test_a_stale_pending_copy_of_the_current_value_is_made_again(sm: Any, moto_lambda: MotoServer, kind: str) -> None:
    """RotateImmediately=false leaves AWSPENDING on a copy of AWSCURRENT (moto does): the steps
    run with that version's token must make a new value, not promote the copy."""
    value = ({"SECRET_KEY": FIRST_KEY, "SECRET_KEY_FALLBACKS": [ANNOUNCED_KEY]} if kind == "django"
             else {"admin_user": "admin", "admin_password": FIRST_PASSWORD})
    secret = str(sm.create_secret(Name=f"psychology-api/test/stale-{kind}", SecretString=json.dumps(value))["ARN"])
    function = f"{FUNCTION}-stale-{kind}"
    sm.rotate_secret(SecretId=secret, RotationLambdaARN=create_function(moto_lambda.endpoint_url, function),
                     RotationRules={"AutomaticallyAfterDays": 90}, RotateImmediately=False)
    stale = next(v for v, s in stages(sm, secret).items() if "AWSPENDING" in s and "AWSCURRENT" not in s)
    assert read_version(sm, secret, VersionId=stale) == value
    for step in STEPS:
        handlers.generated_rotation_handler(event(secret, stale, step))
    current = read_json(sm, secret)
    if kind == "django":
        assert current["SECRET_KEY"] == ANNOUNCED_KEY and FIRST_KEY in current["SECRET_KEY_FALLBACKS"]
    else:
        assert current["admin_password"] != FIRST_PASSWORD
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())


def test_the_rotate_cli_rotates_generated_secrets_too(sm: Any, django_secret: str, grafana_secret: str,
                                                      moto_lambda: MotoServer) -> None:
    """`python -m scripts.rotate` tells a generated secret by its value and runs the same steps as
    the function (it took them for database credentials before, and failed)."""
    for secret in (django_secret, grafana_secret):
        before = read_json(sm, secret)
        run = subprocess.run([sys.executable, "-m", "scripts.rotate", "--secret-id", secret,
                              "--endpoint-url", moto_lambda.endpoint_url, "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        after = read_json(sm, secret)
        assert after != before and read_json(sm, secret, VersionStage="AWSPREVIOUS") == before
        assert run.stderr.strip().splitlines()[-1].startswith(f"PASS: {secret}: version ")
        for value in [*before.values(), *after.values()]:
            for text in value if isinstance(value, list) else [value]:
                if text != "admin":
                    assert text not in run.stdout + run.stderr
    assert_overlap(read_json(sm, django_secret, VersionStage="AWSPREVIOUS"), read_json(sm, django_secret))
