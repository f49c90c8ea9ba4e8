"""WAFv2 web ACL in front of the application load balancer (scope REGIONAL).

Default action allow; four rules, each with its own CloudWatch metric and sampled requests:

| priority | rule | what it stops |
|---|---|---|
| 0 | AWSManagedRulesAmazonIpReputationList | addresses AWS threat intelligence knows as bots, scanners, DDoS sources |
| 1 | rate-limit-per-ip | more than `rate_limit` requests from one IP address in 5 minutes |
| 2 | AWSManagedRulesCommonRuleSet | the OWASP-style common exploits (XSS, LFI, RFI, bad bots...) |
| 3 | AWSManagedRulesKnownBadInputsRuleSet | inputs known to exploit software (Log4j, Java deserialisation...) |

`mode` "count" makes every rule count instead of block, for observing a new rule set before it
acts. The common rule set's SizeRestrictions_BODY only counts in every mode: it blocks any body
over 8 KB, and the API hosts accept uploads up to nginx's client_max_body_size (20 MB).

Every request the ACL judges is logged to the CloudWatch log group `aws-waf-logs-<project>-<stack>`
(AWS requires that prefix), encrypted with the data key, with the Authorization and Cookie headers
redacted. The log group has its own resource policy for the log-delivery service, so WAF does not
have to grow the account-wide `AWSWAF-LOGS` policy. The alarm on a spike of blocked requests is
one of the CloudWatch alarms (components/alarms.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

from components.common import joined, name_tag, physical_prefix, policy_json, type_token

LOG_GROUP_PREFIX = "aws-waf-logs-"  # AWS refuses any other name for a WAF log destination
RATE_WINDOW_SECONDS = 300
# Lower-case, as WAF requires for redacted header names.
REDACTED_HEADERS = ("authorization", "cookie")
# (priority, managed rule group, rules inside it that only count in every mode)
MANAGED_RULE_GROUPS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (0, "AWSManagedRulesAmazonIpReputationList", ()),
    (2, "AWSManagedRulesCommonRuleSet", ("SizeRestrictions_BODY",)),
    (3, "AWSManagedRulesKnownBadInputsRuleSet", ()),
)
RATE_RULE_PRIORITY = 1
RATE_RULE_NAME = "rate-limit-per-ip"


@dataclass
class WebFirewallArgs:
    load_balancer_arn: pulumi.Input[str]   # LoadBalancer.arn: the ACL is associated with it
    region: str                            # AWS region (config aws:region): the log-delivery condition
    account_id: str                        # this account's id: the log-delivery condition
    kms_key_arn: pulumi.Input[str]         # DataKey.arn: encrypts the WAF log group
    rate_limit: int                        # config wafRateLimit: requests per IP address in 5 minutes
    log_retention_days: int                # config wafLogRetentionDays: days the request logs are kept
    mode: str = "block"                    # config wafMode: "block", or "count" to observe only


def _visibility(metric: str) -> aws.wafv2.WebAclRuleVisibilityConfigArgs:
    return aws.wafv2.WebAclRuleVisibilityConfigArgs(
        cloudwatch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True)


def managed_rule(priority: int, group: str, count_only: tuple[str, ...], mode: str) -> aws.wafv2.WebAclRuleArgs:
    count = aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementRuleActionOverrideActionToUseArgs(
        count=aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementRuleActionOverrideActionToUseCountArgs())
    override = (aws.wafv2.WebAclRuleOverrideActionArgs(count=aws.wafv2.WebAclRuleOverrideActionCountArgs())
                if mode == "count" else
                aws.wafv2.WebAclRuleOverrideActionArgs(none=aws.wafv2.WebAclRuleOverrideActionNoneArgs()))
    return aws.wafv2.WebAclRuleArgs(
        name=group,
        priority=priority,
        override_action=override,
        statement=aws.wafv2.WebAclRuleStatementArgs(
            managed_rule_group_statement=aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementArgs(
                vendor_name="AWS",
                name=group,
                rule_action_overrides=[
                    aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementRuleActionOverrideArgs(
                        name=rule, action_to_use=count) for rule in count_only] or None,
            )),
        visibility_config=_visibility(f"{physical_prefix()}-{group}"),
    )


def rate_rule(limit: int, mode: str) -> aws.wafv2.WebAclRuleArgs:
    action = (aws.wafv2.WebAclRuleActionArgs(count=aws.wafv2.WebAclRuleActionCountArgs()) if mode == "count"
              else aws.wafv2.WebAclRuleActionArgs(block=aws.wafv2.WebAclRuleActionBlockArgs()))
    return aws.wafv2.WebAclRuleArgs(
        name=RATE_RULE_NAME,
        priority=RATE_RULE_PRIORITY,
        action=action,
        statement=aws.wafv2.WebAclRuleStatementArgs(
            rate_based_statement=aws.wafv2.WebAclRuleStatementRateBasedStatementArgs(
                # The client's own address: the load balancer is the first hop, so no
                # forwarded header (which a client could forge) is trusted.
                aggregate_key_type="IP",
                limit=limit,
                evaluation_window_sec=RATE_WINDOW_SECONDS,
            )),
        visibility_config=_visibility(f"{physical_prefix()}-{RATE_RULE_NAME}"),
    )


class WebFirewall(pulumi.ComponentResource):
    web_acl_arn: pulumi.Output[str]
    web_acl_name: pulumi.Output[str]
    log_group_name: pulumi.Output[str]

    def __init__(self, name: str, args: WebFirewallArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("waf", "WebFirewall"), name, None, opts)
        if args.mode not in ("block", "count"):
            raise ValueError(f"WAF mode {args.mode!r}: expected 'block' or 'count'")
        child = pulumi.ResourceOptions(parent=self)
        acl_name = f"{physical_prefix()}-web-acl"
        by_priority = {priority: managed_rule(priority, group, count_only, args.mode)
                       for priority, group, count_only in MANAGED_RULE_GROUPS}
        by_priority[RATE_RULE_PRIORITY] = rate_rule(args.rate_limit, args.mode)
        rules = [by_priority[priority] for priority in sorted(by_priority)]
        acl = aws.wafv2.WebAcl(f"{name}-acl", aws.wafv2.WebAclArgs(
            name=acl_name,
            description=f"{physical_prefix()}: managed rule groups and a rate limit in front of the API",
            scope="REGIONAL",
            default_action=aws.wafv2.WebAclDefaultActionArgs(allow=aws.wafv2.WebAclDefaultActionAllowArgs()),
            rules=rules,
            visibility_config=aws.wafv2.WebAclVisibilityConfigArgs(
                cloudwatch_metrics_enabled=True, metric_name=acl_name, sampled_requests_enabled=True),
            tags=name_tag("web-acl"),
        ), child)
        aws.wafv2.WebAclAssociation(f"{name}-alb", aws.wafv2.WebAclAssociationArgs(
            resource_arn=args.load_balancer_arn, web_acl_arn=acl.arn), child)
        log_group = self._logging(name, acl, args)

        self.web_acl_arn = acl.arn
        self.web_acl_name = acl.name
        self.log_group_name = log_group.name
        self.register_outputs({"web_acl_arn": self.web_acl_arn, "web_acl_name": self.web_acl_name,
                               "log_group_name": self.log_group_name})

    def _logging(self, name: str, acl: aws.wafv2.WebAcl, args: WebFirewallArgs) -> aws.cloudwatch.LogGroup:
        child = pulumi.ResourceOptions(parent=self)
        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", aws.cloudwatch.LogGroupArgs(
            name=f"{LOG_GROUP_PREFIX}{physical_prefix()}",
            retention_in_days=args.log_retention_days,
            kms_key_id=args.kms_key_arn,
            tags=name_tag("waf-logs")), child)
        delivery = aws.cloudwatch.LogResourcePolicy(f"{name}-log-delivery", aws.cloudwatch.LogResourcePolicyArgs(
            policy_name=f"{physical_prefix()}-waf-log-delivery",
            policy_document=policy_json(log_delivery_statements(log_group.arn, args.account_id, args.region))), child)
        aws.wafv2.WebAclLoggingConfiguration(f"{name}-logging", aws.wafv2.WebAclLoggingConfigurationArgs(
            resource_arn=acl.arn,
            log_destination_configs=[log_group.arn],
            redacted_fields=[
                aws.wafv2.WebAclLoggingConfigurationRedactedFieldArgs(
                    single_header=aws.wafv2.WebAclLoggingConfigurationRedactedFieldSingleHeaderArgs(name=header))
                for header in REDACTED_HEADERS],
        ), pulumi.ResourceOptions(parent=self, depends_on=[delivery]))
        return log_group


def log_delivery_statements(log_group_arn: pulumi.Input[str], account_id: str, region: str) -> list[dict[str, Any]]:
    """The WAF log group's resource policy: the log-delivery service writes there, for this
    account's web ACLs only."""
    return [{
        "Sid": "WafLogDeliveryWritesTheWafLogGroup",
        "Effect": "Allow",
        "Principal": {"Service": "delivery.logs.amazonaws.com"},
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": joined(log_group_arn, ":*"),
        "Condition": {
            "StringEquals": {"aws:SourceAccount": account_id},
            "ArnLike": {"aws:SourceArn": f"arn:aws:logs:{region}:{account_id}:*"},
        },
    }]
