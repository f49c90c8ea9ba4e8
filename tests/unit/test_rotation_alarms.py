"""Alarms on secrets rotation, from each stack's plan: an Errors alarm per rotation function,
and the overdue alarm fed by the hourly check function (its schedule, permission, environment
and rights)."""

from __future__ import annotations

import json

from harness.mock_engine import Plan
from scripts.dbops.rotation_check import METRIC_NAME

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
FUNCTION = "aws:lambda/function:Function"


def alarm(plan: Plan, role: str) -> dict:
    return plan.one(ALARM, f"alarms-{role}").inputs


def test_each_rotation_function_has_an_errors_alarm(plan: Plan) -> None:
    topic = plan.outputs["alerts_topic_arn"]
    for key in ("rotate", "rotate-redis", "rotate-generated"):
        inputs = alarm(plan, f"rotation-errors-{key}")
        function = plan.named(f"dbops-{key}")
        assert inputs["namespace"] == "AWS/Lambda" and inputs["metricName"] == "Errors"
        assert inputs["dimensions"] == {"FunctionName": function.inputs["name"]}
        assert (inputs["statistic"], inputs["threshold"], inputs["comparisonOperator"]) == (
            "Sum", 1, "GreaterThanOrEqualToThreshold")
        assert inputs["alarmActions"] == [topic] and inputs["okActions"] == [topic]
    rotating = {r.inputs["rotationLambdaArn"] for r in plan.of_type("aws:secretsmanager/secretRotation:SecretRotation")}
    assert rotating == {plan.named(f"dbops-{key}").outputs["arn"] for key in ("rotate", "rotate-redis", "rotate-generated")}


def test_overdue_alarm_watches_the_check_and_its_silence(plan: Plan) -> None:
    inputs = alarm(plan, "rotation-overdue")
    check = plan.named("dbops-check-rotation")
    env = check.inputs["environment"]["variables"]
    assert inputs["namespace"] == env["METRIC_NAMESPACE"] == f"psychology-api/{plan.stack}/rotation"
    assert inputs["metricName"] == METRIC_NAME and inputs["threshold"] == 1
    assert inputs["treatMissingData"] == "breaching"   # a check that stops running alarms too
    assert inputs["period"] * inputs["evaluationPeriods"] == 3 * 3600
    # Every rotated secret is checked.
    rotated = {r.inputs["secretId"] for r in plan.of_type("aws:secretsmanager/secretRotation:SecretRotation")}
    arns = set(env["ROTATED_SECRET_ARNS"].split(","))
    ids_to_arns = {s.id: s.outputs["arn"] for s in plan.of_type("aws:secretsmanager/secret:Secret")}
    assert arns == {ids_to_arns.get(secret, secret) for secret in rotated}
    assert int(env["MARGIN_DAYS"]) == 2


def test_the_check_runs_hourly_with_least_privilege(plan: Plan) -> None:
    check = plan.named("dbops-check-rotation")
    rule = plan.named("dbops-check-rotation-schedule")
    assert rule.inputs["scheduleExpression"] == "rate(1 hour)"
    target = plan.named("dbops-check-rotation-target")
    assert target.inputs["arn"] == check.outputs["arn"] and target.inputs["rule"] == rule.outputs["name"]
    permission = plan.named("dbops-check-rotation-invoke")
    assert permission.inputs == {"action": "lambda:InvokeFunction", "function": check.inputs["name"],
                                 "principal": "events.amazonaws.com", "sourceArn": rule.outputs["arn"]}
    statements = {s["Sid"]: s for s in json.loads(plan.named("dbops-check-rotation-access").inputs["policy"])["Statement"]}
    assert set(statements) == {"DescribeTheRotatedSecrets", "PublishTheRotationCheck"}
    assert statements["DescribeTheRotatedSecrets"]["Action"] == "secretsmanager:DescribeSecret"
    assert set(statements["DescribeTheRotatedSecrets"]["Resource"]) == set(
        check.inputs["environment"]["variables"]["ROTATED_SECRET_ARNS"].split(","))
    assert statements["PublishTheRotationCheck"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": f"psychology-api/{plan.stack}/rotation"}}
