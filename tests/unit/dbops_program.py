"""A program for the unit tests of the database-operations and release components.

It builds what those components need from the foundation (data key, network, security groups)
as infra/program.py does, and stands in for what other parts build (the RDS instance and its
master secret, the Redis secret, the load balancer and the API hosts) with plain values and a
placeholder resource, until the lead wires everything in infra/program.py.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.dbops import DbOps, DbOpsArgs
from components.encryption import DataKey, DataKeyArgs
from components.network import Network, NetworkArgs
from components.release import ReleaseMigrations, ReleaseMigrationsArgs, ReleaseSmokeTests, ReleaseSmokeTestsArgs
from components.security import SecurityGroups, SecurityGroupsArgs
from infra.config import load_stack_config
from infra.mock_engine import MOCK_ACCOUNT_ID
from infra.program import default_tags

DB_HOST = "psychology-api-db.c0abcdefghij.eu-central-1.rds.amazonaws.com"


def master_secret_arn(region: str) -> str:
    return f"arn:aws:secretsmanager:{region}:{MOCK_ACCOUNT_ID}:secret:rds!db-4f1c2d3e-aaaa-bbbb-cccc-0123456789ab-AbCdEf"


def redis_secret_arn(region: str, stack: str) -> str:
    return f"arn:aws:secretsmanager:{region}:{MOCK_ACCOUNT_ID}:secret:psychology-api/{stack}/redis-AbCdEf"


def program() -> None:
    cfg, _ = load_stack_config()
    provider = aws.Provider("aws", aws.ProviderArgs(
        region=cfg.region, default_tags=aws.ProviderDefaultTagsArgs(tags=default_tags(cfg.environment))))
    opts = pulumi.ResourceOptions(providers={"aws": provider})
    azs = [f"{cfg.region}{s}" for s in "abc"][: cfg.az_count]

    data_key = DataKey("data", DataKeyArgs(account_id=MOCK_ACCOUNT_ID, region=cfg.region,
                                           deletion_window_days=cfg.kms_deletion_window_days), opts)
    network = Network("network", NetworkArgs(
        vpc_cidr=cfg.vpc_cidr, availability_zones=azs, public_subnet_cidrs=cfg.public_subnet_cidrs,
        private_subnet_cidrs=cfg.private_subnet_cidrs, database_subnet_cidrs=cfg.database_subnet_cidrs,
        nat_gateway_per_az=cfg.nat_gateway_per_az, interface_endpoints=cfg.interface_endpoints,
        flow_log_retention_days=cfg.flow_log_retention_days, flow_log_kms_key_arn=data_key.arn,
        region=cfg.region, account_id=MOCK_ACCOUNT_ID), opts)
    security = SecurityGroups("sg", SecurityGroupsArgs(
        vpc_id=network.vpc_id, vpc_cidr=cfg.vpc_cidr, app_port=cfg.app_port,
        admin_cidrs=cfg.admin_cidrs, ssh_cidrs=cfg.ssh_cidrs), opts)

    # Stand-ins for the data part (RDS, Redis) and the compute part (load balancer, hosts).
    master_secret = pulumi.Output.from_input(master_secret_arn(cfg.region))
    db_instance_identifier = pulumi.Output.from_input(f"psychology-api-{cfg.environment}-db")
    redis_secret = pulumi.Output.from_input(redis_secret_arn(cfg.region, cfg.environment))
    api_url = pulumi.Output.from_input(f"https://{cfg.domain_name}" if cfg.https_enabled
                                       else "http://psychology-api-alb-1234567890.eu-central-1.elb.amazonaws.com")
    target_group_arn = pulumi.Output.from_input(
        f"arn:aws:elasticloadbalancing:{cfg.region}:{MOCK_ACCOUNT_ID}:targetgroup/psychology-api-api/0123456789abcdef")
    asg_name = pulumi.Output.from_input(f"psychology-api-{cfg.environment}-api")

    dbops = DbOps("dbops", DbOpsArgs(
        region=cfg.region, account_id=MOCK_ACCOUNT_ID, kms_key_arn=data_key.arn,
        private_subnet_ids=network.private_subnet_ids, security_group_id=security.ids["dbops"],
        master_secret_arn=master_secret, db_host=DB_HOST, db_port=5432, db_name=cfg.db_name,
        redis_secret_arn=redis_secret, rotation_days=cfg.secret_rotation_days,
        recovery_window_days=cfg.secret_recovery_window_days), opts)
    pulumi.export("db_app_secret_arn", dbops.app_db_secret_arn)
    pulumi.export("db_monitor_secret_arn", dbops.monitor_db_secret_arn)
    pulumi.export("dbops_function_names", dbops.function_names)

    if not cfg.release_steps:
        return
    migrations = ReleaseMigrations("release", ReleaseMigrationsArgs(
        region=cfg.region, migrate_function_name=dbops.migrate_function_name, package_sha256=dbops.package_sha256,
        app_version=cfg.app_version, pre_migration_snapshot=cfg.is_prod and cfg.pre_migration_snapshot,
        db_instance_identifier=db_instance_identifier, depends_on=[dbops.bootstrap]), opts)
    # The API hosts (the compute part's Auto Scaling group) start after the migrations.
    hosts = random.RandomId("api-hosts-standin", random.RandomIdArgs(byte_length=4, keepers={"app": cfg.app_version}),
                            pulumi.ResourceOptions(depends_on=[migrations.migrations]))
    smoke = ReleaseSmokeTests("release-smoke", ReleaseSmokeTestsArgs(
        region=cfg.region, api_url=api_url, health_function_name=dbops.health_function_name,
        target_group_arn=target_group_arn, autoscaling_group_name=asg_name, app_version=cfg.app_version,
        package_sha256=dbops.package_sha256, maintenance=cfg.maintenance, release_triggers=[hosts.hex],
        depends_on=[hosts, migrations.migrations]), opts)
    pulumi.export("smoke_test_report", smoke.report)
    pulumi.export("pre_migration_snapshot_id", migrations.snapshot_id)
