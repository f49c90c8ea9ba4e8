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
from scripts.dbops.elasticache import LAMBDA_SAFETY_MARGIN_SECONDS, Deadline
from scripts.dbops.redis_rotation import TOKEN_LENGTH, RedisRotation
from scripts.dbops.rotation import STEPS, RotationError
from scripts.lib.cli import ScriptError
from tests.integration.dbops_support import create_function, event, read_json, stage_rotation, stages, version_with
from tests.integration.redis_rotation_support import FIRST_TOKEN, LocalRedis, RedisAclTokens
from tests.services import MotoServer, free_port

pytest_plugins = ["tests.integration.dbops_fixtures", "tests.integration.redis_rotation_fixtures"]
# Rotations back to back stand for rotations a period apart (see the fixture).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("rotations_days_apart")]
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


# A second rotation: createSecret waits, SETs the current token (the previous one goes) and
# waits; setSecret waits, ROTATEs the new token in and waits. (step that fails, call that fails,
# successful calls of it in that step before):
FAILURES = {"SET refused": ("createSecret", "set_only", 0), "timeout after SET": ("createSecret", "wait_available", 1),
            "Redis unreachable at createSecret": ("createSecret", None, 0),
            "ROTATE refused": ("setSecret", "rotate_in", 0), "timeout after ROTATE": ("setSecret", "wait_available", 1),
            "Redis unreachable": ("setSecret", None, 0)}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failure_in_a_token_change_leaves_current_working(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis, failure: str) -> None:
    secret = redis_rotation_enabled
    rotate_once(sm, secret, acl_tokens, local_redis)  # so that the failing rotation has a SET to do too
    current_version, current = version_with(sm, secret, "AWSCURRENT"), token_of(sm, secret)
    previous = token_of(sm, secret, "AWSPREVIOUS")
    token = stage_rotation(secret)
    step, fail_at, fail_after = FAILURES[failure]
    # Unreachable: the function's environment names a port where nothing listens.
    endpoint = {"port": free_port()} if "unreachable" in failure else {}
    if failure == "Redis unreachable":
        # Staged by a createSecret that ran while the environment named that port already.
        doc = {**read_json(sm, secret, VersionStage="AWSCURRENT"), **endpoint, "auth_token": "N3wToken" * 8}
        sm.put_secret_value(SecretId=secret, ClientRequestToken=token, SecretString=json.dumps(doc),
                            VersionStages=["AWSPENDING"])
    elif step == "setSecret":
        rotation(sm, secret, token, acl_tokens, local_redis, endpoint=endpoint).run("createSecret")
    acl_tokens.calls.clear()
    acl_tokens.fail_at, acl_tokens.fail_after = fail_at, fail_after
    with pytest.raises(ScriptError) as err:  # RotationError, or the ElastiCache call's own error
        rotation(sm, secret, token, acl_tokens, local_redis, endpoint=endpoint).run(step)
    message = str(err.value)
    if step == "setSecret":
        pending = str(read_json(sm, secret, VersionId=token)["auth_token"])
        assert pending not in message
    else:  # nothing was staged: the retried createSecret starts over
        assert not acl_tokens.changes() or acl_tokens.changes() == [("set_only", current)]
        with pytest.raises(sm.exceptions.ResourceNotFoundException):
            read_json(sm, secret, VersionId=token, VersionStage="AWSPENDING")
    assert current not in message and previous not in message and "\n" not in message
    assert ("cannot reach" in message) if "unreachable" in failure else ("InvalidReplicationGroupState" in message)
    if failure != "timeout after ROTATE":
        # testSecret cannot pass with a token Redis does not accept (or cannot be asked about),
        # nor with no pending value at all.
        with pytest.raises(ScriptError):
            rotation(sm, secret, token, acl_tokens, local_redis, endpoint=endpoint).run("testSecret")

    assert version_with(sm, secret, "AWSCURRENT") == current_version
    assert local_redis.accepts(current)  # whatever failed, the current token works

    if "unreachable" in failure:
        return
    # Fixed, the same rotation completes: every step is safe to retry.
    for retried in STEPS[STEPS.index(step):]:
        rotation(sm, secret, token, acl_tokens, local_redis).run(retried)
    pending = str(read_json(sm, secret, VersionId=token)["auth_token"])
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert local_redis.accepts(pending) and local_redis.accepts(current) and not local_redis.accepts(previous)
    assert local_redis.token_count() == 2


# --- time: every step fits the function's time -------------------------------------------
# A token change keeps the group busy for CHANGE simulated seconds (RedisAclTokens); each step
# is one Lambda invocation with its own deadline, as redis_rotation_handler derives it from the
# Lambda context.
CHANGE = 240.0


def invoke(sm: Any, secret: str, token: str, tokens: RedisAclTokens, server: LocalRedis, step: str,
           seconds: float) -> tuple[str, list[str]]:
    """One invocation of `step` with `seconds` until its deadline: (outcome, token changes made)."""
    tokens.deadline = Deadline.after(seconds, clock=tokens.clock, what="the test function's timeout")
    before = len(tokens.changes())
    outcome = rotation(sm, secret, token, tokens, server).run(step).outcome
    return outcome, [name for name, _ in tokens.changes()[before:]]


def test_no_step_needs_more_than_one_token_change(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis) -> None:
    """Time for one change and its wait (and not for two) is enough for every step of every
    rotation: the previous token goes at the next createSecret (SET), the new one comes in at
    setSecret (ROTATE)."""
    secret = redis_rotation_enabled
    acl_tokens.change_seconds = CHANGE
    tokens_seen = [FIRST_TOKEN]
    for rotation_number in range(3):
        token = stage_rotation(secret)
        changes = {step: invoke(sm, secret, token, acl_tokens, local_redis, step, 1.5 * CHANGE)[1] for step in STEPS}
        assert changes == {"createSecret": ["set_only"] if rotation_number else [], "setSecret": ["rotate_in"],
                           "testSecret": [], "finishSecret": []}
        tokens_seen.append(token_of(sm, secret))
        assert local_redis.accepts(tokens_seen[-1]) and local_redis.accepts(tokens_seen[-2])
        assert local_redis.token_count() == 2
    assert not any(local_redis.accepts(old) for old in tokens_seen[:-2])


def test_a_step_out_of_time_fails_with_retry_and_the_retry_completes(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis) -> None:
    secret = redis_rotation_enabled
    rotate_once(sm, secret, acl_tokens, local_redis)
    acl_tokens.change_seconds = CHANGE
    current_version, current, previous = version_with(sm, secret, "AWSCURRENT"), token_of(sm, secret), FIRST_TOKEN

    # No time left at all: createSecret starts no change it could not wait for.
    token = stage_rotation(secret)
    with pytest.raises(ScriptError, match=r"gets no SET of its token; this step's time is up .*: retry this step"):
        invoke(sm, secret, token, acl_tokens, local_redis, "createSecret", 0)
    assert acl_tokens.busy_until <= acl_tokens.clock.now  # nothing started
    assert invoke(sm, secret, token, acl_tokens, local_redis, "createSecret", 1.5 * CHANGE) == ("done", ["set_only"])
    assert not local_redis.accepts(previous) and local_redis.accepts(current)

    # Half a change's time: the ROTATE starts, its wait stops at the deadline, one line, no token.
    started = acl_tokens.clock.now
    with pytest.raises(ScriptError) as err:
        invoke(sm, secret, token, acl_tokens, local_redis, "setSecret", CHANGE / 2)
    message = str(err.value)
    assert message.endswith("retry this step, it continues from where the group is") and "\n" not in message
    assert current not in message and str(read_json(sm, secret, VersionId=token)["auth_token"]) not in message
    assert acl_tokens.clock.now == started + CHANGE / 2  # it never waited past its deadline
    assert version_with(sm, secret, "AWSCURRENT") == current_version and local_redis.accepts(current)

    # The retry (Secrets Manager's, or by hand) waits for the change still running and finds
    # it done: no second ROTATE.
    assert invoke(sm, secret, token, acl_tokens, local_redis, "setSecret", 1.5 * CHANGE) == ("already-done", [])
    for step in ("testSecret", "finishSecret"):
        invoke(sm, secret, token, acl_tokens, local_redis, step, 1.5 * CHANGE)
    assert version_with(sm, secret, "AWSCURRENT") == token
    assert local_redis.accepts(token_of(sm, secret)) and local_redis.accepts(current) and local_redis.token_count() == 2


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

    def tokens_for_test(deadline: Deadline) -> RedisAclTokens:
        seen.append(handlers._env("REDIS_REPLICATION_GROUP_ID"))
        assert deadline.remaining() > 0  # no context: the function's timeout less the margin
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


class LambdaContext:
    """The one method of Lambda's context object the handler uses."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_the_handler_waits_only_until_its_deadline_from_the_lambda_context(
        sm: Any, redis_rotation_enabled: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    deadlines: list[Deadline] = []

    def tokens_for_test(deadline: Deadline) -> RedisAclTokens:
        deadlines.append(deadline)
        acl_tokens.deadline = deadline
        return acl_tokens

    monkeypatch.setattr(handlers, "auth_tokens_from_environment", tokens_for_test)
    monkeypatch.setenv("REDIS_REPLICATION_GROUP_ID", "psychology-api-test-redis")
    monkeypatch.setenv("REDIS_HOST", local_redis.host)
    monkeypatch.setenv("REDIS_PORT", str(local_redis.port))
    monkeypatch.setenv("SSL_CERT_FILE", local_redis.ca_bundle)
    token = stage_rotation(redis_rotation_enabled)
    handlers.redis_rotation_handler(event(redis_rotation_enabled, token, "createSecret"), LambdaContext(600_000))
    # 600 s left when the step began, less the margin for what follows the last wait.
    assert 600 - LAMBDA_SAFETY_MARGIN_SECONDS - 5 < deadlines[0].remaining() <= 600 - LAMBDA_SAFETY_MARGIN_SECONDS
    # Less time left than the margin: the step starts no token change and says to retry.
    with pytest.raises(RuntimeError, match="this step's time is up .*: retry this step"):
        handlers.redis_rotation_handler(event(redis_rotation_enabled, token, "setSecret"),
                                        LambdaContext(int(LAMBDA_SAFETY_MARGIN_SECONDS * 1000) - 1))
    assert local_redis.token_count() == 1 and local_redis.accepts(FIRST_TOKEN)  # the ROTATE never started
    assert not local_redis.accepts(str(read_json(sm, redis_rotation_enabled, VersionId=token)["auth_token"]))


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
    # --timeout bounds the waits of a hand-run rotation; it must leave some time.
    no_time = subprocess.run([*base, "--step", "setSecret", "--timeout", "0"], cwd=ROOT, capture_output=True, text=True)
    assert no_time.returncode == 2 and "--timeout must be positive" in no_time.stderr
    help_run = subprocess.run([sys.executable, "-m", "scripts.rotate", "--help"], cwd=ROOT, capture_output=True, text=True)
    help_text = " ".join(help_run.stdout.split())  # argparse wraps lines
    assert "--timeout SECONDS" in help_text and "retry this step" in help_text
    everything = created.stdout + created.stderr + tested.stdout + tested.stderr + no_group.stdout + no_group.stderr
    assert pending not in everything and FIRST_TOKEN not in everything
    assert local_redis.accepts(FIRST_TOKEN) and not local_redis.accepts(pending)


def test_a_stale_pending_copy_of_the_current_token_is_made_again(
        sm: Any, moto_lambda: MotoServer, redis_secret: str, acl_tokens: RedisAclTokens, local_redis: LocalRedis) -> None:
    """RotateImmediately=false on moto leaves AWSPENDING on a copy of the current version; a
    rotation with that token makes a new token instead of wedging at setSecret."""
    function_arn = create_function(moto_lambda.endpoint_url, ROTATION_FUNCTION)
    sm.rotate_secret(SecretId=redis_secret, RotationLambdaARN=function_arn, RotationRules={"AutomaticallyAfterDays": 90},
                     RotateImmediately=False)
    stale = next(v for v, s in stages(sm, redis_secret).items() if "AWSPENDING" in s and "AWSCURRENT" not in s)
    assert read_json(sm, redis_secret, VersionId=stale)["auth_token"] == FIRST_TOKEN
    for step in STEPS:
        rotation(sm, redis_secret, stale, acl_tokens, local_redis).run(step)
    new = token_of(sm, redis_secret)
    assert version_with(sm, redis_secret, "AWSCURRENT") == stale and new != FIRST_TOKEN
    assert local_redis.accepts(new) and local_redis.accepts(FIRST_TOKEN)
    assert acl_tokens.changes() == [("rotate_in", new)]
