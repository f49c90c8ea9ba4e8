"""The documents the components build (IAM and resource policies, Lambda environments, secret
values, host settings), from the pure functions that make them: called directly with plain
strings, no mock engine. The plan-level tests check the same documents as the engine sees them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components.alarms import topic_policy_statements
from components.api_hosts import ApiHostsArgs, api_host_settings, host_secret_arns, host_tags, instance_policy_statements
from components.cache import connection_document, node_zones
from components.common import as_text, joined
from components.dbops import (
    DatabaseSecretArns,
    DbOpsArgs,
    app_credentials_document,
    function_environments,
    function_statements,
    generated_rotation_statements,
    login_credentials_document,
    rotated_secret_arns,
    rotates_redis,
    rotation_check_environment,
    rotation_check_statements,
)
from components.encryption import key_policy_statements
from components.monitoring import (
    MonitoringHostArgs,
    alerting_document,
    host_policy_statements,
    monitoring_settings,
    readable_secret_arns,
)
from components.network import flow_log_write_statements
from components.secrets import AppSecretsArgs, integration_document
from components.storage import PrivateBucketArgs, bucket_policy_statements
from components.waf import log_delivery_statements

ACCOUNT = "210987654321"
REGION = "eu-west-3"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1111aaaa-2222-bbbb-3333-cccc4444dddd"


def secret(name: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:trial/{name}-Xy12Zw"


def by_sid(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    sids = [s["Sid"] for s in statements]
    assert len(sids) == len(set(sids)), f"duplicate Sids: {sids}"
    return {s["Sid"]: s for s in statements}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- shared helpers ------------------------------------------------------------------------------

def test_joined_and_as_text_stay_plain_for_plain_values() -> None:
    assert joined("arn:aws:s3:::bucket", "/", "postgres/", "*") == "arn:aws:s3:::bucket/postgres/*"
    assert as_text(5432) == "5432"
    assert as_text("6380") == "6380"


# --- database operations -------------------------------------------------------------------------

REDIS_GROUP_ARN = f"arn:aws:elasticache:{REGION}:{ACCOUNT}:replicationgroup:trial-redis"
ARNS = DatabaseSecretArns(app=secret("app"), monitor=secret("monitor"),
                          host_logins={"backup": secret("backup"), "drill": secret("drill")})
LOGINS = [secret("app"), secret("monitor"), secret("backup"), secret("drill")]


def dbops_args(redis: bool = True, **changes: Any) -> DbOpsArgs:
    args = DbOpsArgs(region=REGION, account_id=ACCOUNT, kms_key_arn=KEY, private_subnet_ids=["subnet-1"],
                     security_group_id="sg-1", master_secret_arn=secret("rds-master"), db_host="db.internal",
                     db_port=5433, db_name="trialdb", rotation_days=30, recovery_window_days=7)
    if redis:
        args = dataclasses.replace(args, redis_secret_arn=secret("redis"), redis_replication_group_id="trial-redis",
                                   redis_replication_group_arn=REDIS_GROUP_ARN, redis_host="redis.internal")
    return dataclasses.replace(args, **changes)


def test_each_function_reads_exactly_its_secrets() -> None:
    statements = function_statements(dbops_args(), ARNS, redis_rotation=True)
    assert set(statements) == {"migrate", "health", "rotate", "rotate-redis"}
    migrate, health = by_sid(statements["migrate"]), by_sid(statements["health"])
    assert migrate["ReadMasterAndRoleCredentials"]["Resource"] == [secret("rds-master"), *LOGINS]
    assert health["ReadApplicationAndRedisCredentials"]["Resource"] == [secret("app"), secret("redis")]
    rotate = by_sid(statements["rotate"])
    assert rotate["RotateTheDatabaseCredentialSecrets"]["Resource"] == LOGINS
    assert rotate["ReadMasterCredentials"]["Resource"] == secret("rds-master")
    redis = by_sid(statements["rotate-redis"])
    assert redis["RotateTheRedisSecret"]["Resource"] == secret("redis")
    assert redis["ChangeTheAuthTokenOfTheReplicationGroup"]["Resource"] == REDIS_GROUP_ARN


def test_the_data_key_is_used_through_secrets_manager_only_and_star_only_where_iam_demands_it() -> None:
    documents = {**function_statements(dbops_args(), ARNS, redis_rotation=True),
                 "rotate-generated": generated_rotation_statements([secret("django")], KEY, REGION),
                 "check-rotation": rotation_check_statements(LOGINS, "trial/rotation")}
    for function, statements in documents.items():
        for statement in statements:
            actions = as_list(statement["Action"])
            if any(a.startswith("kms:") for a in actions):
                assert statement["Resource"] == KEY, function
                assert statement["Condition"] == {"StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}
            if statement["Resource"] == "*":
                assert actions in (["secretsmanager:GetRandomPassword"], ["cloudwatch:PutMetricData"]), (function, actions)
    readers = [s for s in documents["migrate"] + documents["health"] if s["Action"] == "kms:Decrypt"]
    assert len(readers) == 2  # the readers decrypt only; writers also generate data keys


def test_without_the_redis_group_nothing_touches_elasticache() -> None:
    args = dbops_args(redis_replication_group_arn=None)
    assert not rotates_redis(args)
    statements = function_statements(args, ARNS, redis_rotation=False)
    assert "rotate-redis" not in statements
    assert "rotate-redis" not in function_environments(args, ARNS, redis_rotation=False)
    # The health check still reads the Redis secret it was given.
    assert secret("redis") in by_sid(statements["health"])["ReadApplicationAndRedisCredentials"]["Resource"]
    assert rotated_secret_arns(ARNS, False, args.redis_secret_arn) == LOGINS


def test_without_redis_the_health_check_reads_the_app_secret_only() -> None:
    args = dbops_args(redis=False)
    statements = function_statements(args, ARNS, redis_rotation=False)
    assert by_sid(statements["health"])["ReadApplicationAndRedisCredentials"]["Resource"] == [secret("app")]
    assert "REDIS_SECRET_ARN" not in function_environments(args, ARNS, redis_rotation=False)["health"]


def test_environments_name_the_secrets_and_settings_as_strings() -> None:
    args = dbops_args(migration_lock_timeout_seconds=7, migration_lock_attempts=3, migration_statement_timeout_seconds=300)
    env = function_environments(args, ARNS, redis_rotation=True)
    endpoint = {"DB_HOST": "db.internal", "DB_PORT": "5433", "DB_NAME": "trialdb"}
    assert env["migrate"] == {
        "MASTER_SECRET_ARN": secret("rds-master"), "APP_DB_SECRET_ARN": secret("app"),
        "MONITOR_DB_SECRET_ARN": secret("monitor"), "BACKUP_DB_SECRET_ARN": secret("backup"),
        "DRILL_DB_SECRET_ARN": secret("drill"), **endpoint,
        "MIGRATION_LOCK_TIMEOUT_SECONDS": "7", "MIGRATION_LOCK_ATTEMPTS": "3", "MIGRATION_STATEMENT_TIMEOUT_SECONDS": "300"}
    assert env["health"] == {"APP_DB_SECRET_ARN": secret("app"), **endpoint, "REDIS_SECRET_ARN": secret("redis")}
    assert env["rotate"] == {"MASTER_SECRET_ARN": secret("rds-master"), **endpoint}
    # No port given: Redis's default.
    assert env["rotate-redis"] == {"REDIS_REPLICATION_GROUP_ID": "trial-redis", "REDIS_HOST": "redis.internal",
                                   "REDIS_PORT": "6379"}
    assert all(isinstance(v, str) for variables in env.values() for v in variables.values())


def test_the_rotation_check_watches_every_rotated_secret() -> None:
    rotated = rotated_secret_arns(ARNS, True, secret("redis"))
    assert rotated == [*LOGINS, secret("redis")]
    env = rotation_check_environment(rotated, "trial/stack/rotation")
    assert env["ROTATED_SECRET_ARNS"] == ",".join(rotated)
    assert env["METRIC_NAMESPACE"] == "trial/stack/rotation"
    assert env["MARGIN_DAYS"].isdigit()
    statements = by_sid(rotation_check_statements(rotated, "trial/stack/rotation"))
    assert statements["DescribeTheRotatedSecrets"]["Resource"] == rotated
    assert statements["PublishTheRotationCheck"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "trial/stack/rotation"}}


def test_generated_rotation_rotates_exactly_the_given_secrets() -> None:
    statements = by_sid(generated_rotation_statements([secret("django"), secret("grafana")], KEY, REGION))
    assert statements["RotateTheGeneratedSecrets"]["Resource"] == [secret("django"), secret("grafana")]
    assert "secretsmanager:PutSecretValue" in statements["RotateTheGeneratedSecrets"]["Action"]


def test_first_credential_documents() -> None:
    args = dbops_args()
    assert app_credentials_document(args, "pw-1") == {
        "engine": "postgres", "host": "db.internal", "port": 5433, "dbname": "trialdb",
        "username": "psychology_app_a", "password": "pw-1", "masterarn": secret("rds-master")}
    assert login_credentials_document(args, "psychology_backup_a", "pw-2") == {
        "username": "psychology_backup_a", "password": "pw-2", "host": "db.internal", "port": 5433, "dbname": "trialdb"}


# --- API hosts -----------------------------------------------------------------------------------

def api_args(**changes: Any) -> ApiHostsArgs:
    args = ApiHostsArgs(
        image_id="ami-0123", instance_type="t3.small", root_volume_gb=30, kms_key_arn=KEY,
        private_subnet_ids=["subnet-1"], security_group_id="sg-api", target_group_arn="arn:tg", min_size=1,
        max_size=2, desired_capacity=1, cpu_target_percent=50, environment="staging", region=REGION,
        vpc_cidr="10.9.0.0/16", app_port=8000, health_check_path="/ping/", app_version="2.3.4",
        artifact_bucket="trial-releases", artifact_key="app/app-2.3.4.tar.gz", public_host="api.trial.test",
        tags={"project": "trial"}, app_secret_arn=secret("app"),
        integration_secret_arns={"telegram": secret("telegram"), "payments": secret("payments")},
        database_secret_arn=secret("db-app"), redis_secret_arn=None)
    return dataclasses.replace(args, **changes)


def test_hosts_read_their_secrets_in_a_fixed_order() -> None:
    assert host_secret_arns(api_args()) == [secret("app"), secret("payments"), secret("telegram"), secret("db-app")]
    assert host_secret_arns(api_args(integration_secret_arns={}, database_secret_arn=None,
                                     redis_secret_arn=secret("redis"))) == [secret("app"), secret("redis")]


def test_host_policy_reads_secrets_and_exactly_one_release_archive() -> None:
    statements = by_sid(instance_policy_statements([secret("app")], KEY, REGION, "trial-releases", "app/a.tar.gz"))
    assert statements["ReadTheAppSecrets"]["Resource"] == [secret("app")]
    assert statements["ReadTheReleaseArtifact"]["Resource"] == "arn:aws:s3:::trial-releases/app/a.tar.gz"
    assert statements["DecryptSecretsThroughSecretsManager"]["Condition"] == {
        "StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}


def test_host_settings_and_tags() -> None:
    args = api_args()
    settings = api_host_settings(args, {"public_host": "api.trial.test", "log_group": "/trial/api",
                                        "app_secret": secret("app"), "integrations": None, "database": secret("db-app"),
                                        "redis": None})
    assert (settings.public_host, settings.log_group_name, settings.app_version) == ("api.trial.test", "/trial/api", "2.3.4")
    assert settings.integration_secret_arns == {}  # no integration configured
    assert (settings.database_secret_arn, settings.redis_secret_arn) == (secret("db-app"), None)
    assert (settings.app_port, settings.health_check_path, settings.vpc_cidr) == (8000, "/ping/", "10.9.0.0/16")
    assert host_tags(args, "trial-staging") == {"project": "trial", "Name": "trial-staging-api", "role": "api"}


# --- monitoring host -----------------------------------------------------------------------------

def monitoring_args(**changes: Any) -> MonitoringHostArgs:
    args = MonitoringHostArgs(
        subnet_id="subnet-1", availability_zone=f"{REGION}a", security_group_id="sg-mon", ami_id="ami-0123",
        account_id=ACCOUNT, region=REGION, environment="staging", kms_key_arn=KEY, backup_bucket_name="trial-backups",
        backup_bucket_arn="arn:aws:s3:::trial-backups", alerts_topic_arn=f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
        db_address="db.internal", db_name="trialdb", db_backup_secret_arn=secret("backup"),
        db_drill_secret_arn=secret("drill"), public_url="https://api.trial.test", https=True, instance_type="t3.small",
        volume_gb=40, backup_schedule="*-*-* 01:00:00", restore_drill_schedule="*-*-01 03:00:00",
        secret_recovery_window_days=7)
    return dataclasses.replace(args, **changes)


def test_alerting_document_holds_only_configured_receivers() -> None:
    assert alerting_document(monitoring_args()) == {}
    assert alerting_document(monitoring_args(pagerduty_routing_key="rk-1")) == {"pagerduty_routing_key": "rk-1"}
    assert alerting_document(monitoring_args(alert_webhook_url="https://chat.test/h", pagerduty_routing_key="rk-1")) == {
        "webhook_url": "https://chat.test/h", "pagerduty_routing_key": "rk-1"}


def test_monitoring_host_reads_its_own_secrets_only() -> None:
    assert readable_secret_arns(monitoring_args(), secret("grafana"), None) == [
        secret("grafana"), secret("backup"), secret("drill")]
    full = monitoring_args(db_monitor_secret_arn=secret("monitor"), redis_secret_arn=secret("redis"))
    assert readable_secret_arns(full, secret("grafana"), secret("alerting")) == [
        secret("grafana"), secret("backup"), secret("drill"), secret("alerting"), secret("monitor"), secret("redis")]


def test_monitoring_host_policy_is_least_privilege() -> None:
    args = monitoring_args()
    statements = host_policy_statements(args, [secret("grafana")])
    named = by_sid(statements)
    assert named["ReadOwnSecrets"]["Resource"] == [secret("grafana")]
    assert named["WriteAndReadBackups"]["Resource"] == "arn:aws:s3:::trial-backups/postgres/*"
    assert named["ReadOpsBundle"]["Resource"] == "arn:aws:s3:::trial-backups/ops/*"
    assert named["ListBackups"]["Condition"] == {"StringLike": {"s3:prefix": ["postgres/*"]}}
    assert named["PublishAlerts"]["Resource"] == args.alerts_topic_arn
    assert named["UseDataKeyThroughServices"]["Condition"]["StringEquals"]["kms:ViaService"] == [
        f"secretsmanager.{REGION}.amazonaws.com", f"s3.{REGION}.amazonaws.com", f"sns.{REGION}.amazonaws.com"]
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert not {a for a in actions if "Delete" in a or a.endswith(":*")}, "the host must not delete or hold wildcards"


def test_monitoring_settings_from_resolved_values() -> None:
    args = monitoring_args(health_check_path="/api/v1/health/", alert_webhook_url="https://chat.test/h")
    resolved = {"public_url": "https://api.trial.test", "topic": "arn:topic", "bucket": "trial-backups", "key": KEY,
                "db_host": "db.internal", "backup_login": secret("backup"), "drill_login": secret("drill"),
                "grafana": secret("grafana"), "volume": "vol-1", "monitor": None, "redis": None,
                "alerting": secret("alerting")}
    settings = monitoring_settings(args, resolved, "trial/staging/grafana", "trial", "staging")
    assert (settings.project, settings.stack, settings.grafana_secret_name) == ("trial", "staging", "trial/staging/grafana")
    assert (settings.data_volume_id, settings.volume_gb, settings.backup_bucket) == ("vol-1", 40, "trial-backups")
    assert settings.webhook_enabled and not settings.pagerduty_enabled
    # The health path is probed once even when it is the API's own health path.
    assert settings.probe_paths == ("/api/v1/health/",)


# --- key, topic, buckets, logs ---------------------------------------------------------------------

def test_data_key_policy() -> None:
    statements = by_sid(key_policy_statements(ACCOUNT, REGION))
    assert statements["AccountAdministersKeyThroughIam"]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert statements["CloudWatchLogsEncryptsOurLogGroups"]["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}
    assert statements["CloudWatchLogsEncryptsOurLogGroups"]["Condition"]["ArnLike"] == {
        "kms:EncryptionContext:aws:logs:arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*"}
    autoscaling = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
    for sid in ("AutoScalingUsesKeyForEbs", "AutoScalingCreatesEbsGrants"):
        # Named by condition, never as principal (the role may not exist yet).
        assert statements[sid]["Principal"] == {"AWS": "*"}
        assert statements[sid]["Condition"]["ArnEquals"] == {"aws:PrincipalArn": autoscaling}
        assert statements[sid]["Condition"]["StringEquals"] == {"kms:CallerAccount": ACCOUNT}
    assert statements["AutoScalingCreatesEbsGrants"]["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


def test_alerts_topic_policy() -> None:
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:trial-alerts"
    statements = by_sid(topic_policy_statements(topic, ACCOUNT, REGION))
    publish = statements["CloudWatchAlarmsOfThisAccountPublish"]
    assert publish["Resource"] == topic
    assert publish["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT},
                                    "ArnLike": {"aws:SourceArn": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:*"}}
    assert statements["DenyPublishWithoutTls"]["Effect"] == "Deny"


def test_bucket_policy_with_a_key_refuses_objects_not_encrypted_with_kms() -> None:
    args = PrivateBucketArgs(purpose="trial", kms_key_arn=KEY, expire_days=10, noncurrent_version_days=5)
    statements = by_sid([dict(s) for s in bucket_policy_statements("arn:aws:s3:::trial", args)])
    assert statements["DenyInsecureTransport"]["Resource"] == ["arn:aws:s3:::trial", "arn:aws:s3:::trial/*"]
    kms_only = statements["DenyObjectsNotEncryptedWithKms"]
    assert kms_only["Resource"] == "arn:aws:s3:::trial/*" and kms_only["Action"] == "s3:PutObject"
    # A request naming another encryption is refused; one naming none (a multipart upload's
    # parts) gets the bucket's default SSE-KMS and is not: no IfExists, which would refuse it.
    assert kms_only["Condition"] == {"Null": {"s3:x-amz-server-side-encryption": "false"},
                                     "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}


def test_bucket_policy_fills_in_extra_statements_without_changing_them() -> None:
    extra = {"Sid": "Writer", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"},
             "Action": "s3:PutObject", "Resource": "{bucket_arn}/logs/*"}
    untouched = {"Sid": "Other", "Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "s3:GetObject",
                 "Resource": ["{bucket_arn}/x"]}  # only a string Resource is filled in
    args = PrivateBucketArgs(purpose="trial", kms_key_arn=None, expire_days=10, noncurrent_version_days=5,
                             extra_policy_statements=[extra, untouched])
    statements = by_sid([dict(s) for s in bucket_policy_statements("arn:aws:s3:::trial", args)])
    assert set(statements) == {"DenyInsecureTransport", "Writer", "Other"}  # no KMS rule without a key
    assert statements["Writer"]["Resource"] == "arn:aws:s3:::trial/logs/*"
    assert statements["Other"] == untouched
    assert extra["Resource"] == "{bucket_arn}/logs/*"


def test_log_writers_reach_their_own_log_group_only() -> None:
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/trial/flow"
    (flow,) = flow_log_write_statements(group)
    assert flow["Resource"] == [group, f"{group}:*"]
    (waf,) = log_delivery_statements(group, ACCOUNT, REGION)
    assert waf["Resource"] == f"{group}:*"
    assert waf["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT},
                                "ArnLike": {"aws:SourceArn": f"arn:aws:logs:{REGION}:{ACCOUNT}:*"}}


# --- data-tier documents -------------------------------------------------------------------------

def test_redis_connection_document_and_placement() -> None:
    assert connection_document("redis.internal", 6380, "tok") == {
        "host": "redis.internal", "port": 6380, "auth_token": "tok", "tls": True}
    assert node_zones(["a", "b"], 3) == ["a", "b", "a"]
    assert node_zones(["a", "b", "c"], 1) == ["a"]


@pytest.mark.parametrize(("integration", "values", "smtp", "expected"), [
    ("payments", {"paymentsShopId": "shop-9"}, {}, {"YOOKASSA_SHOP_ID": "shop-9"}),
    ("telegram", {}, {}, {}),
    ("smtp", {"smtpPassword": "pw"}, {"EMAIL_HOST": "smtp.trial.test"},
     {"EMAIL_HOST_PASSWORD": "pw", "EMAIL_HOST": "smtp.trial.test"}),
    ("smtp", {}, {"EMAIL_HOST": "smtp.trial.test"}, {"EMAIL_HOST": "smtp.trial.test"}),
])
def test_integration_documents_hold_only_what_is_configured(integration: str, values: dict[str, Any],
                                                              smtp: dict[str, str], expected: dict[str, Any]) -> None:
    args = AppSecretsArgs(kms_key_arn=KEY, recovery_window_days=7, integration_values=values, smtp_settings=smtp)
    assert integration_document(integration, args) == expected
