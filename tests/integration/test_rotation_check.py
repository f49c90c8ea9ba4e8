"""The hourly rotation check (scripts/dbops/rotation_check.py, handler rotation_check_handler)
against Secrets Manager and CloudWatch in moto's server: it counts the secrets whose rotation is
off or late and publishes the count the rotation-overdue alarm watches."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from scripts.dbops import handlers
from scripts.dbops.rotation_check import METRIC_NAME, SecretAge, check_rotation, secret_age
from tests.integration.dbops_support import create_function
from tests.services import MotoServer

pytest_plugins = ["tests.integration.dbops_fixtures"]
pytestmark = pytest.mark.integration
NAMESPACE = "psychology-api/test/rotation"


@pytest.fixture
def clients(moto_lambda: MotoServer) -> tuple[Any, Any]:
    """Secrets Manager and CloudWatch in moto (moto_lambda: rotation's Lambda without Docker)."""
    sm = boto3.client("secretsmanager", endpoint_url=moto_lambda.endpoint_url, region_name="eu-central-1")
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_lambda.endpoint_url, region_name="eu-central-1")
    return sm, cloudwatch


def rotated_secret(sm: Any, endpoint_url: str, name: str, function_arn: str) -> str:
    arn = sm.create_secret(Name=name, SecretString=json.dumps({"username": "u", "password": "p"}))["ARN"]
    sm.rotate_secret(SecretId=arn, RotationLambdaARN=function_arn, RotationRules={"AutomaticallyAfterDays": 90},
                     RotateImmediately=False)
    return arn


def published(cloudwatch: Any) -> list[float]:
    now = datetime.now(UTC)
    answer = cloudwatch.get_metric_statistics(Namespace=NAMESPACE, MetricName=METRIC_NAME, Statistics=["Maximum"],
                                              StartTime=now - timedelta(days=400), EndTime=now + timedelta(days=400),
                                              Period=60)
    return [p["Maximum"] for p in sorted(answer["Datapoints"], key=lambda p: p["Timestamp"])]


def test_counts_late_and_switched_off_rotations(clients: tuple[Any, Any], moto: MotoServer) -> None:
    sm, cloudwatch = clients
    function_arn = create_function(moto.endpoint_url, "psychology-api-test-db-rotate")
    app = rotated_secret(sm, moto.endpoint_url, "psychology-api/test/database/app", function_arn)
    backup = rotated_secret(sm, moto.endpoint_url, "psychology-api/test/database/backup", function_arn)
    now = datetime.now(UTC)

    on_time = check_rotation(sm, cloudwatch, [app, backup], namespace=NAMESPACE, now=now)
    assert on_time == {"ok": True, "checked": 2, "overdue": {}}
    # Within schedule + margin: still on time; past it: overdue.
    assert check_rotation(sm, cloudwatch, [app], namespace=NAMESPACE, now=now + timedelta(days=91))["ok"]
    late = check_rotation(sm, cloudwatch, [app, backup], namespace=NAMESPACE, now=now + timedelta(days=93))
    assert set(late["overdue"]) == {"psychology-api/test/database/app", "psychology-api/test/database/backup"}
    assert "schedule 90 days + 2" in late["overdue"]["psychology-api/test/database/app"]

    sm.cancel_rotate_secret(SecretId=backup)
    off = check_rotation(sm, cloudwatch, [app, backup], namespace=NAMESPACE, now=now)
    assert off["overdue"] == {"psychology-api/test/database/backup": "rotation is off"}
    # One datapoint per run, at its `now`: the first and the last run share a minute (Maximum 1).
    assert published(cloudwatch) == [1.0, 0.0, 2.0]


def test_handler_reads_its_environment_and_publishes(clients: tuple[Any, Any], moto: MotoServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sm, cloudwatch = clients
    function_arn = create_function(moto.endpoint_url, "psychology-api-test-db-rotate")
    arns = [rotated_secret(sm, moto.endpoint_url, f"psychology-api/test/database/{k}", function_arn)
            for k in ("monitor", "drill")]
    monkeypatch.setenv("ROTATED_SECRET_ARNS", ",".join(arns))
    monkeypatch.setenv("METRIC_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("MARGIN_DAYS", "2")
    answer = handlers.rotation_check_handler({})
    assert answer == {"ok": True, "checked": 2, "overdue": {}}
    assert published(cloudwatch) == [0.0]


def test_a_secret_that_gained_rotation_late_is_due_from_then(clients: tuple[Any, Any], moto: MotoServer) -> None:
    """A secret that existed long before its rotation was switched on (the Django and Grafana
    secrets of a stack older than their rotation) is not overdue from its creation date: its
    first rotation is due when Secrets Manager says (NextRotationDate, which stays in the past
    when rotations fail)."""
    sm, _ = clients
    now = datetime.now(UTC)
    created_long_ago = now - timedelta(days=400)
    first_due = now + timedelta(days=89)
    waiting = SecretAge("psychology-api/test/app", rotation_enabled=True, schedule_days=90,
                        last_rotated=created_long_ago, next_rotation=first_due, rotated_before=False)
    assert waiting.overdue(now, margin_days=2) is None
    missed = waiting.overdue(first_due + timedelta(days=3), margin_days=2)
    assert missed is not None and "first rotation" in missed

    # Read from DescribeSecret (moto stamps LastRotatedDate when rotation is switched on; whether
    # AWS does, the check does not depend on).
    function_arn = create_function(moto.endpoint_url, "psychology-api-test-db-rotate")
    arn = rotated_secret(sm, moto.endpoint_url, "psychology-api/test/grafana", function_arn)
    age = secret_age(sm, arn)
    assert age.next_rotation is not None and timedelta(days=89) < age.next_rotation - now < timedelta(days=91)
