"""Encryption at rest, the two buckets and the application secrets, under mocks."""

from __future__ import annotations

import json

from harness.mock_engine import SECRET_MASK, Plan, PlannedResource, run_program


def bucket_side(plan: Plan, bucket_output: str, kind: str) -> PlannedResource:
    name = plan.outputs[bucket_output]
    (found,) = [r for r in plan.of_type(kind) if r.inputs.get("bucket") == name]
    return found


def test_data_key_rotates_and_has_an_alias(plan: Plan) -> None:
    key = plan.one("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    assert key.inputs["deletionWindowInDays"] == {"staging": 7, "prod": 30}[plan.stack]
    alias = plan.one("aws:kms/alias:Alias")
    assert alias.inputs["name"] == f"alias/psychology-api-{plan.stack}-data"
    assert alias.inputs["targetKeyId"] == key.outputs["keyId"]
    assert plan.outputs["kms_key_arn"] == key.outputs["arn"]


def test_key_policy_keeps_iam_control_and_scopes_services(plan: Plan) -> None:
    policy = json.loads(plan.one("aws:kms/key:Key").inputs["policy"])
    sids = {s["Sid"]: s for s in policy["Statement"]}
    assert sids["AccountAdministersKeyThroughIam"]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    logs = sids["CloudWatchLogsEncryptsOurLogGroups"]
    assert "kms:EncryptionContext:aws:logs:arn" in logs["Condition"]["ArnLike"]
    slr = "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
    for sid in ("AutoScalingUsesKeyForEbs", "AutoScalingCreatesEbsGrants"):
        # Named by condition so the key can be created before the service-linked role exists,
        # and only that role of this account matches.
        condition = sids[sid]["Condition"]
        assert condition["ArnEquals"] == {"aws:PrincipalArn": slr}
        assert condition["StringEquals"] == {"kms:CallerAccount": "123456789012"}
    assert sids["AutoScalingCreatesEbsGrants"]["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    wildcard = [s for s in policy["Statement"] if s["Principal"] == {"AWS": "*"}]
    assert all("aws:PrincipalArn" in s["Condition"].get("ArnEquals", {}) for s in wildcard)


def test_backup_bucket_is_private_versioned_kms_encrypted_and_tls_only(plan: Plan) -> None:
    block = bucket_side(plan, "backup_bucket_name", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block.inputs[flag] is True
    versioning = bucket_side(plan, "backup_bucket_name", "aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    sse = bucket_side(plan, "backup_bucket_name",
                      "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    (rule,) = sse.inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": plan.outputs["kms_key_arn"]}
    assert rule["bucketKeyEnabled"] is True
    policy = json.loads(bucket_side(plan, "backup_bucket_name", "aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    deny_tls = next(s for s in policy["Statement"] if s["Sid"] == "DenyInsecureTransport")
    assert deny_tls["Effect"] == "Deny" and deny_tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert any(s["Sid"] == "DenyObjectsNotEncryptedWithKms" for s in policy["Statement"])
    ownership = bucket_side(plan, "backup_bucket_name", "aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"


def test_backup_lifecycle_expires_after_the_retention(plan: Plan) -> None:
    lifecycle = bucket_side(plan, "backup_bucket_name", "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    by_id = {r["id"]: r for r in lifecycle.inputs["rules"]}
    assert by_id["expire-current-objects"]["filter"] == {"prefix": "postgres/"}
    assert by_id["expire-current-objects"]["expiration"]["days"] == 30
    assert by_id["expire-old-versions"]["noncurrentVersionExpiration"]["noncurrentDays"] == 7
    assert by_id["abort-incomplete-uploads"]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 1
    assert all(r["status"] == "Enabled" for r in by_id.values())


def test_retention_follows_configuration() -> None:
    plan = run_program("staging", overrides={"backupRetentionDays": 14})
    lifecycle = bucket_side(plan, "backup_bucket_name", "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert next(r for r in lifecycle.inputs["rules"] if r["id"] == "expire-current-objects")["expiration"]["days"] == 14


def test_access_log_bucket_lets_alb_log_delivery_write_its_prefix_only(plan: Plan) -> None:
    sse = bucket_side(plan, "access_log_bucket_name",
                      "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    # ALB access logs only support SSE-S3.
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}
    policy = json.loads(bucket_side(plan, "access_log_bucket_name", "aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    # The S3 server access log statement of the backups bucket is checked on its own below.
    writers = [s for s in policy["Statement"] if s["Effect"] == "Allow" and s["Principal"] != S3_LOGGING]
    bucket = plan.outputs["access_log_bucket_name"]
    assert {json.dumps(s["Principal"], sort_keys=True) for s in writers} == {
        json.dumps({"AWS": "arn:aws:iam::054676820928:root"}),
        json.dumps({"Service": "logdelivery.elasticloadbalancing.amazonaws.com"})}
    for statement in writers:
        assert statement["Action"] == "s3:PutObject"
        assert statement["Resource"] == f"arn:aws:s3:::{bucket}/alb/AWSLogs/123456789012/*"
    block = bucket_side(plan, "access_log_bucket_name", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(block.inputs[f] for f in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))


S3_LOGGING = {"Service": "logging.s3.amazonaws.com"}


def test_backups_bucket_access_is_logged_to_the_access_log_bucket(plan: Plan) -> None:
    backups, logs = plan.outputs["backup_bucket_name"], plan.outputs["access_log_bucket_name"]
    logging = plan.one("aws:s3/bucketLogging:BucketLogging")
    assert logging.inputs == {"bucket": backups, "targetBucket": logs, "targetPrefix": "s3/backups/"}
    assert logging.parent == "backups"
    # S3 checks that it may deliver before it accepts the setting: the policy comes first.
    assert {"access-logs-policy", "access-logs-bucket"} <= set(logging.depends_on)
    policy = json.loads(bucket_side(plan, "access_log_bucket_name", "aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    (statement,) = [s for s in policy["Statement"] if s["Principal"] == S3_LOGGING]
    assert statement["Effect"] == "Allow" and statement["Action"] == "s3:PutObject"
    assert statement["Resource"] == f"arn:aws:s3:::{logs}/s3/backups/*"
    # Only the backups bucket of this account may deliver there (confused-deputy guard).
    assert statement["Condition"] == {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{backups}"},
                                      "StringEquals": {"aws:SourceAccount": "123456789012"}}
    # Server access log delivery supports SSE-S3 on the target, not a customer KMS key.
    sse = bucket_side(plan, "access_log_bucket_name",
                      "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}


def test_access_log_bucket_keeps_every_log_for_the_configured_retention(plan: Plan) -> None:
    lifecycle = bucket_side(plan, "access_log_bucket_name", "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    expire = next(r for r in lifecycle.inputs["rules"] if r["id"] == "expire-current-objects")
    # The whole bucket, so the load balancer's logs and the backups bucket's expire alike.
    assert expire["filter"] == {"prefix": ""}
    assert expire["expiration"]["days"] == 365


def test_secrets_are_encrypted_with_the_data_key(plan: Plan) -> None:
    secrets = plan.of_type("aws:secretsmanager/secret:Secret")
    assert {s.inputs["name"] for s in secrets} >= {
        f"psychology-api/{plan.stack}/app",
        *(f"psychology-api/{plan.stack}/integrations/{i}" for i in ("payments", "telegram", "google-calendar", "smtp"))}
    for secret in secrets:
        assert secret.inputs["kmsKeyId"] == plan.outputs["kms_key_arn"], secret.name
        assert secret.inputs["recoveryWindowInDays"] == {"staging": 7, "prod": 30}[plan.stack]


def test_django_secret_key_is_generated_and_never_plain(plan: Plan) -> None:
    password = plan.one("random:index/randomPassword:RandomPassword", "secrets-django-secret-key")
    assert password.inputs["length"] >= 50
    version = plan.one("aws:secretsmanager/secretVersion:SecretVersion", "secrets-app-value")
    assert version.inputs["secretString"] == SECRET_MASK
    assert plan.outputs["app_secret_arn"].startswith("arn:aws:secretsmanager:")


def test_django_secret_starts_with_an_announced_next_key_and_then_belongs_to_rotation(plan: Plan) -> None:
    """The first version signs with one key and already announces the next, so the first
    rotation changes the signing key without a session lost (scripts/dbops/generated_rotation.py)."""
    from tests.unit.test_dbops import secret_document

    keys = {name: plan.one("random:index/randomPassword:RandomPassword", name).outputs["result"]
            for name in ("secrets-django-secret-key", "secrets-django-next-secret-key")}
    document = secret_document(plan, "secrets-app-value")
    assert document == {"SECRET_KEY": keys["secrets-django-secret-key"],
                        "SECRET_KEY_FALLBACKS": [keys["secrets-django-next-secret-key"]]}
    for name in keys:
        inputs = plan.one("random:index/randomPassword:RandomPassword", name).inputs
        assert inputs["length"] == 64 and not set(inputs["overrideSpecial"]) & set("\"'\\`$, ")
    version = plan.one("aws:secretsmanager/secretVersion:SecretVersion", "secrets-app-value")
    assert version.ignore_changes == ["secretString", "versionStages"]
    rotation = plan.named("dbops-django-secret-key-rotation")
    assert rotation.inputs["secretId"] == plan.outputs["app_secret_arn"]
    assert rotation.inputs["rotationRules"] == {"automaticallyAfterDays": 90}


def test_integration_secrets_come_from_secret_config_only() -> None:
    token = "7411:telegram-token-that-must-stay-secret"
    plan = run_program("staging", secret_overrides={"telegramBotToken": token, "smtpPassword": "smtp-pass-123"},
                       overrides={"smtpHost": "smtp.example.com", "smtpUser": "noreply"})
    versions = {v.name: v for v in plan.of_type("aws:secretsmanager/secretVersion:SecretVersion")
                if v.parent == "secrets"}
    assert set(versions) == {"secrets-app-value", "secrets-telegram-value", "secrets-smtp-value"}
    assert versions["secrets-telegram-value"].inputs["secretString"] == SECRET_MASK
    dump = json.dumps(plan.to_json())
    assert token not in dump and "smtp-pass-123" not in dump


def test_no_secret_value_reaches_plain_outputs(plan: Plan) -> None:
    dump = json.dumps(plan.outputs)
    for resource in plan.of_type("random:index/randomPassword:RandomPassword"):
        assert resource.outputs["result"] not in dump
