"""Wiring only: validated configuration in, components connected by their outputs, the output
contract that CI reads exported. No resource is declared here except the AWS provider."""

from __future__ import annotations

from typing import Literal

import pulumi
import pulumi_aws as aws

from components.alarms import AlertsTopic, AlertsTopicArgs, CloudWatchAlarms, CloudWatchAlarmsArgs
from components.ami import amazon_linux_2023_ami
from components.api_hosts import ApiHosts, ApiHostsArgs
from components.cache import Cache, CacheArgs
from components.connection_budget import refresh_max_healthy_percent
from components.database import Database, DatabaseArgs
from components.dbops import DbOps, DbOpsArgs
from components.encryption import DataKey, DataKeyArgs
from components.loadbalancer import LoadBalancer, LoadBalancerArgs
from components.monitoring import MonitoringHost, MonitoringHostArgs
from components.network import Network, NetworkArgs
from components.postgres_parameters import max_connections
from components.release import ReleaseMigrations, ReleaseMigrationsArgs, ReleaseSmokeTests, ReleaseSmokeTestsArgs
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
from infra.config import PROJECT, ConfigError, Problem, full_key, load_stack_config


def default_tags(environment: str) -> dict[str, str]:
    return {"project": PROJECT, "stack": pulumi.get_stack(), "managed-by": "pulumi", "environment": environment}


def main(placeholders: Literal["refuse", "warn"] = "refuse") -> None:
    # Validation comes first: on bad input nothing at all is registered.
    cfg, secrets = load_stack_config(placeholders)
    if cfg.allow_http_only:
        pulumi.log.warn("allowHttpOnly is set: the application is served over plain HTTP without a certificate. "
                        "Use it only for a throw-away stack; staging and prod serve HTTPS.")

    provider = aws.Provider("aws", aws.ProviderArgs(
        region=cfg.region,
        default_tags=aws.ProviderDefaultTagsArgs(tags=default_tags(cfg.environment)),
    ))
    opts = pulumi.ResourceOptions(providers={"aws": provider})
    invoke = pulumi.InvokeOptions(provider=provider)

    zones = aws.get_availability_zones(
        state="available",
        filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
        opts=invoke)
    if len(zones.names) < cfg.az_count:
        raise ConfigError([Problem(full_key("azCount"), cfg.az_count,
                                   f"at most {len(zones.names)}, the AZs available in {cfg.region}")])
    azs = list(zones.names[: cfg.az_count])
    account_id = aws.get_caller_identity(opts=invoke).account_id
    elb_account = aws.elb.get_service_account(opts=invoke)

    data_key = DataKey("data", DataKeyArgs(
        account_id=account_id, region=cfg.region, deletion_window_days=cfg.kms_deletion_window_days), opts)

    network = Network("network", NetworkArgs(
        vpc_cidr=cfg.vpc_cidr,
        availability_zones=azs,
        public_subnet_cidrs=cfg.public_subnet_cidrs,
        private_subnet_cidrs=cfg.private_subnet_cidrs,
        database_subnet_cidrs=cfg.database_subnet_cidrs,
        nat_gateway_per_az=cfg.nat_gateway_per_az,
        interface_endpoints=cfg.interface_endpoints,
        flow_log_retention_days=cfg.flow_log_retention_days,
        flow_log_kms_key_arn=data_key.arn,
        region=cfg.region,
        account_id=account_id,
    ), opts)

    security = SecurityGroups("sg", SecurityGroupsArgs(
        vpc_id=network.vpc_id,
        vpc_cidr=cfg.vpc_cidr,
        app_port=cfg.app_port,
        admin_cidrs=cfg.admin_cidrs,
        ssh_cidrs=cfg.ssh_cidrs,
    ), opts)

    backups = PrivateBucket("backups", PrivateBucketArgs(
        purpose="database-backups",
        kms_key_arn=data_key.arn,
        expire_prefix=BACKUP_PREFIX,
        expire_days=cfg.backup_retention_days,
        noncurrent_version_days=cfg.backup_noncurrent_version_days,
        # The host that writes backups can add, never delete or replace, within the retention.
        object_lock_days=cfg.backup_retention_days,
    ), opts)
    access_logs = PrivateBucket("access-logs", PrivateBucketArgs(
        purpose="load-balancer-access-logs",
        kms_key_arn=None,
        # Everything in it is a log: the load balancer's and the backups bucket's.
        expire_prefix="",
        expire_days=cfg.access_log_retention_days,
        noncurrent_version_days=cfg.backup_noncurrent_version_days,
        extra_policy_statements=[
            *access_log_delivery_statements(account_id, elb_account.arn),
            *server_access_log_delivery_statements(account_id, backups.arn, BACKUPS_ACCESS_LOG_PREFIX)],
    ), opts)
    backups.log_access_to(access_logs.name, BACKUPS_ACCESS_LOG_PREFIX, ready=[access_logs])

    app_secrets = AppSecrets("secrets", AppSecretsArgs(
        kms_key_arn=data_key.arn,
        recovery_window_days=cfg.secret_recovery_window_days,
        integration_values=secrets.values,
        smtp_settings={k: v for k, v in {
            "EMAIL_HOST": cfg.smtp_host, "EMAIL_PORT": str(cfg.smtp_port) if cfg.smtp_host else "",
            "EMAIL_HOST_USER": cfg.smtp_user, "DEFAULT_FROM_EMAIL": cfg.email_from}.items() if v},
    ), opts)

    # --- data tier: PostgreSQL and Redis (each needs only the network, its group and the key) --
    database = Database("postgres", DatabaseArgs(
        engine_version=cfg.db_engine_version,
        parameter_group_family=cfg.db_parameter_group_family,
        instance_class=cfg.db_instance_class,
        allocated_storage_gb=cfg.db_allocated_storage_gb,
        max_allocated_storage_gb=cfg.db_max_allocated_storage_gb,
        multi_az=cfg.db_multi_az,
        db_name=cfg.db_name,
        subnet_group_name=network.db_subnet_group_name,
        security_group_id=security.ids["database"],
        kms_key_arn=data_key.arn,
        backup_retention_days=cfg.db_backup_retention_days,
        deletion_protection=cfg.deletion_protection,
        apply_immediately=not cfg.is_prod,
        performance_insights_retention_days=cfg.db_performance_insights_retention_days,
        monitoring_interval_seconds=cfg.db_monitoring_interval_seconds,
        log_retention_days=cfg.data_log_retention_days,
        account_id=account_id,
    ), opts)
    cache = Cache("redis", CacheArgs(
        engine_version=cfg.redis_engine_version,
        parameter_group_family=cfg.redis_parameter_group_family,
        node_type=cfg.redis_node_type,
        num_nodes=cfg.redis_num_nodes,
        availability_zones=azs,
        subnet_group_name=network.cache_subnet_group_name,
        security_group_id=security.ids["redis"],
        kms_key_arn=data_key.arn,
        snapshot_retention_days=cfg.redis_snapshot_retention_days,
        apply_immediately=not cfg.is_prod,
        final_snapshot=cfg.deletion_protection,
        secret_recovery_window_days=cfg.secret_recovery_window_days,
        log_retention_days=cfg.data_log_retention_days,
    ), opts)

    # --- database operations: in-VPC functions (migrate, health, rotation), the app's and the
    # monitoring role's credentials; they and the Redis token rotate every secretRotationDays ---
    dbops = DbOps("dbops", DbOpsArgs(
        region=cfg.region,
        account_id=account_id,
        kms_key_arn=data_key.arn,
        private_subnet_ids=network.private_subnet_ids,
        security_group_id=security.ids["dbops"],
        master_secret_arn=database.master_secret_arn,
        db_host=database.endpoint,
        db_port=database.port,
        db_name=cfg.db_name,
        redis_secret_arn=cache.secret_arn,
        redis_replication_group_id=cache.replication_group_id,
        redis_replication_group_arn=cache.arn,
        redis_host=cache.primary_endpoint,
        redis_port=cache.port,
        rotation_days=cfg.secret_rotation_days,
        recovery_window_days=cfg.secret_recovery_window_days,
        log_retention_days=cfg.data_log_retention_days,
        migration_lock_timeout_seconds=cfg.migration_lock_timeout_seconds,
        migration_lock_attempts=cfg.migration_lock_attempts,
        migration_statement_timeout_seconds=cfg.migration_statement_timeout_seconds,
        network_ready=[network, security],
    ), opts)

    # --- release, first half: snapshot (prod), then migrations; hosts of the release wait ---
    hosts_start_after: list[pulumi.Resource] = [dbops.bootstrap]
    migrations = None
    if cfg.release_steps:
        migrations = ReleaseMigrations("release", ReleaseMigrationsArgs(
            region=cfg.region,
            migrate_function_name=dbops.migrate_function_name,
            package_sha256=dbops.package_sha256,
            app_version=cfg.app_version,
            pre_migration_snapshot=cfg.pre_migration_snapshot,
            db_instance_identifier=database.identifier,
            depends_on=[dbops.bootstrap],
        ), opts)
        hosts_start_after = [migrations.migrations]

    # --- compute: load balancer and API hosts (docs/architecture.md#compute-tier) ---
    alb = LoadBalancer("alb", LoadBalancerArgs(
        vpc_id=network.vpc_id,
        public_subnet_ids=network.public_subnet_ids,
        security_group_id=security.ids["alb"],
        access_log_bucket=access_logs.name,
        access_log_prefix=ACCESS_LOG_PREFIX,
        access_log_bucket_ready=[access_logs],
        app_port=cfg.app_port,
        health_check_path=cfg.health_check_path,
        ssl_policy=cfg.ssl_policy,
        deletion_protection=cfg.deletion_protection,
        maintenance=cfg.maintenance,
        certificate_arn=cfg.certificate_arn,
        domain_name=cfg.domain_name,
        hosted_zone_id=cfg.hosted_zone_id,
        allow_http_only=cfg.allow_http_only,
    ), opts)
    # The web ACL in front of the load balancer (docs/architecture.md#web-application-firewall).
    waf = None
    if cfg.waf_enabled:
        waf = WebFirewall("waf", WebFirewallArgs(
            load_balancer_arn=alb.arn,
            region=cfg.region,
            account_id=account_id,
            kms_key_arn=data_key.arn,
            rate_limit=cfg.waf_rate_limit,
            mode=cfg.waf_mode,
            log_retention_days=cfg.waf_log_retention_days,
        ), opts)
    ami = amazon_linux_2023_ami(invoke)
    api = ApiHosts("api", ApiHostsArgs(
        ami_id=ami.id,
        root_device_name=ami.root_device_name,
        instance_type=cfg.api_instance_type,
        root_volume_gb=cfg.api_root_volume_gb,
        kms_key_arn=data_key.arn,
        private_subnet_ids=network.private_subnet_ids,
        security_group_id=security.ids["api"],
        target_group_arn=alb.target_group_arn,
        min_size=cfg.api_min_size,
        max_size=cfg.api_max_size,
        desired_capacity=cfg.api_desired_capacity,
        cpu_target_percent=cfg.api_cpu_target_percent,
        refresh_max_healthy_percent=refresh_max_healthy_percent(cfg.api_max_size, cfg.api_instance_type,
                                                                max_connections()),
        environment=cfg.environment,
        region=cfg.region,
        vpc_cidr=cfg.vpc_cidr,
        app_port=cfg.app_port,
        health_check_path=cfg.health_check_path,
        app_version=cfg.app_version,
        artifact_bucket=cfg.app_artifact_bucket,
        artifact_key=cfg.app_artifact_key,
        public_host=alb.public_host,
        tags=default_tags(cfg.environment),
        app_secret_arn=app_secrets.app_secret_arn,
        integration_secret_arns=app_secrets.integration_secret_arns,
        database_secret_arn=dbops.app_db_secret_arn,
        redis_secret_arn=cache.secret_arn,
        start_after=hosts_start_after,
    ), opts)

    # --- release, second half: once the hosts are healthy behind the load balancer ---------
    smoke = None
    if cfg.release_steps:
        smoke = ReleaseSmokeTests("release-smoke", ReleaseSmokeTestsArgs(
            region=cfg.region,
            api_url=alb.url,
            health_function_name=dbops.health_function_name,
            target_group_arn=alb.target_group_arn,
            autoscaling_group_name=api.asg_name,
            app_version=cfg.app_version,
            package_sha256=dbops.package_sha256,
            maintenance=cfg.maintenance,
            release_triggers=[api.launch_template_latest_version],
            launch_template_version=api.launch_template_latest_version,
            depends_on=[api, *hosts_start_after],
        ), opts)

    # --- monitoring: the host (Prometheus, Alertmanager, Grafana, backups) and CloudWatch alarms ---
    alerts = AlertsTopic("alerts", AlertsTopicArgs(
        kms_key_arn=data_key.arn, account_id=account_id, region=cfg.region, alarm_email=cfg.alarm_email), opts)
    monitoring = MonitoringHost("monitoring", MonitoringHostArgs(
        subnet_id=network.private_subnet_ids[0],
        availability_zone=azs[0],
        security_group_id=security.ids["monitoring"],
        ami_id=ami.id,
        account_id=account_id,
        region=cfg.region,
        environment=cfg.environment,
        kms_key_arn=data_key.arn,
        backup_bucket_name=backups.name,
        backup_bucket_arn=backups.arn,
        alerts_topic_arn=alerts.arn,
        db_address=database.endpoint,
        db_name=cfg.db_name,
        db_backup_secret_arn=dbops.backup_db_secret_arn,
        db_drill_secret_arn=dbops.drill_db_secret_arn,
        public_url=alb.url,
        https=cfg.https_enabled,
        instance_type=cfg.monitoring_instance_type,
        volume_gb=cfg.monitoring_volume_gb,
        backup_schedule=cfg.backup_schedule,
        restore_drill_schedule=cfg.restore_drill_schedule,
        secret_recovery_window_days=cfg.secret_recovery_window_days,
        health_check_path=cfg.health_check_path,
        postgres_major_version=cfg.db_major_version,
        redis_secret_arn=cache.secret_arn,
        db_monitor_secret_arn=dbops.monitor_db_secret_arn,
        alert_webhook_url=secrets.get("alertWebhookUrl"),
        pagerduty_routing_key=secrets.get("pagerdutyRoutingKey"),
        final_snapshot=cfg.deletion_protection,
        network_ready=[network, security],
    ), opts)
    # The generated secrets rotate too, once both exist (docs/runbooks/rotation.md).
    dbops.rotate_generated_secrets(
        {"django-secret-key": app_secrets.app_secret_arn, "grafana-admin": monitoring.grafana_admin_secret_arn},
        after=[app_secrets, monitoring.grafana_admin_secret_version])
    dbops.watch_rotations()
    CloudWatchAlarms("alarms", CloudWatchAlarmsArgs(
        alerts_topic_arn=alerts.arn,
        region=cfg.region,
        alb_arn_suffix=alb.arn_suffix,
        target_group_arn_suffix=alb.target_group_arn_suffix,
        asg_name=api.asg_name,
        db_instance_identifier=database.identifier,
        db_allocated_storage_gb=cfg.db_allocated_storage_gb,
        redis_replication_group_id=cache.replication_group_id,
        redis_num_nodes=cfg.redis_num_nodes,
        monitoring_instance_id=monitoring.instance_id,
        maintenance=cfg.maintenance,
        rotation_function_names=dbops.rotation_function_names,
        rotation_metric_namespace=dbops.rotation_metric_namespace,
        waf_web_acl_name=waf.web_acl_name if waf is not None else None,
        waf_mode=cfg.waf_mode,
    ), opts)

    security_group_ids = dict(security.ids)
    if network.endpoint_security_group_id is not None:
        security_group_ids["endpoints"] = network.endpoint_security_group_id

    # --- the output contract (docs/outputs.md) -----------------------------------------
    pulumi.export("environment", cfg.environment)
    pulumi.export("region", cfg.region)
    pulumi.export("availability_zones", azs)
    pulumi.export("vpc_id", network.vpc_id)
    pulumi.export("vpc_cidr", cfg.vpc_cidr)
    pulumi.export("public_subnet_ids", network.public_subnet_ids)
    pulumi.export("private_subnet_ids", network.private_subnet_ids)
    pulumi.export("database_subnet_ids", network.database_subnet_ids)
    pulumi.export("nat_public_ips", network.nat_public_ips)
    pulumi.export("security_group_ids", security_group_ids)
    pulumi.export("kms_key_arn", data_key.arn)
    pulumi.export("backup_bucket_name", backups.name)
    pulumi.export("access_log_bucket_name", access_logs.name)
    pulumi.export("flow_log_group_name", network.flow_log_group_name)
    pulumi.export("app_secret_arn", app_secrets.app_secret_arn)
    pulumi.export("integration_secret_arns", app_secrets.integration_secret_arns)
    pulumi.export("db_endpoint", database.endpoint)
    pulumi.export("db_port", database.port)
    pulumi.export("db_name", database.db_name)
    pulumi.export("db_identifier", database.identifier)
    pulumi.export("db_master_secret_arn", database.master_secret_arn)
    pulumi.export("redis_endpoint", cache.primary_endpoint)
    pulumi.export("redis_port", cache.port)
    pulumi.export("redis_replication_group_id", cache.replication_group_id)
    pulumi.export("redis_secret_arn", cache.secret_arn)
    pulumi.export("api_url", alb.url)
    pulumi.export("alb_dns_name", alb.dns_name)
    pulumi.export("alb_zone_id", alb.zone_id)
    pulumi.export("alb_arn_suffix", alb.arn_suffix)
    if waf is not None:
        pulumi.export("waf_web_acl_arn", waf.web_acl_arn)
        pulumi.export("waf_log_group_name", waf.log_group_name)
    pulumi.export("target_group_arn", alb.target_group_arn)
    pulumi.export("target_group_arn_suffix", alb.target_group_arn_suffix)
    pulumi.export("asg_name", api.asg_name)
    pulumi.export("api_role_name", api.role_name)
    pulumi.export("maintenance_mode", cfg.maintenance)
    pulumi.export("monitoring_instance_id", monitoring.instance_id)
    pulumi.export("grafana_url", monitoring.grafana_url)
    pulumi.export("grafana_admin_secret_arn", monitoring.grafana_admin_secret_arn)
    pulumi.export("alerts_topic_arn", alerts.arn)
    pulumi.export("db_app_secret_arn", dbops.app_db_secret_arn)
    pulumi.export("db_backup_secret_arn", dbops.backup_db_secret_arn)
    pulumi.export("db_drill_secret_arn", dbops.drill_db_secret_arn)
    pulumi.export("db_monitor_secret_arn", dbops.monitor_db_secret_arn)
    pulumi.export("dbops_function_names", dbops.function_names)
    if migrations is not None:
        pulumi.export("pre_migration_snapshot_id", migrations.snapshot_id)
    if smoke is not None:
        pulumi.export("smoke_test_report", smoke.report)
