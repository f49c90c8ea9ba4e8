"""The ElastiCache side of the Redis token rotation (scripts/dbops/elasticache.py): the requests
it sends, checked by botocore against the real ElastiCache service model (Stubber: botocore
validates every parameter before the stub answers; the answers are validated against the
output shapes too), and how it waits for a token change to finish. moto cannot check this: it
ignores AuthToken and AuthTokenUpdateStrategy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ParamValidationError
from botocore.stub import Stubber

from scripts.dbops.elasticache import (
    DEFAULT_INVOCATION_SECONDS,
    LAMBDA_SAFETY_MARGIN_SECONDS,
    Deadline,
    ElastiCacheAuthTokens,
)
from scripts.lib.cli import ScriptError
from tests.clock import Clock

GROUP = "psychology-api-prod-redis"
TOKEN = "A1b2C3d4" * 8


@pytest.fixture
def client() -> Iterator[Any]:
    yield boto3.client("elasticache", region_name="eu-central-1", aws_access_key_id="test", aws_secret_access_key="test")


def group_state(status: str, auth_token_status: str | None = None) -> dict[str, Any]:
    pending: dict[str, Any] = {"AuthTokenStatus": auth_token_status} if auth_token_status else {}
    return {"ReplicationGroups": [{"ReplicationGroupId": GROUP, "Status": status, "PendingModifiedValues": pending,
                                   "AuthTokenEnabled": True, "TransitEncryptionEnabled": True}]}



def tokens(client: Any, clock: Clock, **kwargs: Any) -> ElastiCacheAuthTokens:
    return ElastiCacheAuthTokens(client, GROUP, sleep=clock.sleep, clock=clock, **kwargs)


@pytest.mark.parametrize(("method", "strategy"), [("rotate_in", "ROTATE"), ("set_only", "SET")])
def test_token_changes_are_valid_modify_requests(client: Any, method: str, strategy: str) -> None:
    with Stubber(client) as stub:
        stub.add_response("modify_replication_group", {"ReplicationGroup": group_state("modifying", "ROTATING")["ReplicationGroups"][0]},
                          expected_params={"ReplicationGroupId": GROUP, "AuthToken": TOKEN,
                                           "AuthTokenUpdateStrategy": strategy, "ApplyImmediately": True})
        getattr(tokens(client, Clock()), method)(TOKEN)
        stub.assert_no_pending_responses()
    assert strategy in client.meta.service_model.operation_model("ModifyReplicationGroup").input_shape.members[
        "AuthTokenUpdateStrategy"].enum


def test_the_model_rejects_what_the_service_would() -> None:
    """Proof that the stubbed calls above are validated: a wrong type never reaches the stub."""
    client = boto3.client("elasticache", region_name="eu-central-1", aws_access_key_id="test", aws_secret_access_key="test")
    with Stubber(client) as stub, pytest.raises(ParamValidationError):
        stub.add_response("modify_replication_group", {})  # queued, so the call gets as far as validation
        client.modify_replication_group(ReplicationGroupId=GROUP, AuthToken=TOKEN, AuthTokenUpdateStrategy="ROTATE",
                                        ApplyImmediately="yes")


def test_waits_until_available_and_no_token_change_is_pending(client: Any) -> None:
    clock = Clock()
    with Stubber(client) as stub:
        for state in (group_state("available", "ROTATING"),  # the change is accepted but not started yet
                      group_state("modifying", "ROTATING"), group_state("modifying"), group_state("available")):
            stub.add_response("describe_replication_groups", state, expected_params={"ReplicationGroupId": GROUP})
        tokens(client, clock, poll_seconds=15).wait_available()
        stub.assert_no_pending_responses()
    assert clock.sleeps == [15, 15, 15]


def test_every_wait_is_announced(client: Any) -> None:
    """A hand-run rotation (scripts.rotate) waits minutes for a token change: a line per poll."""
    clock = Clock()
    lines: list[str] = []
    with Stubber(client) as stub:
        for state in (group_state("modifying", "ROTATING"), group_state("modifying"), group_state("available")):
            stub.add_response("describe_replication_groups", state, expected_params={"ReplicationGroupId": GROUP})
        tokens(client, clock, poll_seconds=15, wait_seconds=60, log=lines.append).wait_available()
    assert lines == [
        f"waiting: replication group {GROUP} is modifying, token change ROTATING (0 s of at most 60 s); next look in 15 s",
        f"waiting: replication group {GROUP} is modifying (15 s of at most 60 s); next look in 15 s"]


def test_gives_up_after_the_wait_with_a_retryable_message(client: Any) -> None:
    clock = Clock()
    with Stubber(client) as stub:
        for _ in range(5):
            stub.add_response("describe_replication_groups", group_state("modifying", "SETTING"),
                              expected_params={"ReplicationGroupId": GROUP})
        with pytest.raises(ScriptError, match="still modifying, token change SETTING after 60 s; the rotation step can be retried"):
            tokens(client, clock, poll_seconds=15, wait_seconds=60).wait_available()


def test_a_deleted_group_fails_at_once(client: Any) -> None:
    with Stubber(client) as stub:
        stub.add_response("describe_replication_groups", group_state("deleting"), expected_params={"ReplicationGroupId": GROUP})
        with pytest.raises(ScriptError, match="is deleting"):
            tokens(client, Clock()).wait_available()


def test_a_group_id_is_required(client: Any) -> None:
    with pytest.raises(ScriptError, match="no replication group id"):
        ElastiCacheAuthTokens(client, "")


# --- the invocation's deadline ----------------------------------------------------------------

def test_the_deadline_ends_the_wait_before_the_per_change_limit(client: Any) -> None:
    """With 50 s left (the function's remaining time less the margin), a change that takes
    longer is waited for until exactly then, not for the 420 s a change may take."""
    clock = Clock()
    deadline = Deadline(50.0, what="45 s before the function's timeout", clock=clock)
    with Stubber(client) as stub:
        for _ in range(5):  # at 0, 15, 30, 45 and 50 s
            stub.add_response("describe_replication_groups", group_state("modifying", "ROTATING"),
                              expected_params={"ReplicationGroupId": GROUP})
        with pytest.raises(ScriptError) as err:
            tokens(client, clock, poll_seconds=15, deadline=deadline).wait_available()
        stub.assert_no_pending_responses()
    assert str(err.value) == (f"replication group {GROUP} is still modifying, token change ROTATING; this step's time "
                              "is up (45 s before the function's timeout): retry this step, it continues from where "
                              "the group is")
    assert clock.sleeps == [15, 15, 15, 5] and clock.now == 50.0  # never past the deadline


def test_a_change_that_finishes_in_time_is_waited_for(client: Any) -> None:
    clock = Clock()
    with Stubber(client) as stub:
        for state in (group_state("modifying", "ROTATING"), group_state("modifying"), group_state("available")):
            stub.add_response("describe_replication_groups", state, expected_params={"ReplicationGroupId": GROUP})
        tokens(client, clock, poll_seconds=15, deadline=Deadline(40.0, what="the test's deadline", clock=clock)).wait_available()
        stub.assert_no_pending_responses()
    assert clock.now == 30.0


@pytest.mark.parametrize(("method", "strategy"), [("rotate_in", "ROTATE"), ("set_only", "SET")])
def test_no_change_starts_after_the_deadline(client: Any, method: str, strategy: str) -> None:
    clock = Clock()
    clock.now = 60.0
    with Stubber(client) as stub:  # nothing queued: any request would fail the test
        with pytest.raises(ScriptError, match=rf"gets no {strategy} of its token; this step's time is up .*retry this step"):
            getattr(tokens(client, clock, deadline=Deadline(60.0, what="the deadline", clock=clock)), method)(TOKEN)
        stub.assert_no_pending_responses()


class LambdaContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_deadline_from_the_lambda_context() -> None:
    clock = Clock()
    clock.now = 1000.0
    deadline = Deadline.from_lambda_context(LambdaContext(900_000), clock=clock)
    assert deadline.at == 1000.0 + 900 - LAMBDA_SAFETY_MARGIN_SECONDS and not deadline.passed()
    assert "before the function's timeout" in deadline.what
    # Less left than the margin: already passed, so no change starts.
    assert Deadline.from_lambda_context(LambdaContext(10_000), clock=clock).passed()
    # Called directly (no context): the function's configured timeout stands in.
    assert Deadline.from_lambda_context(None, clock=clock).remaining() == DEFAULT_INVOCATION_SECONDS - LAMBDA_SAFETY_MARGIN_SECONDS
