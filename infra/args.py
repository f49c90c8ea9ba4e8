"""Each component's Args from the configuration and the outputs of the components it builds on,
one function per component, in the order of the configuration's sections (infra/config.py).

The tiers of infra/program.py call these; every value a component receives is decided here."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

from components.alarms import AlertsTopicArgs, CloudWatchAlarmsArgs
from components.ami import AL2023_AT_LAUNCH
from components.api_hosts import ApiHosts, ApiHostsArgs
from components.cache import Cache, CacheArgs
from components.connection_budget import refresh_max_healthy_percent
from components.database import Database, DatabaseArgs
from components.dbops import DbOps, DbOpsArgs
from components.encryption import DataKeyArgs
from components.loadbalancer import LoadBalancer, LoadBalancerArgs
from components.monitoring import MonitoringHost, MonitoringHostArgs
from components.network import Network, NetworkArgs
from components.postgres_parameters import max_connections
from components.release import ReleaseMigrationsArgs, ReleaseSmokeTestsArgs
from components.secrets import AppSecrets, AppSecretsArgs
from components.security import SecurityGroups, SecurityGroupsArgs
from components.storage import (
    ACCESS_LOG_PREFIX,
    BACKUP_PREFIX,
    BACKUPS_ACCESS_LOG_PREFIX,
    PrivateBucket,
    PrivateBucketArgs,
    access_log_delivery_statements,
    server_access_log_delivery_statements,
)
from components.waf import WebFirewall, WebFirewallArgs
from infra.config import StackConfig
from infra.context import StackContext

# --- network -----------------------------------------------------------------------------

def network_args(ctx: StackContext) -> NetworkArgs:
    cfg = ctx.cfg
    return NetworkArgs(
        vpc_cidr=cfg.vpc_cidr, availability_zones=ctx.azs, public_subnet_cidrs=cfg.public_subnet_cidrs,
        private_subnet_cidrs=cfg.private_subnet_cidrs, database_subnet_cidrs=cfg.database_subnet_cidrs,
        nat_gateway_per_az=cfg.nat_gateway_per_az, interface_endpoints=cfg.interface_endpoints,
        flow_log_retention_days=cfg.flow_log_retention_days, flow_log_kms_key_arn=ctx.key_arn,
        region=ctx.region, account_id=ctx.account_id)


def security_groups_args(cfg: StackConfig, network: Network) -> SecurityGroupsArgs:
    return SecurityGroupsArgs(vpc_id=network.vpc_id, vpc_cidr=cfg.vpc_cidr, app_port=cfg.app_port,
                              admin_cidrs=cfg.admin_cidrs, ssh_cidrs=cfg.ssh_cidrs)


# --- encryption and storage ----------------------------------------------------------------

def data_key_args(cfg: StackConfig, account_id: str) -> DataKeyArgs:
    return DataKeyArgs(account_id=account_id, region=cfg.region, deletion_window_days=cfg.kms_deletion_window_days)


def backups_args(ctx: StackContext) -> PrivateBucketArgs:
    return PrivateBucketArgs(
        purpose="database-backups", kms_key_arn=ctx.key_arn,
        expire_prefix=BACKUP_PREFIX, expire_days=ctx.cfg.backup_retention_days,
        noncurrent_version_days=ctx.cfg.backup_noncurrent_version_days,
        # The host that writes backups can add, never delete or replace, within the retention.
        object_lock_days=ctx.cfg.backup_retention_days)


def access_logs_args(ctx: StackContext, elb_account_arn: str, backups: PrivateBucket) -> PrivateBucketArgs:
    return PrivateBucketArgs(
        purpose="load-balancer-access-logs", kms_key_arn=None,
        # Everything in it is a log: the load balancer's and the backups bucket's.
        expire_prefix="", expire_days=ctx.cfg.access_log_retention_days,
        noncurrent_version_days=ctx.cfg.backup_noncurrent_version_days,
        extra_policy_statements=[
            *access_log_delivery_statements(ctx.account_id, elb_account_arn),
            *server_access_log_delivery_statements(ctx.account_id, backups.arn, BACKUPS_ACCESS_LOG_PREFIX)])


# --- secrets and e-mail --------------------------------------------------------------------

def smtp_settings(cfg: StackConfig) -> dict[str, str]:
    """The SMTP integration's plain settings, stored next to its password; unset ones left out."""
    settings = {"EMAIL_HOST": cfg.smtp_host, "EMAIL_PORT": str(cfg.smtp_port) if cfg.smtp_host else "",
                "EMAIL_HOST_USER": cfg.smtp_user, "DEFAULT_FROM_EMAIL": cfg.email_from}
    return {key: value for key, value in settings.items() if value}


def app_secrets_args(ctx: StackContext) -> AppSecretsArgs:
    return AppSecretsArgs(kms_key_arn=ctx.key_arn, recovery_window_days=ctx.cfg.secret_recovery_window_days,
                          integration_values=ctx.secrets.values, smtp_settings=smtp_settings(ctx.cfg))


# --- edge: load balancer, TLS, firewall ------------------------------------------------------

def load_balancer_args(cfg: StackConfig, network: Network, security: SecurityGroups,
                       access_logs: PrivateBucket) -> LoadBalancerArgs:
    return LoadBalancerArgs(
        vpc_id=network.vpc_id, public_subnet_ids=network.public_subnet_ids, security_group_id=security.ids["alb"],
        access_log_bucket=access_logs.name, access_log_prefix=ACCESS_LOG_PREFIX, access_log_bucket_ready=[access_logs],
        app_port=cfg.app_port, health_check_path=cfg.health_check_path, ssl_policy=cfg.ssl_policy,
        deletion_protection=cfg.deletion_protection, maintenance=cfg.maintenance,
        certificate_arn=cfg.certificate_arn, domain_name=cfg.domain_name, hosted_zone_id=cfg.hosted_zone_id,
        allow_http_only=cfg.allow_http_only)


def web_firewall_args(ctx: StackContext, alb: LoadBalancer) -> WebFirewallArgs:
    return WebFirewallArgs(load_balancer_arn=alb.arn, region=ctx.region, account_id=ctx.account_id,
                           kms_key_arn=ctx.key_arn, rate_limit=ctx.cfg.waf_rate_limit, mode=ctx.cfg.waf_mode,
                           log_retention_days=ctx.cfg.waf_log_retention_days)


# --- compute: the API hosts --------------------------------------------------------------------

def api_hosts_args(ctx: StackContext, network: Network, security: SecurityGroups, alb: LoadBalancer,
                   secrets: AppSecrets, cache: Cache, dbops: DbOps,
                   start_after: Sequence[pulumi.Resource]) -> ApiHostsArgs:
    cfg = ctx.cfg
    return ApiHostsArgs(
        image_id=AL2023_AT_LAUNCH, root_device_name=ctx.ami.root_device_name, instance_type=cfg.api_instance_type,
        max_instance_lifetime_days=cfg.api_max_instance_lifetime_days,
        root_volume_gb=cfg.api_root_volume_gb, kms_key_arn=ctx.key_arn,
        private_subnet_ids=network.private_subnet_ids, security_group_id=security.ids["api"],
        target_group_arn=alb.target_group_arn,
        min_size=cfg.api_min_size, max_size=cfg.api_max_size, desired_capacity=cfg.api_desired_capacity,
        cpu_target_percent=cfg.api_cpu_target_percent,
        refresh_max_healthy_percent=refresh_max_healthy_percent(cfg.api_max_size, cfg.api_instance_type,
                                                                max_connections()),
        environment=cfg.environment, region=ctx.region, vpc_cidr=cfg.vpc_cidr, app_port=cfg.app_port,
        health_check_path=cfg.health_check_path, app_version=cfg.app_version,
        artifact_bucket=cfg.app_artifact_bucket, artifact_key=cfg.app_artifact_key,
        public_host=alb.public_host, tags=ctx.tags,
        app_secret_arn=secrets.app_secret_arn, integration_secret_arns=secrets.integration_secret_arns,
        database_secret_arn=dbops.app_db_secret_arn, redis_secret_arn=cache.secret_arn,
        start_after=start_after)


# --- data: PostgreSQL and Redis ------------------------------------------------------------------

def database_args(ctx: StackContext, network: Network, security: SecurityGroups) -> DatabaseArgs:
    cfg = ctx.cfg
    return DatabaseArgs(
        engine_version=cfg.db_engine_version, parameter_group_family=cfg.db_parameter_group_family,
        instance_class=cfg.db_instance_class, allocated_storage_gb=cfg.db_allocated_storage_gb,
        max_allocated_storage_gb=cfg.db_max_allocated_storage_gb, multi_az=cfg.db_multi_az, db_name=cfg.db_name,
        subnet_group_name=network.db_subnet_group_name, security_group_id=security.ids["database"],
        kms_key_arn=ctx.key_arn, backup_retention_days=cfg.db_backup_retention_days,
        deletion_protection=cfg.deletion_protection, apply_immediately=not cfg.is_prod,
        performance_insights_retention_days=cfg.db_performance_insights_retention_days,
        monitoring_interval_seconds=cfg.db_monitoring_interval_seconds,
        log_retention_days=cfg.data_log_retention_days, account_id=ctx.account_id)


def cache_args(ctx: StackContext, network: Network, security: SecurityGroups) -> CacheArgs:
    cfg = ctx.cfg
    return CacheArgs(
        engine_version=cfg.redis_engine_version, parameter_group_family=cfg.redis_parameter_group_family,
        node_type=cfg.redis_node_type, num_nodes=cfg.redis_num_nodes, availability_zones=ctx.azs,
        subnet_group_name=network.cache_subnet_group_name, security_group_id=security.ids["redis"],
        kms_key_arn=ctx.key_arn, snapshot_retention_days=cfg.redis_snapshot_retention_days,
        apply_immediately=not cfg.is_prod, final_snapshot=cfg.deletion_protection,
        secret_recovery_window_days=cfg.secret_recovery_window_days, log_retention_days=cfg.data_log_retention_days)


# --- release: database operations, migrations, smoke tests ----------------------------------------

def dbops_args(ctx: StackContext, network: Network, security: SecurityGroups, database: Database,
               cache: Cache) -> DbOpsArgs:
    cfg = ctx.cfg
    return DbOpsArgs(
        region=ctx.region, account_id=ctx.account_id, kms_key_arn=ctx.key_arn,
        private_subnet_ids=network.private_subnet_ids, security_group_id=security.ids["dbops"],
        master_secret_arn=database.master_secret_arn, db_host=database.endpoint, db_port=database.port,
        db_name=cfg.db_name,
        redis_secret_arn=cache.secret_arn, redis_replication_group_id=cache.replication_group_id,
        redis_replication_group_arn=cache.arn, redis_host=cache.primary_endpoint, redis_port=cache.port,
        rotation_days=cfg.secret_rotation_days, recovery_window_days=cfg.secret_recovery_window_days,
        log_retention_days=cfg.data_log_retention_days,
        migration_lock_timeout_seconds=cfg.migration_lock_timeout_seconds,
        migration_lock_attempts=cfg.migration_lock_attempts,
        migration_statement_timeout_seconds=cfg.migration_statement_timeout_seconds,
        network_ready=[network, security])


def migrations_args(cfg: StackConfig, dbops: DbOps, database: Database) -> ReleaseMigrationsArgs:
    return ReleaseMigrationsArgs(
        region=cfg.region, migrate_function_name=dbops.migrate_function_name, package_sha256=dbops.package_sha256,
        app_version=cfg.app_version, pre_migration_snapshot=cfg.pre_migration_snapshot,
        db_instance_identifier=database.identifier, depends_on=[dbops.bootstrap])


def smoke_tests_args(cfg: StackConfig, dbops: DbOps, alb: LoadBalancer, api: ApiHosts,
                     hosts_start_after: Sequence[pulumi.Resource]) -> ReleaseSmokeTestsArgs:
    return ReleaseSmokeTestsArgs(
        region=cfg.region, api_url=alb.url, health_function_name=dbops.health_function_name,
        target_group_arn=alb.target_group_arn, autoscaling_group_name=api.asg_name,
        app_version=cfg.app_version, package_sha256=dbops.package_sha256, maintenance=cfg.maintenance,
        release_triggers=[api.launch_template_latest_version],
        launch_template_version=api.launch_template_latest_version,
        depends_on=[api, *hosts_start_after])


# --- monitoring and alerting -----------------------------------------------------------------------

def alerts_topic_args(ctx: StackContext) -> AlertsTopicArgs:
    return AlertsTopicArgs(kms_key_arn=ctx.key_arn, account_id=ctx.account_id, region=ctx.region,
                           alarm_email=ctx.cfg.alarm_email)


def monitoring_host_args(ctx: StackContext, network: Network, security: SecurityGroups, backups: PrivateBucket,
                         database: Database, cache: Cache, dbops: DbOps, alb: LoadBalancer,
                         alerts_topic_arn: pulumi.Input[str]) -> MonitoringHostArgs:
    cfg = ctx.cfg
    return MonitoringHostArgs(
        subnet_id=network.private_subnet_ids[0], availability_zone=ctx.azs[0],
        security_group_id=security.ids["monitoring"], ami_id=ctx.ami.id, account_id=ctx.account_id,
        region=ctx.region, environment=cfg.environment, kms_key_arn=ctx.key_arn,
        backup_bucket_name=backups.name, backup_bucket_arn=backups.arn, alerts_topic_arn=alerts_topic_arn,
        db_address=database.endpoint, db_name=cfg.db_name,
        db_backup_secret_arn=dbops.backup_db_secret_arn, db_drill_secret_arn=dbops.drill_db_secret_arn,
        public_url=alb.url, https=cfg.https_enabled,
        instance_type=cfg.monitoring_instance_type, volume_gb=cfg.monitoring_volume_gb,
        backup_schedule=cfg.backup_schedule, restore_drill_schedule=cfg.restore_drill_schedule,
        secret_recovery_window_days=cfg.secret_recovery_window_days, health_check_path=cfg.health_check_path,
        postgres_major_version=cfg.db_major_version,
        redis_secret_arn=cache.secret_arn, db_monitor_secret_arn=dbops.monitor_db_secret_arn,
        alert_webhook_url=ctx.secrets.get("alertWebhookUrl"),
        pagerduty_routing_key=ctx.secrets.get("pagerdutyRoutingKey"),
        final_snapshot=cfg.deletion_protection, network_ready=[network, security])


def alarms_args(cfg: StackConfig, alerts_topic_arn: pulumi.Input[str], alb: LoadBalancer,
                waf: WebFirewall | None, api: ApiHosts, database: Database, cache: Cache, dbops: DbOps,
                monitoring: MonitoringHost) -> CloudWatchAlarmsArgs:
    return CloudWatchAlarmsArgs(
        alerts_topic_arn=alerts_topic_arn, region=cfg.region,
        alb_arn_suffix=alb.arn_suffix, target_group_arn_suffix=alb.target_group_arn_suffix, asg_name=api.asg_name,
        db_instance_identifier=database.identifier, db_allocated_storage_gb=cfg.db_allocated_storage_gb,
        redis_replication_group_id=cache.replication_group_id, redis_num_nodes=cfg.redis_num_nodes,
        monitoring_instance_id=monitoring.instance_id, maintenance=cfg.maintenance,
        rotation_function_names=dbops.rotation_function_names,
        rotation_metric_namespace=dbops.rotation_metric_namespace,
        waf_web_acl_name=waf.web_acl_name if waf is not None else None, waf_mode=cfg.waf_mode)
