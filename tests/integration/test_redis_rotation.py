"""Rotation of the Redis AUTH token against a real TLS-only Redis and Secrets Manager in moto's
server mode. What is proven how:

* Secrets Manager's side (versions, stages, GetRandomPassword, the contract's checks): moto.
* Which tokens Redis accepts (logins over TLS with AUTH, PING, SET/GET): the real redis-server.
* The token changes themselves go through `RedisAclTokens` (redis_rotation_fixtures.py), which
  applies ElastiCache's ROTATE/SET rules to that Redis through ACLs; moto does not implement
  them. The boto3 calls of the ElastiCache implementation are checked against botocore's
  service model in tests/unit/test_elasticache_tokens.py.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.dbops import handlers
from scripts.dbops.redis_rotation import TOKEN_LENGTH, RedisRotation
from scripts.dbops.rotation import STEPS, RotationError
from scripts.lib.cli import ScriptError
from tests.integration.dbops_support import create_function, read_json, stage_rotation, stages, version_with
from tests.integration.redis_rotation_support import FIRST_TOKEN, LocalRedis, RedisAclTokens
from tests.services import MotoServer, free_port

pytest_plugins = ["tests.integration.dbops_fixtures", "tests.integration.redis_rotation_fixtures"]
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ROTATION_FUNCTION = "psychology-api-test-db-rotate-redis"






def token_of(sm: Any, secret_id: str, stage: str = "AWSCURRENT") -> str:
    return str(read_json(sm, secret_id, VersionStage=stage)["auth_token"])


def rotation(sm: Any, secret: str, token: str, tokens: RedisAclTokens, server: LocalRedis, **kwargs: Any) -> RedisRotation:
    return RedisRotation(sm, secret, token, tokens=tokens, ca_bundle=server.ca_bundle, **kwargs)


def rotate_once(sm: Any, secret: str, tokens: RedisAclTokens, server: LocalRedis) -> str:
    token = stage_rotation(secret)
    for step in STEPS:
        rotation(sm, secret, token, tokens, server).run(step)
    return token


@pytest.fixture
def redis_rotation_enabled(sm: Any, moto_lambda: MotoServer, redis_secret: str, acl_tokens: RedisAclTokens,
                           local_redis: LocalRedis) -> str:
    """Rotation switched on as components/dbops.py does (rotate_immediately false): Secrets
    Manager checks the function with testSecret on a copy of the current version."""
    function_arn = create_function(moto_lambda.endpoint_url, ROTATION_FUNCTION)
    sm.rotate_secret(SecretId=redis_secret, RotationLambdaARN=function_arn, RotationRules={"AutomaticallyAfterDays": 90},
                     RotateImmediately=False)
    token = next(v for v, s in stages(sm, redis_secret).items() if "AWSPENDING" in s)
    assert rotation(sm, redis_secret, token, acl_tokens, local_redis).run("testSecret").outcome == "done"
    sm.update_secret_version_stage(SecretId=redis_secret, VersionStage="AWSPENDING", RemoveFromVersionId=token)
    assert acl_tokens.calls == []  # enabling changes nothing on the group
    return redis_secret


def test_full_rotation_new_token_logs_in_and_the_previous_still_does(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis) -> None:
    secret = redis_rotation_enabled
    token = rotate_once(sm, secret, acl_tokens, local_redis)

    new = token_of(sm, secret)
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert token_of(sm, secret, "AWSPREVIOUS") == FIRST_TOKEN
    assert new != FIRST_TOKEN and len(new) == TOKEN_LENGTH and set(new) <= set(string.ascii_letters + string.digits)
    assert local_redis.accepts(new) and local_redis.accepts(FIRST_TOKEN)  # running clients keep working
    assert not local_redis.accepts("not-a-token-0123456789")
    assert local_redis.token_count() == 2
    # No previous version yet: nothing to drop before the new token comes in.
    assert acl_tokens.changes() == [("rotate_in", new)]
    assert not any("AWSPENDING" in s for s in stages(sm, secret).values())
    doc = read_json(sm, secret, VersionStage="AWSCURRENT")
    assert doc == {"host": local_redis.host, "port": local_redis.port, "auth_token": new, "tls": True}
    with local_redis.client(new) as client:  # the probe key of testSecret is gone
        assert client.keys("psychology-api:rotation-probe:*") == []


def test_every_step_twice_is_harmless(sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens,
                                      local_redis: LocalRedis) -> None:
    secret = redis_rotation_enabled
    token = stage_rotation(secret)
    outcomes = [rotation(sm, secret, token, acl_tokens, local_redis).run(step).outcome for step in STEPS for _ in range(2)]
    assert outcomes == ["done", "already-done", "done", "already-done", "done", "done", "done", "already-current"]
    assert [c[0] for c in acl_tokens.changes()] == ["rotate_in"]  # the second setSecret changed nothing
    assert local_redis.accepts(token_of(sm, secret)) and local_redis.accepts(FIRST_TOKEN)
    assert local_redis.token_count() == 2
    versions = stages(sm, secret)
    assert [v for v, s in versions.items() if "AWSCURRENT" in s] == [token]
    for step in STEPS:
        assert rotation(sm, secret, token, acl_tokens, local_redis).run(step).outcome == "already-current"


def test_second_rotation_removes_the_oldest_token(sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens,
                                                  local_redis: LocalRedis) -> None:
    secret = redis_rotation_enabled
    rotate_once(sm, secret, acl_tokens, local_redis)
    first_rotated = token_of(sm, secret)
    rotate_once(sm, secret, acl_tokens, local_redis)
    second_rotated = token_of(sm, secret)

    assert token_of(sm, secret, "AWSPREVIOUS") == first_rotated
    assert local_redis.accepts(second_rotated) and local_redis.accepts(first_rotated)
    assert not local_redis.accepts(FIRST_TOKEN)  # the oldest one ends with the second rotation
    assert local_redis.token_count() == 2
    assert acl_tokens.changes() == [("rotate_in", first_rotated), ("set_only", first_rotated), ("rotate_in", second_rotated)]
    # Each change is waited for before the next step goes on.
    assert acl_tokens.calls[-2:] == [("rotate_in", second_rotated), ("wait_available", "")]


# (call that fails, successful calls of it before): setSecret of a second rotation waits, SETs
# the current token, waits, ROTATEs the new one in and waits again.
FAILURES = {"ROTATE refused": ("rotate_in", 0), "SET refused": ("set_only", 0),
            "timeout after SET": ("wait_available", 1), "timeout after ROTATE": ("wait_available", 2),
            "Redis unreachable": (None, 0)}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failure_in_set_secret_leaves_current_working(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis, failure: str) -> None:
    secret = redis_rotation_enabled
    rotate_once(sm, secret, acl_tokens, local_redis)  # so that the failing rotation has a SET to do too
    current_version, current = version_with(sm, secret, "AWSCURRENT"), token_of(sm, secret)
    token = stage_rotation(secret)
    # Unreachable: the function's environment names a port where nothing listens.
    endpoint = {"port": free_port()} if failure == "Redis unreachable" else {}
    rotation(sm, secret, token, acl_tokens, local_redis, endpoint=endpoint).run("createSecret")
    acl_tokens.fail_at, acl_tokens.fail_after = FAILURES[failure]
    with pytest.raises(ScriptError) as err:  # RotationError, or the ElastiCache call's own error
        rotation(sm, secret, token, acl_tokens, local_redis, endpoint=endpoint).run("setSecret")
    pending = str(read_json(sm, secret, VersionId=token)["auth_token"])
    message = str(err.value)
    assert pending not in message and current not in message and "\n" not in message
    assert ("cannot reach" in message) if failure == "Redis unreachable" else ("InvalidReplicationGroupState" in message)
    if failure != "timeout after ROTATE":
        # testSecret cannot pass with a token Redis does not accept (or cannot be asked about).
        with pytest.raises(RotationError):
            rotation(sm, secret, token, acl_tokens, local_redis, endpoint=endpoint).run("testSecret")

    assert version_with(sm, secret, "AWSCURRENT") == current_version
    assert local_redis.accepts(current)  # whatever failed, the current token works

    if failure == "Redis unreachable":
        return
    # Fixed, the same rotation completes: every step is safe to retry.
    for step in ("setSecret", "testSecret", "finishSecret"):
        rotation(sm, secret, token, acl_tokens, local_redis).run(step)
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert local_redis.accepts(pending) and local_redis.accepts(current)
    assert local_redis.token_count() == 2


def test_a_group_that_lost_the_current_token_gets_it_back(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis) -> None:
    """A replaced replication group starts with the token Pulumi first generated, not the
    rotated one every client holds: the next rotation restores the current token, then rotates."""
    secret = redis_rotation_enabled
    rotate_once(sm, secret, acl_tokens, local_redis)
    current = token_of(sm, secret)
    with local_redis.admin() as admin:  # what the new group knows
        admin.acl_setuser("default", enabled=True, reset_passwords=True, passwords=[f"+{FIRST_TOKEN}"])
    assert not local_redis.accepts(current)
    acl_tokens.calls.clear()

    rotate_once(sm, secret, acl_tokens, local_redis)
    new = token_of(sm, secret)
    assert acl_tokens.changes() == [("rotate_in", current), ("set_only", current), ("rotate_in", new)]
    assert local_redis.accepts(new) and local_redis.accepts(current) and not local_redis.accepts(FIRST_TOKEN)


def test_pending_version_pointing_elsewhere_is_refused(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis) -> None:
    secret = redis_rotation_enabled
    token = stage_rotation(secret)
    doc = read_json(sm, secret, VersionStage="AWSCURRENT")
    doc.update(host="redis.attacker.example", auth_token="A" * 64)
    sm.put_secret_value(SecretId=secret, ClientRequestToken=token, SecretString=json.dumps(doc), VersionStages=["AWSPENDING"])
    with pytest.raises(RotationError, match="not the Redis endpoint"):
        rotation(sm, secret, token, acl_tokens, local_redis).run("setSecret")
    assert acl_tokens.calls == []


def test_handler_with_the_function_environment(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda entry point: endpoint from REDIS_HOST/REDIS_PORT, the group from
    REDIS_REPLICATION_GROUP_ID (here the ACL implementation stands in for ElastiCache), the
    system's CA store (here the test CA through SSL_CERT_FILE)."""
    secret = redis_rotation_enabled
    seen: list[str] = []
    real_factory = handlers.auth_tokens_from_environment

    def tokens_for_test() -> RedisAclTokens:
        seen.append(handlers._env("REDIS_REPLICATION_GROUP_ID"))
        return acl_tokens

    monkeypatch.setattr(handlers, "auth_tokens_from_environment", tokens_for_test)
    monkeypatch.setenv("REDIS_REPLICATION_GROUP_ID", "psychology-api-test-redis")
    monkeypatch.setenv("REDIS_HOST", local_redis.host)
    monkeypatch.setenv("REDIS_PORT", str(local_redis.port))
    monkeypatch.setenv("SSL_CERT_FILE", local_redis.ca_bundle)
    token = stage_rotation(secret)
    for step in STEPS:
        handlers.redis_rotation_handler({"SecretId": secret, "ClientRequestToken": token, "Step": step})
    assert seen == ["psychology-api-test-redis"] * 4
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert local_redis.accepts(token_of(sm, secret)) and local_redis.accepts(FIRST_TOKEN)

    # Failures reach Secrets Manager as exceptions with masked, one-line messages.
    token = stage_rotation(secret)
    handlers.redis_rotation_handler({"SecretId": secret, "ClientRequestToken": token, "Step": "createSecret"})
    acl_tokens.fail_at = "rotate_in"
    with pytest.raises(RuntimeError, match="InvalidReplicationGroupState"):
        handlers.redis_rotation_handler({"SecretId": secret, "ClientRequestToken": token, "Step": "setSecret"})
    with pytest.raises(ValueError, match="lacks 'Step'"):
        handlers.redis_rotation_handler({"SecretId": secret, "ClientRequestToken": token})
    monkeypatch.setattr(handlers, "auth_tokens_from_environment", real_factory)
    monkeypatch.delenv("REDIS_REPLICATION_GROUP_ID")
    with pytest.raises(RuntimeError, match="lacks REDIS_REPLICATION_GROUP_ID"):
        handlers.redis_rotation_handler({"SecretId": secret, "ClientRequestToken": token, "Step": "setSecret"})


def test_the_redis_secret_is_refused_by_the_database_rotation(sm: Any, redis_rotation_enabled: str,
                                                               function_env: Any) -> None:
    token = stage_rotation(redis_rotation_enabled)
    with pytest.raises(RuntimeError, match="lacks username/password|not one of the alternating users"):
        handlers.rotation_handler({"SecretId": redis_rotation_enabled, "ClientRequestToken": token, "Step": "createSecret"})


def test_rotate_cli_on_the_redis_secret(sm: Any, redis_secret: str, aws_env: MotoServer, local_redis: LocalRedis) -> None:
    base = [sys.executable, "-m", "scripts.rotate", "--secret-id", redis_secret, "--endpoint-url", aws_env.endpoint_url]
    created = subprocess.run([*base, "--step", "createSecret", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    pending = str(read_json(sm, redis_secret, VersionId=token)["auth_token"])
    assert len(pending) == TOKEN_LENGTH and pending != FIRST_TOKEN
    assert "AWSPENDING" in stages(sm, redis_secret)[token]

    tested = subprocess.run([*base, "--step", "testSecret", "--redis-ca-bundle", local_redis.ca_bundle],
                            cwd=ROOT, capture_output=True, text=True)
    assert tested.returncode == 1 and "refuses the pending token" in tested.stderr  # not on the group yet
    no_group = subprocess.run([*base, "--step", "setSecret", "--redis-ca-bundle", local_redis.ca_bundle],
                              cwd=ROOT, capture_output=True, text=True)
    assert no_group.returncode == 1 and "needs --replication-group-id" in no_group.stderr
    everything = created.stdout + created.stderr + tested.stdout + tested.stderr + no_group.stdout + no_group.stderr
    assert pending not in everything and FIRST_TOKEN not in everything
    assert local_redis.accepts(FIRST_TOKEN) and not local_redis.accepts(pending)
