"""The WAFv2 web ACL on the load balancer, under the mock engine, for both stacks and the
configured variants (count mode, another rate limit, WAF off)."""

from __future__ import annotations

import json

import pytest

from harness.mock_engine import MOCK_ACCOUNT_ID, Plan, PlannedResource, run_program

ACL = "aws:wafv2/webAcl:WebAcl"
ASSOCIATION = "aws:wafv2/webAclAssociation:WebAclAssociation"
LOGGING = "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
RESOURCE_POLICY = "aws:cloudwatch/logResourcePolicy:LogResourcePolicy"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
MANAGED_GROUPS = {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet",
                  "AWSManagedRulesAmazonIpReputationList"}


@pytest.fixture(scope="module")
def counting() -> Plan:
    return run_program("prod", overrides={"wafMode": "count", "wafRateLimit": 500})


@pytest.fixture(scope="module")
def without_waf() -> Plan:
    return run_program("staging", overrides={"wafEnabled": False})


def rules(plan: Plan) -> dict[str, dict]:
    return {rule["name"]: rule for rule in plan.one(ACL).inputs["rules"]}


def waf_alarm(plan: Plan) -> PlannedResource:
    return plan.one(ALARM, "alarms-waf-blocked-requests")


def test_web_acl_is_regional_allows_by_default_and_is_on_the_load_balancer(plan: Plan) -> None:
    acl = plan.one(ACL)
    assert acl.inputs["scope"] == "REGIONAL"
    assert acl.inputs["defaultAction"] == {"allow": {}}
    assert acl.inputs["name"] == f"psychology-api-{plan.stack}-web-acl"
    assert acl.inputs["visibilityConfig"] == {"cloudwatchMetricsEnabled": True, "sampledRequestsEnabled": True,
                                              "metricName": f"psychology-api-{plan.stack}-web-acl"}
    association = plan.one(ASSOCIATION)
    assert association.inputs == {"resourceArn": plan.one("aws:lb/loadBalancer:LoadBalancer").outputs["arn"],
                                  "webAclArn": acl.outputs["arn"]}
    assert plan.outputs["waf_web_acl_arn"] == acl.outputs["arn"]


def test_three_aws_managed_rule_groups_block(plan: Plan) -> None:
    managed = {name: rule for name, rule in rules(plan).items() if "managedRuleGroupStatement" in rule["statement"]}
    assert set(managed) == MANAGED_GROUPS
    for name, rule in managed.items():
        statement = rule["statement"]["managedRuleGroupStatement"]
        assert statement["vendorName"] == "AWS" and statement["name"] == name
        # A rule group's own actions apply (block): no override to count.
        assert rule["overrideAction"] == {"none": {}}
        assert "action" not in rule
    # The IP reputation list is judged first, then the rate limit, then the request inspection.
    assert [rule["name"] for rule in sorted(rules(plan).values(), key=lambda r: r["priority"])] == [
        "AWSManagedRulesAmazonIpReputationList", "rate-limit-per-ip", "AWSManagedRulesCommonRuleSet",
        "AWSManagedRulesKnownBadInputsRuleSet"]


def test_only_the_body_size_rule_of_the_common_set_counts(plan: Plan) -> None:
    """The API accepts uploads up to nginx's client_max_body_size; the common set would block
    every body over 8 KB."""
    common = rules(plan)["AWSManagedRulesCommonRuleSet"]["statement"]["managedRuleGroupStatement"]
    assert common["ruleActionOverrides"] == [{"name": "SizeRestrictions_BODY", "actionToUse": {"count": {}}}]
    for name in MANAGED_GROUPS - {"AWSManagedRulesCommonRuleSet"}:
        assert "ruleActionOverrides" not in rules(plan)[name]["statement"]["managedRuleGroupStatement"]


def test_rate_based_rule_blocks_per_ip_over_five_minutes(plan: Plan) -> None:
    rate = rules(plan)["rate-limit-per-ip"]
    assert rate["statement"]["rateBasedStatement"] == {"limit": 2000, "aggregateKeyType": "IP", "evaluationWindowSec": 300}
    assert rate["action"] == {"block": {}}
    assert "overrideAction" not in rate


def test_every_rule_publishes_metrics_and_samples(plan: Plan) -> None:
    metric_names = []
    for rule in rules(plan).values():
        visibility = rule["visibilityConfig"]
        assert visibility["cloudwatchMetricsEnabled"] is True and visibility["sampledRequestsEnabled"] is True
        metric_names.append(visibility["metricName"])
    assert len(set(metric_names)) == len(metric_names) == 4
    assert all(name.startswith(f"psychology-api-{plan.stack}-") for name in metric_names)


def test_requests_are_logged_to_an_encrypted_year_long_waf_log_group(plan: Plan) -> None:
    group = plan.one(LOG_GROUP, "waf-logs")
    assert group.inputs["name"] == f"aws-waf-logs-psychology-api-{plan.stack}"  # the prefix AWS requires
    assert group.inputs["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert group.inputs["retentionInDays"] >= 365
    logging = plan.one(LOGGING)
    assert logging.inputs["resourceArn"] == plan.one(ACL).outputs["arn"]
    assert logging.inputs["logDestinationConfigs"] == [group.outputs["arn"]]
    assert logging.inputs["redactedFields"] == [{"singleHeader": {"name": "authorization"}},
                                                {"singleHeader": {"name": "cookie"}}]
    assert plan.outputs["waf_log_group_name"] == group.inputs["name"]


def test_log_delivery_may_write_the_waf_log_group_only(plan: Plan) -> None:
    policy = plan.one(RESOURCE_POLICY)
    assert policy.inputs["policyName"] == f"psychology-api-{plan.stack}-waf-log-delivery"
    (statement,) = json.loads(policy.inputs["policyDocument"])["Statement"]
    assert statement["Principal"] == {"Service": "delivery.logs.amazonaws.com"}
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"] == plan.one(LOG_GROUP, "waf-logs").outputs["arn"] + ":*"
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": MOCK_ACCOUNT_ID},
        "ArnLike": {"aws:SourceArn": f"arn:aws:logs:eu-central-1:{MOCK_ACCOUNT_ID}:*"}}
    # Logging is switched on once delivery may write, so WAF need not edit AWSWAF-LOGS itself.
    assert "waf-log-delivery" in plan.one(LOGGING).depends_on


def test_the_data_key_lets_cloudwatch_logs_encrypt_the_waf_log_group(plan: Plan) -> None:
    policy = json.loads(plan.one("aws:kms/key:Key").inputs["policy"])
    logs = next(s for s in policy["Statement"] if s["Sid"] == "CloudWatchLogsEncryptsOurLogGroups")
    pattern = logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    assert pattern == f"arn:aws:logs:eu-central-1:{MOCK_ACCOUNT_ID}:log-group:*"


def test_a_spike_of_blocked_requests_alarms(plan: Plan) -> None:
    alarm = waf_alarm(plan).inputs
    assert alarm["namespace"] == "AWS/WAFV2" and alarm["metricName"] == "BlockedRequests"
    assert alarm["dimensions"] == {"WebACL": f"psychology-api-{plan.stack}-web-acl", "Region": "eu-central-1",
                                   "Rule": "ALL"}
    assert alarm["statistic"] == "Sum" and alarm["period"] == 300
    assert alarm["treatMissingData"] == "notBreaching"
    assert alarm["alarmActions"] == [plan.outputs["alerts_topic_arn"]]


def test_count_mode_observes_without_blocking(counting: Plan) -> None:
    by_name = rules(counting)
    for name in MANAGED_GROUPS:
        assert by_name[name]["overrideAction"] == {"count": {}}
    assert by_name["rate-limit-per-ip"]["action"] == {"count": {}}
    assert by_name["rate-limit-per-ip"]["statement"]["rateBasedStatement"]["limit"] == 500
    # Nothing is blocked in count mode: the alarm watches what the rules counted.
    assert waf_alarm(counting).inputs["metricName"] == "CountedRequests"


def test_waf_can_be_left_off_outside_prod(without_waf: Plan) -> None:
    assert [r for r in without_waf.resources if r.type.startswith("aws:wafv2")] == []
    assert not [r for r in without_waf.of_type(LOG_GROUP) if r.inputs["name"].startswith("aws-waf-logs-")]
    assert not [r for r in without_waf.of_type(ALARM) if r.name == "alarms-waf-blocked-requests"]
    assert "waf_web_acl_arn" not in without_waf.outputs and "waf_log_group_name" not in without_waf.outputs
