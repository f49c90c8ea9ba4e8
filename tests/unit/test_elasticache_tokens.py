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

from scripts.dbops.elasticache import ElastiCacheAuthTokens
from scripts.lib.cli import ScriptError

GROUP = "psychology-api-prod-redis"
TOKEN = "A1b2C3d4" * 8


@pytest.fixture
def client() -> Iterator[Any]:
    yield boto3.client("elasticache", region_name="eu-central-1", aws_access_key_id="test", aws_secret_access_key="test")


def group_state(status: str, auth_token_status: str | None = None) -> dict[str, Any]:
    pending: dict[str, Any] = {"AuthTokenStatus": auth_token_status} if auth_token_status else {}
    return {"ReplicationGroups": [{"ReplicationGroupId": GROUP, "Status": status, "PendingModifiedValues": pending,
                                   "AuthTokenEnabled": True, "TransitEncryptionEnabled": True}]}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


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
