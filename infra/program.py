"""The architecture, tier by tier: validated configuration in, components connected by their
outputs, the output contract that CI reads exported. No resource is declared here except the
AWS provider; each component's Args come from infra/args.py.

    foundation     provider, zones, account, data key, network, security groups, buckets, app secrets
    data           PostgreSQL, Redis
    release        database operations (in-VPC functions, rotation), migrations ... smoke tests
    compute        load balancer and web firewall, API hosts
    observability  alerts topic, monitoring host, generated-secret rotation, rotation watch, alarms
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import pulumi
import pulumi_aws as aws

from components.alarms import AlertsTopic, CloudWatchAlarms
from components.ami import amazon_linux_2023_ami
from components.api_hosts import ApiHosts
from components.cache import Cache
from components.database import Database
from components.dbops import DbOps
from components.encryption import DataKey
from components.loadbalancer import LoadBalancer
from components.monitoring import MonitoringHost
from components.network import Network
from components.release import ReleaseMigrations, ReleaseSmokeTests
from components.secrets import AppSecrets
from components.security import SecurityGroups
from components.storage import BACKUPS_ACCESS_LOG_PREFIX, PrivateBucket
from components.waf import WebFirewall
from infra import args
from infra.config import ConfigError, Problem, SecretSettings, StackConfig, full_key, load_stack_config
from infra.context import StackContext, default_tags
from infra.outputs import contract_exports


def main(placeholders: Literal["refuse", "warn"] = "refuse") -> None:
    # Validation comes first: on bad input nothing at all is registered.
    cfg, secrets = load_stack_config(placeholders)
    if cfg.allow_http_only:
        pulumi.log.warn("allowHttpOnly is set: the application is served over plain HTTP without a certificate. "
                        "Use it only for a throw-away stack; staging and prod serve HTTPS.")
    ctx = stack_context(cfg, secrets)
    base = foundation(ctx)
    data = data_tier(ctx, base)
    ops = release_before_hosts(ctx, base, data)
    web = compute(ctx, base, data, ops)
    smoke_outputs = release_after_hosts(ctx, ops, web)
    watch = observability(ctx, base, data, ops, web)
    for name, value in contract_exports({**ctx.outputs(), **base.outputs(), **data.outputs(), **ops.outputs(),
                                         **web.outputs(), **smoke_outputs, **watch.outputs()}).items():
        pulumi.export(name, value)


# --- foundation --------------------------------------------------------------------------------

def stack_context(cfg: StackConfig, secrets: SecretSettings) -> StackContext:
    """The tagging provider, the zones, account and host image, and the data key."""
    provider = aws.Provider("aws", aws.ProviderArgs(
        region=cfg.region, default_tags=aws.ProviderDefaultTagsArgs(tags=default_tags(cfg.environment))))
    opts = pulumi.ResourceOptions(providers={"aws": provider})
    invoke = pulumi.InvokeOptions(provider=provider)
    zones = aws.get_availability_zones(
        state="available",
        filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
        opts=invoke)
    if len(zones.names) < cfg.az_count:
        raise ConfigError([Problem(full_key("azCount"), cfg.az_count,
                                   f"at most {len(zones.names)}, the AZs available in {cfg.region}")])
    account_id = aws.get_caller_identity(opts=invoke).account_id
    data_key = DataKey("data", args.data_key_args(cfg, account_id), opts)
    return StackContext(cfg=cfg, secrets=secrets, opts=opts, invoke=invoke, account_id=account_id,
                        azs=list(zones.names[: cfg.az_count]), ami=amazon_linux_2023_ami(invoke),
                        key_arn=data_key.arn, tags=default_tags(cfg.environment))


@dataclass(frozen=True)
class Foundation:
    network: Network
    security: SecurityGroups
    backups: PrivateBucket
    access_logs: PrivateBucket
    app_secrets: AppSecrets

    def outputs(self) -> dict[str, Any]:
        network = self.network
        security_group_ids = dict(self.security.ids)
        if network.endpoint_security_group_id is not None:
            security_group_ids["endpoints"] = network.endpoint_security_group_id
        return {"vpc_id": network.vpc_id, "public_subnet_ids": network.public_subnet_ids,
                "private_subnet_ids": network.private_subnet_ids, "database_subnet_ids": network.database_subnet_ids,
                "nat_public_ips": network.nat_public_ips, "flow_log_group_name": network.flow_log_group_name,
                "security_group_ids": security_group_ids,
                "backup_bucket_name": self.backups.name, "access_log_bucket_name": self.access_logs.name,
                "app_secret_arn": self.app_secrets.app_secret_arn,
                "integration_secret_arns": self.app_secrets.integration_secret_arns}


def foundation(ctx: StackContext) -> Foundation:
    network = Network("network", args.network_args(ctx), ctx.opts)
    security = SecurityGroups("sg", args.security_groups_args(ctx.cfg, network), ctx.opts)
    backups = PrivateBucket("backups", args.backups_args(ctx), ctx.opts)
    elb_account = aws.elb.get_service_account(opts=ctx.invoke)
    access_logs = PrivateBucket("access-logs", args.access_logs_args(ctx, elb_account.arn, backups), ctx.opts)
    backups.log_access_to(access_logs.name, BACKUPS_ACCESS_LOG_PREFIX, ready=[access_logs])
    app_secrets = AppSecrets("secrets", args.app_secrets_args(ctx), ctx.opts)
    return Foundation(network, security, backups, access_logs, app_secrets)


# --- data: PostgreSQL and Redis (each needs only the network, its group and the key) ------------

@dataclass(frozen=True)
class Data:
    database: Database
    cache: Cache

    def outputs(self) -> dict[str, Any]:
        db, redis = self.database, self.cache
        return {"db_endpoint": db.endpoint, "db_port": db.port, "db_name": db.db_name, "db_identifier": db.identifier,
                "db_master_secret_arn": db.master_secret_arn,
                "redis_endpoint": redis.primary_endpoint, "redis_port": redis.port,
                "redis_replication_group_id": redis.replication_group_id, "redis_secret_arn": redis.secret_arn}


def data_tier(ctx: StackContext, base: Foundation) -> Data:
    return Data(database=Database("postgres", args.database_args(ctx, base.network, base.security), ctx.opts),
                cache=Cache("redis", args.cache_args(ctx, base.network, base.security), ctx.opts))


# --- release, first half: the in-VPC functions (migrate, health, rotation) and the database
# credentials they rotate, then a snapshot (prod) and the migrations; hosts of the release wait --

@dataclass(frozen=True)
class Release:
    dbops: DbOps
    migrations: Optional[ReleaseMigrations]
    hosts_start_after: list[pulumi.Resource]

    def outputs(self) -> dict[str, Any]:
        dbops = self.dbops
        snapshot = {} if self.migrations is None else {"pre_migration_snapshot_id": self.migrations.snapshot_id}
        return {"db_app_secret_arn": dbops.app_db_secret_arn, "db_backup_secret_arn": dbops.backup_db_secret_arn,
                "db_drill_secret_arn": dbops.drill_db_secret_arn, "db_monitor_secret_arn": dbops.monitor_db_secret_arn,
                "dbops_function_names": dbops.function_names, **snapshot}


def release_before_hosts(ctx: StackContext, base: Foundation, data: Data) -> Release:
    dbops = DbOps("dbops", args.dbops_args(ctx, base.network, base.security, data.database, data.cache), ctx.opts)
    if not ctx.cfg.release_steps:
        return Release(dbops, migrations=None, hosts_start_after=[dbops.bootstrap])
    migrations = ReleaseMigrations("release", args.migrations_args(ctx.cfg, dbops, data.database), ctx.opts)
    return Release(dbops, migrations, hosts_start_after=[migrations.migrations])


# --- compute: load balancer, web application firewall, API hosts -------------------------------

@dataclass(frozen=True)
class Compute:
    alb: LoadBalancer
    waf: Optional[WebFirewall]
    api: ApiHosts

    def outputs(self) -> dict[str, Any]:
        alb, waf = self.alb, self.waf
        firewall = {} if waf is None else {"waf_web_acl_arn": waf.web_acl_arn, "waf_log_group_name": waf.log_group_name}
        return {"api_url": alb.url, "alb_dns_name": alb.dns_name, "alb_zone_id": alb.zone_id,
                "alb_arn_suffix": alb.arn_suffix, "target_group_arn": alb.target_group_arn,
                "target_group_arn_suffix": alb.target_group_arn_suffix, **firewall,
                "asg_name": self.api.asg_name, "api_role_name": self.api.role_name}


def compute(ctx: StackContext, base: Foundation, data: Data, ops: Release) -> Compute:
    alb = LoadBalancer("alb", args.load_balancer_args(ctx.cfg, base.network, base.security, base.access_logs),
                       ctx.opts)
    waf = WebFirewall("waf", args.web_firewall_args(ctx, alb), ctx.opts) if ctx.cfg.waf_enabled else None
    api = ApiHosts("api", args.api_hosts_args(ctx, base.network, base.security, alb, base.app_secrets, data.cache,
                                              ops.dbops, start_after=ops.hosts_start_after), ctx.opts)
    return Compute(alb, waf, api)


# --- release, second half: once the hosts are healthy behind the load balancer --------------------

def release_after_hosts(ctx: StackContext, ops: Release, web: Compute) -> dict[str, Any]:
    """The smoke tests; their report is the contract's smoke_test_report (none without release steps)."""
    if not ctx.cfg.release_steps:
        return {}
    smoke = ReleaseSmokeTests("release-smoke", args.smoke_tests_args(
        ctx.cfg, ops.dbops, web.alb, web.api, ops.hosts_start_after), ctx.opts)
    return {"smoke_test_report": smoke.report}


# --- observability: the monitoring host (Prometheus, Alertmanager, Grafana, backups), rotation of
# the generated secrets and its watch, CloudWatch alarms ------------------------------------------

@dataclass(frozen=True)
class Observability:
    alerts: AlertsTopic
    monitoring: MonitoringHost

    def outputs(self) -> dict[str, Any]:
        host = self.monitoring
        return {"monitoring_instance_id": host.instance_id, "grafana_url": host.grafana_url,
                "grafana_admin_secret_arn": host.grafana_admin_secret_arn, "alerts_topic_arn": self.alerts.arn}


def observability(ctx: StackContext, base: Foundation, data: Data, ops: Release, web: Compute) -> Observability:
    alerts = AlertsTopic("alerts", args.alerts_topic_args(ctx), ctx.opts)
    monitoring = MonitoringHost("monitoring", args.monitoring_host_args(
        ctx, base.network, base.security, base.backups, data.database, data.cache, ops.dbops, web.alb,
        alerts.arn), ctx.opts)
    # The generated secrets rotate too, once both exist (docs/runbooks/rotation.md).
    ops.dbops.rotate_generated_secrets(
        {"django-secret-key": base.app_secrets.app_secret_arn, "grafana-admin": monitoring.grafana_admin_secret_arn},
        after=[base.app_secrets, monitoring.grafana_admin_secret_version])
    # After the last rotation is registered: the watch covers every rotated secret.
    ops.dbops.watch_rotations()
    CloudWatchAlarms("alarms", args.alarms_args(ctx.cfg, alerts.arn, web.alb, web.waf, web.api, data.database,
                                                data.cache, ops.dbops, monitoring), ctx.opts)
    return Observability(alerts, monitoring)
