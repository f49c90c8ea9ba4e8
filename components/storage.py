"""Private S3 buckets: the encrypted backups bucket and the access-log bucket.

Both get versioning, all four public-access blocks, owner-enforced object ownership, a
policy refusing plain-HTTP requests and a lifecycle rule. The backups bucket is encrypted with
the data key; the access-log bucket with S3-managed keys, the only encryption ALB log
delivery and S3 server access log delivery support. The access-log bucket receives the load
balancer's access logs (under `alb/`) and the backups bucket's S3 server access logs (under
`s3/backups/`, `PrivateBucket.log_access_to`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

from components.common import joined, name_tag, policy_json, type_token

# Where backups live in the backups bucket: the lifecycle rule's prefix, the monitoring role's
# grants and the backup timer's --prefix. The scripts (which run on the host without
# components/) default to the same value, scripts.lib.pgbackup.DEFAULT_PREFIX; a test holds
# the two equal.
BACKUP_PREFIX = "postgres/"
ACCESS_LOG_PREFIX = "alb"
# Where S3 server access logs of the backups bucket go in the access-log bucket.
BACKUPS_ACCESS_LOG_PREFIX = "s3/backups/"


@dataclass
class PrivateBucketArgs:
    purpose: str                     # the bucket's "purpose" tag, e.g. "database-backups"
    # None means SSE-S3 (AES256); otherwise SSE-KMS with this key and an S3 bucket key.
    kms_key_arn: Optional[pulumi.Input[str]]
    # Days after which current objects under expire_prefix expire (config backupRetentionDays,
    # accessLogRetentionDays).
    expire_days: int
    # Days a replaced or deleted object's old version is kept (config backupNoncurrentVersionDays).
    noncurrent_version_days: int
    expire_prefix: str = ""          # the prefix expire_days applies to; "" for the whole bucket
    # Extra statements; "{bucket_arn}" in a Resource string is replaced by the bucket ARN.
    extra_policy_statements: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    # S3 Object Lock in governance mode with this default retention (days): no version of an
    # object can be deleted or overwritten in place before it, except by a principal holding
    # s3:BypassGovernanceRetention (nobody in this stack has it). None: no Object Lock.
    object_lock_days: Optional[int] = None


class PrivateBucket(pulumi.ComponentResource):
    name: pulumi.Output[str]
    arn: pulumi.Output[str]

    def __init__(self, name: str, args: PrivateBucketArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("storage", "PrivateBucket"), name, None, opts)
        self._logical_name = name
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(f"{name}-bucket", aws.s3.BucketArgs(
            force_destroy=False, tags=name_tag(name, {"purpose": args.purpose})), child)
        self.name = bucket.bucket
        self.arn = bucket.arn

        public_access = aws.s3.BucketPublicAccessBlock(f"{name}-public-access", aws.s3.BucketPublicAccessBlockArgs(
            bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True), child)
        aws.s3.BucketOwnershipControls(f"{name}-ownership", aws.s3.BucketOwnershipControlsArgs(
            bucket=bucket.id, rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced")), child)
        versioning = aws.s3.BucketVersioning(f"{name}-versioning", aws.s3.BucketVersioningInitArgs(
            bucket=bucket.id, versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled")), child)
        self._encryption(name, bucket, args.kms_key_arn)
        self._lifecycle(name, bucket, versioning, args)
        aws.s3.BucketPolicy(f"{name}-policy", aws.s3.BucketPolicyArgs(
            bucket=bucket.id, policy=policy_json(bucket_policy_statements(bucket.arn, args))),
            # A policy put before the public-access block could be judged public and refused.
            pulumi.ResourceOptions(parent=self, depends_on=[public_access]))
        if args.object_lock_days is not None:
            self._object_lock(name, bucket, versioning, args.object_lock_days)

        self.register_outputs({"name": self.name, "arn": self.arn})

    def _encryption(self, name: str, bucket: aws.s3.Bucket, kms_key_arn: Optional[pulumi.Input[str]]) -> None:
        """SSE-KMS with the key and an S3 bucket key, or SSE-S3 without a key."""
        if kms_key_arn is not None:
            default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="aws:kms", kms_master_key_id=kms_key_arn)
        else:
            default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="AES256")
        aws.s3.BucketServerSideEncryptionConfiguration(f"{name}-encryption", aws.s3.BucketServerSideEncryptionConfigurationInitArgs(
            bucket=bucket.id, rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=default,
                bucket_key_enabled=kms_key_arn is not None)]), pulumi.ResourceOptions(parent=self))

    def _lifecycle(self, name: str, bucket: aws.s3.Bucket, versioning: aws.s3.BucketVersioning,
                   args: PrivateBucketArgs) -> None:
        aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", aws.s3.BucketLifecycleConfigurationArgs(
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-current-objects", status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=args.expire_prefix),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=args.expire_days)),
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-old-versions", status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=args.noncurrent_version_days),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(expired_object_delete_marker=True)),
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    # An interrupted multipart upload must not linger as hidden, billed parts.
                    id="abort-incomplete-uploads", status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=1)),
            ]), pulumi.ResourceOptions(parent=self, depends_on=[versioning]))

    def _object_lock(self, name: str, bucket: aws.s3.Bucket, versioning: aws.s3.BucketVersioning, days: int) -> None:
        """Governance-mode Object Lock with a default retention. Enabled on the existing,
        versioned bucket (no replacement); every new object version is locked for `days`."""
        aws.s3.BucketObjectLockConfiguration(f"{name}-object-lock", aws.s3.BucketObjectLockConfigurationInitArgs(
            bucket=bucket.id,
            object_lock_enabled="Enabled",
            rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
                default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(
                    mode="GOVERNANCE", days=days)),
        ), pulumi.ResourceOptions(parent=self, depends_on=[versioning]))

    def log_access_to(self, target_bucket: pulumi.Input[str], prefix: str,
                      ready: Sequence[pulumi.Resource] = ()) -> aws.s3.BucketLogging:
        """S3 server access logging of this bucket: every request (who read or wrote which object)
        into `target_bucket` under `prefix`. `ready`: the target bucket and its policy
        (server_access_log_delivery_statements), which S3 needs before it accepts the setting."""
        return aws.s3.BucketLogging(f"{self._logical_name}-access-logging", aws.s3.BucketLoggingInitArgs(
            bucket=self.name, target_bucket=target_bucket, target_prefix=prefix,
        ), pulumi.ResourceOptions(parent=self, depends_on=list(ready)))



def bucket_policy_statements(bucket_arn: pulumi.Input[str], args: PrivateBucketArgs) -> list[Mapping[str, Any]]:
    """The bucket's policy: no plain-HTTP request, no object without KMS encryption (when the
    bucket has a key), then the extra statements with "{bucket_arn}" filled in."""
    objects = joined(bucket_arn, "/*")
    statements: list[Mapping[str, Any]] = [{
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, objects],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]
    if args.kms_key_arn is not None:
        # Only a request that names another encryption is refused. One without the header gets
        # the bucket's default (SSE-KMS with this key); refusing it too would also refuse the
        # part uploads of a multipart upload (authorised as s3:PutObject, and only its first
        # request carries the header), which the backups stream through.
        statements.append({
            "Sid": "DenyObjectsNotEncryptedWithKms",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"Null": {"s3:x-amz-server-side-encryption": "false"},
                          "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
        })
    for statement in args.extra_policy_statements:
        resolved = dict(statement)
        resource = resolved.get("Resource")
        if isinstance(resource, str) and "{bucket_arn}" in resource:
            template = resource.replace("{bucket_arn}", "{0}")
            resolved["Resource"] = template.format(bucket_arn) if isinstance(bucket_arn, str) \
                else pulumi.Output.format(template, bucket_arn)
        statements.append(resolved)
    return statements

def access_log_delivery_statements(account_id: str, elb_account_arn: pulumi.Input[str]) -> list[dict[str, Any]]:
    """What ALB access-log delivery needs: the region's ELB account (regions older than
    August 2022, such as eu-central-1) and the log-delivery service principal (newer ones)."""
    target = "{bucket_arn}/" + f"{ACCESS_LOG_PREFIX}/AWSLogs/{account_id}/*"
    return [
        {"Sid": "ElbAccountWritesAccessLogs", "Effect": "Allow", "Principal": {"AWS": elb_account_arn},
         "Action": "s3:PutObject", "Resource": target},
        {"Sid": "LogDeliveryWritesAccessLogs", "Effect": "Allow",
         "Principal": {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": target},
    ]


def server_access_log_delivery_statements(account_id: str, source_bucket_arn: pulumi.Input[str],
                                          prefix: str) -> list[dict[str, Any]]:
    """What S3 server access log delivery needs in the target bucket's policy: the logging
    service may put objects under `prefix`, only for the source bucket of this account."""
    return [{
        "Sid": "S3ServerAccessLogDelivery",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": "{bucket_arn}/" + f"{prefix}*",
        "Condition": {
            "ArnLike": {"aws:SourceArn": source_bucket_arn},
            "StringEquals": {"aws:SourceAccount": account_id},
        },
    }]
