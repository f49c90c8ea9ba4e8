"""ElastiCache Redis OSS replication group in the isolated database subnets (spec 3.2.3).

Encrypted at rest with the data key and in transit (TLS required), protected by an AUTH token
handed to the API hosts through a Secrets Manager secret.

The token's first value comes from pulumi-random; from then on it belongs to the rotation
function (components/dbops.py, scripts/dbops/redis_rotation.py), which changes it on the
replication group and in the secret every `secretRotationDays`. Pulumi must not fight it: the
group's `auth_token` and the secret version's value are ignored after creation
(`ignore_changes`), so `up` neither puts the first token back on the group nor writes the first
document over a rotated one. The price: a replaced replication group starts with that first
token, not the rotated one clients hold; the next rotation (start it by hand right away) puts
the current token back on the group before it rotates.

The spec's redis.conf, on ElastiCache:
* `maxmemory-policy allkeys-lru` is set in the parameter group.
* `maxmemory 3gb` is not a parameter: ElastiCache fixes maxmemory by node type (minus the
  reserved-memory share, 25% by default). The node type per stack is the lever.
* `save 900 1 / 300 10 / 60 10000` (RDB) cannot be configured: ElastiCache replaces it with
  daily automatic snapshots (retention and window below) and, with two nodes or more, a replica
  in another AZ with automatic failover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.common import name_tag, physical_prefix, type_token

REDIS_PORT = 6379
# 00:00-01:00 Moscow: before the PostgreSQL backup (23:00 UTC) and outside every maintenance
# window. ElastiCache requires at least 60 minutes.
SNAPSHOT_WINDOW = "21:00-22:00"
# Sunday 05:00-06:00 Moscow: after PostgreSQL's maintenance window, so the two never fail over
# at the same time.
MAINTENANCE_WINDOW = "sun:02:00-sun:03:00"
# ElastiCache allows letters, digits and only !&#$^<>- in an AUTH token; the token also goes
# into REDIS_URL (rediss://:<token>@host:port/0), where # and & would need escaping. Letters and
# digits only: 64 of them are about 380 bits.
AUTH_TOKEN_LENGTH = 64
PARAMETERS = {"maxmemory-policy": "allkeys-lru"}


@dataclass
class CacheArgs:
    engine_version: str                      # config redisEngineVersion: "7.0" or "7.1"
    parameter_group_family: str              # "redis7" (the family of both supported versions)
    node_type: str                           # config redisNodeType, e.g. "cache.m6g.large" (fixes maxmemory)
    num_nodes: int                           # config redisNumNodes: 2+ enables automatic failover and Multi-AZ
    availability_zones: Sequence[str]        # nodes are spread over these, primary in the first
    subnet_group_name: pulumi.Input[str]     # Network.cache_subnet_group_name: the isolated database subnets
    security_group_id: pulumi.Input[str]     # SecurityGroups.ids["redis"]
    kms_key_arn: pulumi.Input[str]           # DataKey.arn: at rest, the secret, the slow-log group
    snapshot_retention_days: int             # config redisSnapshotRetentionDays: days automatic snapshots are kept
    apply_immediately: bool                  # changes now (staging) or in the maintenance window (prod)
    final_snapshot: bool                     # take a snapshot when the group is deleted (config deletionProtection)
    secret_recovery_window_days: int         # config secretRecoveryWindowDays: days a deleted secret can be restored
    log_retention_days: int                  # config dataLogRetentionDays: days the slow log is kept


class Cache(pulumi.ComponentResource):
    primary_endpoint: pulumi.Output[str]
    reader_endpoint: pulumi.Output[str]
    port: pulumi.Output[int]
    replication_group_id: pulumi.Output[str]
    arn: pulumi.Output[str]
    secret_arn: pulumi.Output[str]
    slow_log_group_name: pulumi.Output[str]

    def __init__(self, name: str, args: CacheArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("cache", "Cache"), name, None, opts)
        group_id = f"{physical_prefix()}-redis"
        if len(group_id) > 40:
            raise ValueError(f"replication group id {group_id} is longer than ElastiCache's 40 characters")
        child = pulumi.ResourceOptions(parent=self)
        parameter_group = aws.elasticache.ParameterGroup(f"{name}-params", aws.elasticache.ParameterGroupArgs(
            family=args.parameter_group_family,
            description="psychology-api Redis settings (spec 3.2.3)",
            parameters=[aws.elasticache.ParameterGroupParameterArgs(name=key, value=value)
                        for key, value in PARAMETERS.items()],
            tags=name_tag("redis-params"),
        ), child)
        auth_token = random.RandomPassword(f"{name}-auth-token", random.RandomPasswordArgs(
            length=AUTH_TOKEN_LENGTH, special=False, min_upper=4, min_lower=4, min_numeric=4), child)
        slow_log = aws.cloudwatch.LogGroup(f"{name}-slow-log", aws.cloudwatch.LogGroupArgs(
            name=f"/psychology-api/{pulumi.get_stack()}/redis/slow-log",
            retention_in_days=args.log_retention_days,
            kms_key_id=args.kms_key_arn,
            tags=name_tag("redis-slow-log"),
        ), child)
        group = self._replication_group(name, group_id, args, parameter_group, auth_token, slow_log)
        port = group.port.apply(lambda value: int(value) if value is not None else REDIS_PORT)
        secret, first_value = self._secret(name, args, group, port, auth_token)

        self.primary_endpoint = group.primary_endpoint_address
        self.reader_endpoint = group.reader_endpoint_address
        self.port = port
        self.replication_group_id = group.replication_group_id
        self.arn = group.arn
        # Known once the secret holds a value: whoever takes the ARN (hosts, functions, the
        # rotation) may read it right away.
        self.secret_arn = pulumi.Output.all(secret.arn, first_value.id).apply(lambda values: str(values[0]))
        self.slow_log_group_name = slow_log.name
        self.register_outputs({
            "primary_endpoint": self.primary_endpoint,
            "reader_endpoint": self.reader_endpoint,
            "port": self.port,
            "replication_group_id": self.replication_group_id,
            "arn": self.arn,
            "secret_arn": self.secret_arn,
            "slow_log_group_name": self.slow_log_group_name,
        })

    def _replication_group(self, name: str, group_id: str, args: CacheArgs,
                           parameter_group: aws.elasticache.ParameterGroup, auth_token: random.RandomPassword,
                           slow_log: aws.cloudwatch.LogGroup) -> aws.elasticache.ReplicationGroup:
        failover = args.num_nodes >= 2
        return aws.elasticache.ReplicationGroup(f"{name}-group", aws.elasticache.ReplicationGroupArgs(
            replication_group_id=group_id,
            description="psychology-api cache, sessions and task queue",
            engine="redis",
            engine_version=args.engine_version,
            auto_minor_version_upgrade=True,
            node_type=args.node_type,
            num_cache_clusters=args.num_nodes,
            preferred_cache_cluster_azs=node_zones(args.availability_zones, args.num_nodes),
            automatic_failover_enabled=failover,
            multi_az_enabled=failover,
            parameter_group_name=parameter_group.name,
            port=REDIS_PORT,
            subnet_group_name=args.subnet_group_name,
            security_group_ids=[args.security_group_id],
            at_rest_encryption_enabled=True,
            kms_key_id=args.kms_key_arn,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            auth_token=auth_token.result,
            # Only ever used when the token changes: a new token is accepted next to the
            # previous one, so running clients keep working until they have read the new secret.
            auth_token_update_strategy="ROTATE",  # noqa: S106 - a strategy name, not a token
            snapshot_retention_limit=args.snapshot_retention_days,
            snapshot_window=SNAPSHOT_WINDOW,
            maintenance_window=MAINTENANCE_WINDOW,
            final_snapshot_identifier=f"{group_id}-final" if args.final_snapshot else None,
            apply_immediately=args.apply_immediately,
            log_delivery_configurations=[aws.elasticache.ReplicationGroupLogDeliveryConfigurationArgs(
                destination=slow_log.name, destination_type="cloudwatch-logs", log_format="json",
                log_type="slow-log")],
            tags=name_tag("redis"),
        ), pulumi.ResourceOptions(parent=self, additional_secret_outputs=["authToken"],
                                  # The rotation function owns the token after creation (see above).
                                  ignore_changes=["auth_token"]))

    def _secret(self, name: str, args: CacheArgs, group: aws.elasticache.ReplicationGroup, port: pulumi.Output[int],
                auth_token: random.RandomPassword) -> tuple[aws.secretsmanager.Secret, aws.secretsmanager.SecretVersion]:
        """The connection secret and its first value (connection_document)."""
        secret = aws.secretsmanager.Secret(f"{name}-secret", aws.secretsmanager.SecretArgs(
            name=f"{pulumi.get_project()}/{pulumi.get_stack()}/redis",
            description="Redis connection for the application: host, port, AUTH token, TLS",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=args.secret_recovery_window_days,
            tags=name_tag("redis-secret", {"secret-kind": "redis"})), pulumi.ResourceOptions(parent=self))
        first_value = aws.secretsmanager.SecretVersion(f"{name}-secret-value", aws.secretsmanager.SecretVersionArgs(
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(
                connection_document(group.primary_endpoint_address, port, auth_token.result)))),
            pulumi.ResourceOptions(parent=self,
                                   # After the first rotation the value belongs to the rotation
                                   # function; writing it again would put back a token that
                                   # the group no longer accepts after the next rotation.
                                   ignore_changes=["secret_string", "version_stages"]))
        return secret, first_value


def node_zones(availability_zones: Sequence[str], num_nodes: int) -> list[str]:
    """The AZ of each node, round robin over the zones: the primary in the first."""
    return [availability_zones[i % len(availability_zones)] for i in range(num_nodes)]


def connection_document(host: pulumi.Input[str], port: pulumi.Input[int], auth_token: pulumi.Input[str]) -> dict[str, Any]:
    """The Redis secret's value. Contract with the API hosts: REDIS_HOST, REDIS_PORT,
    REDIS_PASSWORD and REDIS_URL=rediss://:<token>@host:port/0 are built from this document;
    the rotation function (scripts/dbops/redis_rotation.py) keeps its keys."""
    return {"host": host, "port": port, "auth_token": auth_token, "tls": True}
