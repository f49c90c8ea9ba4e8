"""The customer-managed KMS key that encrypts the project's data at rest: database, Redis,
secrets, backups, EBS volumes, flow logs and the alerts topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

from components.common import name_tag, physical_prefix, policy_json, type_token


@dataclass
class DataKeyArgs:
    account_id: str              # this account's id: the key policy's principals and conditions
    region: str                  # AWS region (config aws:region): the CloudWatch Logs service principal
    deletion_window_days: int    # config kmsDeletionWindowDays: days a scheduled deletion can be cancelled


class DataKey(pulumi.ComponentResource):
    arn: pulumi.Output[str]
    key_id: pulumi.Output[str]
    alias_name: pulumi.Output[str]

    def __init__(self, name: str, args: DataKeyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("encryption", "DataKey"), name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = aws.kms.Key(f"{name}-key", aws.kms.KeyArgs(
            description=f"{physical_prefix()}: data at rest (RDS, ElastiCache, Secrets Manager, S3 backups, EBS, logs, SNS)",
            key_usage="ENCRYPT_DECRYPT",
            customer_master_key_spec="SYMMETRIC_DEFAULT",
            enable_key_rotation=True,
            rotation_period_in_days=365,
            deletion_window_in_days=args.deletion_window_days,
            policy=policy_json(key_policy_statements(args.account_id, args.region)),
            tags=name_tag("data-key"),
        ), child)
        alias = aws.kms.Alias(f"{name}-alias", aws.kms.AliasArgs(
            name=f"alias/{physical_prefix()}-data", target_key_id=key.key_id), child)
        self.arn = key.arn
        self.key_id = key.key_id
        self.alias_name = alias.name
        self.register_outputs({"arn": self.arn, "key_id": self.key_id, "alias_name": self.alias_name})


def key_policy_statements(account_id: str, region: str) -> list[dict[str, Any]]:
    """The data key's policy: the account administers it through IAM; CloudWatch Logs, Auto
    Scaling (EBS volumes of the API hosts) and CloudWatch alarms (the encrypted alerts topic)
    use it, each for its own purpose only."""
    autoscaling_role = (f"arn:aws:iam::{account_id}:role/aws-service-role/autoscaling.amazonaws.com/"
                        "AWSServiceRoleForAutoScaling")
    return [
        {
            # Keeps the key manageable through IAM; without it the key can be locked out.
            "Sid": "AccountAdministersKeyThroughIam",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "CloudWatchLogsEncryptsOurLogGroups",
            "Effect": "Allow",
            "Principal": {"Service": f"logs.{region}.amazonaws.com"},
            "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            "Resource": "*",
            "Condition": {"ArnLike": {
                "kms:EncryptionContext:aws:logs:arn": f"arn:aws:logs:{region}:{account_id}:log-group:*"}},
        },
        {
            # Auto Scaling launches the API hosts with volumes encrypted by this key.
            # The service-linked role is named by condition, not as principal: in an
            # account that never used Auto Scaling the role does not exist yet, and KMS
            # refuses a policy whose principal does not exist.
            "Sid": "AutoScalingUsesKeyForEbs",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:CallerAccount": account_id},
                          "ArnEquals": {"aws:PrincipalArn": autoscaling_role}},
        },
        {
            "Sid": "AutoScalingCreatesEbsGrants",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": "kms:CreateGrant",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:CallerAccount": account_id},
                          "ArnEquals": {"aws:PrincipalArn": autoscaling_role},
                          "Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
        {
            # CloudWatch alarms publish to the encrypted alerts topic.
            "Sid": "CloudWatchAlarmsPublishToEncryptedTopic",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
        },
    ]
