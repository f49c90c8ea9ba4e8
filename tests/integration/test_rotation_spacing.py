"""Two rotations of one secret too close together: the second would retire the value that
clients which have not re-read the secret since the first still use. Real PostgreSQL and moto's
Secrets Manager; the rule is on here (the other rotation tests switch it off to rotate back to
back)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from scripts.dbops import handlers
from scripts.dbops.credentials import can_log_in
from scripts.dbops.rotation import HOST_REFRESH_HOURS, MIN_HOURS_BETWEEN_ROTATIONS, STEPS
from tests.integration.dbops_support import (
    DbSecrets,
    age_current_version,
    create_function,
    creds,
    event,
    stage_rotation,
    stages,
)
from tests.services import MotoServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration


def rotate(secret: str, handler: Any = handlers.rotation_handler) -> str:
    token = stage_rotation(secret)
    for step in STEPS:
        handler(event(secret, token, step))
    return token


def test_a_second_rotation_within_a_day_is_refused_and_every_client_keeps_working(
        sm: Any, rotation_enabled: DbSecrets, function_env: DbSecrets) -> None:
    secret = rotation_enabled.app_arn
    held_by_a_host = creds(sm, secret)       # what a host read before the first rotation
    rotate(secret)                           # the first rotation retires nothing a client holds
    assert can_log_in(held_by_a_host) and can_log_in(creds(sm, secret))

    token = stage_rotation(secret)           # `aws secretsmanager rotate-secret` an hour later
    with pytest.raises(RuntimeError, match=r"^secret \S+ has been current for only 0\.0 h: clients re-read it within "
                                           rf"{HOST_REFRESH_HOURS} h, and those that have not yet still use the previous "
                                           r"value, which this rotation would retire; rotate after \d{4}-\d\d-\d\d \d\d:\d\d UTC"):
        handlers.rotation_handler(event(secret, token, "createSecret"))
    assert can_log_in(held_by_a_host), "the host that has not refreshed yet was locked out"
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.get_secret_value(SecretId=secret, VersionId=token)  # nothing was staged

    # A day and more later every client has refreshed: the rotation goes ahead.
    age_current_version(secret, MIN_HOURS_BETWEEN_ROTATIONS)
    rotate(secret)
    assert can_log_in(creds(sm, secret)) and can_log_in(creds(sm, secret, "AWSPREVIOUS"))
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())


def test_the_rule_holds_for_generated_secrets_too(sm: Any, moto_lambda: MotoServer) -> None:
    """The spacing is the contract's (SecretRotation), so the Redis token and the generated
    secrets keep it too: here Django's key, whose second rotation would make a key sign that
    hosts on the first version's keys do not accept."""
    secret = sm.create_secret(Name="psychology-api/test/app-spacing", SecretString=json.dumps(
        {"SECRET_KEY": secrets.token_urlsafe(48), "SECRET_KEY_FALLBACKS": [secrets.token_urlsafe(48)]}))["ARN"]
    function = create_function(moto_lambda.endpoint_url, "psychology-api-test-db-rotate-generated-spacing")
    sm.rotate_secret(SecretId=secret, RotationLambdaARN=function,
                     RotationRules={"AutomaticallyAfterDays": 90}, RotateImmediately=False)
    for version, version_stages in stages(sm, secret).items():
        if "AWSPENDING" in version_stages:
            sm.update_secret_version_stage(SecretId=secret, VersionStage="AWSPENDING", RemoveFromVersionId=version)
    rotate(secret, handlers.generated_rotation_handler)
    token = stage_rotation(secret)
    with pytest.raises(RuntimeError, match="has been current for only 0.0 h"):
        handlers.generated_rotation_handler(event(secret, token, "createSecret"))
