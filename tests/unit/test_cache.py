"""ElastiCache Redis under the mock engine, both stacks: availability, encryption and AUTH,
the parameter group, windows, the secret the API hosts read, outputs."""

from __future__ import annotations

import json
import string

from harness.mock_engine import _SECRET_SIG, _SIG_KEY, Plan, PlannedResource
from tests.unit.test_database import instance as database_instance
from tests.unit.windows import daily_length_minutes, daily_minutes, weekly_minutes

GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
ELASTICACHE_TOKEN_SPECIALS = set("!&#$^<>-")
NODE_SIZES = ("micro", "small", "medium", "large", "xlarge", "2xlarge")


def group(plan: Plan) -> PlannedResource:
    return plan.one(GROUP)


def secret_document(plan: Plan) -> dict[str, object]:
    """The Redis secret's value as the engine received it: it must arrive wrapped as a secret."""
    wrapped = plan.named("redis-secret-value").outputs["secretString"]
    assert isinstance(wrapped, dict) and wrapped.get(_SIG_KEY) == _SECRET_SIG
    return json.loads(wrapped["value"])


def test_prod_has_two_nodes_in_two_azs_with_failover_and_multi_az(prod: Plan) -> None:
    redis = group(prod).inputs
    assert redis["numCacheClusters"] >= 2
    assert redis["automaticFailoverEnabled"] is True
    assert redis["multiAzEnabled"] is True
    zones = redis["preferredCacheClusterAzs"]
    assert len(zones) == redis["numCacheClusters"] and len(set(zones)) == len(zones)
    assert redis["applyImmediately"] is False
    assert redis["finalSnapshotIdentifier"] == "psychology-api-prod-redis-final"


def test_staging_is_one_smaller_node_without_failover(staging: Plan, prod: Plan) -> None:
    redis, big = group(staging).inputs, group(prod).inputs
    assert redis["numCacheClusters"] == 1
    assert redis["automaticFailoverEnabled"] is False
    assert redis["multiAzEnabled"] is False
    assert NODE_SIZES.index(redis["nodeType"].split(".")[-1]) < NODE_SIZES.index(big["nodeType"].split(".")[-1])
    assert redis["applyImmediately"] is True
    assert "finalSnapshotIdentifier" not in redis


def test_redis_is_private_in_the_database_subnets_behind_its_group(plan: Plan) -> None:
    redis = group(plan).inputs
    assert redis["port"] == 6379
    assert redis["securityGroupIds"] == [plan.outputs["security_group_ids"]["redis"]]
    subnet_group = plan.one("aws:elasticache/subnetGroup:SubnetGroup")
    assert redis["subnetGroupName"] == subnet_group.outputs["name"]
    assert subnet_group.inputs["subnetIds"] == plan.outputs["database_subnet_ids"]


def test_redis_depends_only_on_what_it_uses(plan: Plan) -> None:
    allowed = {"data-key", "network-cache-subnets", "sg-redis"}
    for resource in [group(plan), *plan.children_of("redis")]:
        outside = {d for d in resource.depends_on if not d.startswith("redis-")} - allowed
        assert not outside, f"{resource.name} waits for {outside}"


def test_both_encryptions_and_auth(plan: Plan) -> None:
    redis = group(plan).inputs
    assert redis["engine"] == "redis"
    assert redis["atRestEncryptionEnabled"] is True
    assert redis["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert redis["transitEncryptionEnabled"] is True
    assert redis["transitEncryptionMode"] == "required"
    assert redis["authToken"] == "[secret]"
    assert redis["authTokenUpdateStrategy"] == "ROTATE"


def test_auth_token_fits_elasticache_rules_and_a_url(plan: Plan) -> None:
    token = plan.named("redis-auth-token")
    assert token.type == "random:index/randomPassword:RandomPassword"
    assert 16 <= token.inputs["length"] <= 128
    specials = set(token.inputs.get("overrideSpecial", "")) if token.inputs.get("special", True) else set()
    assert specials <= ELASTICACHE_TOKEN_SPECIALS
    assert not specials & set("#&"), "would need escaping in REDIS_URL"
    result = token.outputs["result"]
    assert set(result) <= set(string.ascii_letters + string.digits) | ELASTICACHE_TOKEN_SPECIALS


def test_parameter_group_sets_allkeys_lru_for_the_engine_family(plan: Plan) -> None:
    params = plan.one("aws:elasticache/parameterGroup:ParameterGroup")
    redis = group(plan).inputs
    assert params.inputs["family"] == "redis7"
    assert redis["engineVersion"].split(".")[0] == "7"
    assert {p["name"]: p["value"] for p in params.inputs["parameters"]} == {"maxmemory-policy": "allkeys-lru"}
    assert redis["parameterGroupName"] == params.outputs["name"]


def test_snapshots_and_windows_never_collide(plan: Plan) -> None:
    redis = group(plan).inputs
    assert redis["snapshotRetentionLimit"] == (7 if plan.stack == "prod" else 1)
    snapshot = daily_minutes(redis["snapshotWindow"])
    maintenance = weekly_minutes(redis["maintenanceWindow"])
    assert daily_length_minutes(redis["snapshotWindow"]) >= 60 and len(maintenance) >= 60  # ElastiCache minimums
    assert not snapshot & maintenance
    db = database_instance(plan).inputs
    db_backup, db_maintenance = daily_minutes(db["backupWindow"]), weekly_minutes(db["maintenanceWindow"])
    # Never both data stores in maintenance at once, and snapshots apart from the DB backup.
    assert not maintenance & db_maintenance
    assert not snapshot & db_backup
    assert not snapshot & db_maintenance and not maintenance & db_backup


def test_slow_log_goes_to_an_encrypted_log_group(plan: Plan) -> None:
    [delivery] = group(plan).inputs["logDeliveryConfigurations"]
    log_group = plan.named("redis-slow-log")
    assert delivery == {"logType": "slow-log", "destinationType": "cloudwatch-logs", "logFormat": "json",
                        "destination": log_group.inputs["name"]}
    assert log_group.inputs["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert log_group.inputs["retentionInDays"] in (30, 365)


def test_secret_holds_the_contract_document_under_the_data_key(plan: Plan) -> None:
    secret = plan.named("redis-secret")
    assert secret.inputs["name"] == f"psychology-api/{plan.stack}/redis"
    assert secret.inputs["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert secret.inputs["recoveryWindowInDays"] == (30 if plan.stack == "prod" else 7)
    version = plan.named("redis-secret-value")
    assert version.inputs["secretString"] == "[secret]"
    assert version.inputs["secretId"] == secret.id
    document = secret_document(plan)
    assert document == {
        "host": group(plan).outputs["primaryEndpointAddress"],
        "port": 6379,
        "auth_token": plan.named("redis-auth-token").outputs["result"],
        "tls": True,
    }


def test_outputs_point_at_the_group_and_the_secret_and_never_carry_the_token(plan: Plan) -> None:
    redis = group(plan)
    out = plan.outputs
    assert out["redis_endpoint"] == redis.outputs["primaryEndpointAddress"]
    assert out["redis_port"] == 6379
    assert out["redis_replication_group_id"] == f"psychology-api-{plan.stack}-redis"
    assert out["redis_secret_arn"] == plan.named("redis-secret").outputs["arn"]
    assert out["redis_secret_arn"].startswith(f"arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/{plan.stack}/redis")
    token = plan.named("redis-auth-token").outputs["result"]
    assert token not in json.dumps(out)
    assert token not in json.dumps([r.inputs for r in plan.resources])

