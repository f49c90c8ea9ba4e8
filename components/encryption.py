"""The customer-managed KMS key that encrypts the project's data at rest: database, Redis,
secrets, backups, EBS volumes, flow logs and the alerts topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.common import name_tag, physical_prefix, policy_json, type_token


@dataclass
class DataKeyArgs:
    account_id: str
    region: str
    deletion_window_days: int


class DataKey(pulumi.ComponentResource):
    arn: pulumi.Output[str]
    key_id: pulumi.Output[str]
    alias_name: pulumi.Output[str]

    def __init__(self, name: str, args: DataKeyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("encryption", "DataKey"), name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account_root = f"arn:aws:iam::{args.account_id}:root"
        autoscaling_role = (f"arn:aws:iam::{args.account_id}:role/aws-service-role/autoscaling.amazonaws.com/"
                            "AWSServiceRoleForAutoScaling")
        key = aws.kms.Key(f"{name}-key", aws.kms.KeyArgs(
            description=f"{physical_prefix()}: data at rest (RDS, ElastiCache, Secrets Manager, S3 backups, EBS, logs, SNS)",
            key_usage="ENCRYPT_DECRYPT",
            customer_master_key_spec="SYMMETRIC_DEFAULT",
            enable_key_rotation=True,
            rotation_period_in_days=365,
            deletion_window_in_days=args.deletion_window_days,
            policy=policy_json([
                {
                    # Keeps the key manageable through IAM; without it the key can be locked out.
                    "Sid": "AccountAdministersKeyThroughIam",
                    "Effect": "Allow",
                    "Principal": {"AWS": account_root},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                {
                    "Sid": "CloudWatchLogsEncryptsOurLogGroups",
                    "Effect": "Allow",
                    "Principal": {"Service": f"logs.{args.region}.amazonaws.com"},
                    "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                    "Resource": "*",
                    "Condition": {"ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": f"arn:aws:logs:{args.region}:{args.account_id}:log-group:*"}},
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
                    "Condition": {"StringEquals": {"kms:CallerAccount": args.account_id},
                                  "ArnEquals": {"aws:PrincipalArn": autoscaling_role}},
                },
                {
                    "Sid": "AutoScalingCreatesEbsGrants",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": "kms:CreateGrant",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"kms:CallerAccount": args.account_id},
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
                    "Condition": {"StringEquals": {"aws:SourceAccount": args.account_id}},
                },
            ]),
            tags=name_tag("data-key"),
        ), child)
        alias = aws.kms.Alias(f"{name}-alias", aws.kms.AliasArgs(
            name=f"alias/{physical_prefix()}-data", target_key_id=key.key_id), child)
        self.arn = key.arn
        self.key_id = key.key_id
        self.alias_name = alias.name
        self.register_outputs({"arn": self.arn, "key_id": self.key_id, "alias_name": self.alias_name})
