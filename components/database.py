"""RDS PostgreSQL in the isolated database subnets (spec 3.2.2).

Encrypted with the data key, reachable only from the database security group's clients, TLS
only, master credentials kept by RDS in Secrets Manager (no password in config or state),
automated backups at the spec's 02:00 Moscow time, Performance Insights, enhanced monitoring
and the PostgreSQL/upgrade logs in CloudWatch Logs under the data key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.common import assume_role_policy, name_tag, physical_prefix, type_token
from components.postgres_parameters import PARAMETERS

POSTGRES_PORT = 5432
MASTER_USERNAME = "psychology_admin"
# Spec 3.8: the daily backup runs at 02:00 Moscow time. Moscow is UTC+3 all year (no DST
# since 2014), so the automated-backup window starts at 23:00 UTC (the previous UTC day).
BACKUP_WINDOW = "23:00-23:30"
# Sunday 03:30-04:30 Moscow: after the backup window has closed, at the quietest hour of
# the week, and apart from Redis's maintenance window so both never fail over together.
MAINTENANCE_WINDOW = "sun:00:30-sun:01:30"
# The current RSA 2048 CA; clients verify the server against the regional RDS bundle.
CA_CERT_IDENTIFIER = "rds-ca-rsa2048-g1"
LOG_EXPORTS = ("postgresql", "upgrade")
ENHANCED_MONITORING_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"


@dataclass
class DatabaseArgs:
    engine_version: str                      # config dbEngineVersion: a major ("16") or a minor ("16.8")
    parameter_group_family: str              # e.g. "postgres16"; must match the major
    instance_class: str                      # config dbInstanceClass, e.g. "db.m6g.xlarge"
    allocated_storage_gb: int                # config dbAllocatedStorageGb: storage at creation (GiB)
    max_allocated_storage_gb: int            # config dbMaxAllocatedStorageGb: storage autoscaling ceiling (GiB)
    multi_az: bool                           # config dbMultiAz: a standby in another AZ
    db_name: str                             # config dbName: the database created with the instance
    subnet_group_name: pulumi.Input[str]     # Network.db_subnet_group_name: the isolated database subnets
    security_group_id: pulumi.Input[str]     # SecurityGroups.ids["database"]
    kms_key_arn: pulumi.Input[str]           # DataKey.arn: storage, master secret, Performance Insights, logs
    backup_retention_days: int               # config dbBackupRetentionDays: days automated backups are kept
    # Deletion protection, a final snapshot and automated backups kept after deletion.
    deletion_protection: bool
    apply_immediately: bool                  # changes now (staging) or in the maintenance window (prod)
    performance_insights_retention_days: int  # config dbPerformanceInsightsRetentionDays (days: 7, 31 * n, or 731)
    monitoring_interval_seconds: int         # config dbMonitoringIntervalSeconds: 0 disables enhanced monitoring
    log_retention_days: int                  # config dataLogRetentionDays: days the PostgreSQL logs are kept
    account_id: str                          # this account's id: the monitoring role's confused-deputy guard
    master_username: str = MASTER_USERNAME   # RDS keeps its password in Secrets Manager
    iam_database_authentication: bool = False  # IAM tokens as database passwords (not used by the app)
    # A major upgrade is a reviewed, one-release change: True together with the new major in
    # dbEngineVersion (which also brings a parameter group of the new family), then back to False.
    allow_major_version_upgrade: bool = False


class Database(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]
    port: pulumi.Output[int]
    db_name: pulumi.Output[str]
    identifier: pulumi.Output[str]
    arn: pulumi.Output[str]
    resource_id: pulumi.Output[str]
    master_secret_arn: pulumi.Output[str]
    master_username: pulumi.Output[str]
    parameter_group_name: pulumi.Output[str]
    log_group_names: list[pulumi.Output[str]]

    def __init__(self, name: str, args: DatabaseArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("database", "Database"), name, None, opts)
        major = args.engine_version.split(".")[0]
        if args.parameter_group_family != f"postgres{major}":
            raise ValueError(f"parameter group family {args.parameter_group_family} does not match "
                             f"PostgreSQL {args.engine_version}")
        identifier = f"{physical_prefix()}-postgres"
        parameter_group = self._parameter_group(name, args)
        log_groups = self._log_groups(name, identifier, args)
        monitoring_role_arn = self._monitoring_role(name, args) if args.monitoring_interval_seconds > 0 else None
        instance = self._instance(name, identifier, args, parameter_group, log_groups, monitoring_role_arn)

        self.endpoint = instance.address
        self.port = instance.port
        self.db_name = instance.db_name
        self.identifier = instance.identifier
        self.arn = instance.arn
        self.resource_id = instance.resource_id
        self.master_secret_arn = instance.master_user_secrets.apply(_first_secret_arn)
        self.master_username = instance.username
        self.parameter_group_name = parameter_group.name
        self.log_group_names = [group.name for group in log_groups]
        self.register_outputs({
            "endpoint": self.endpoint,
            "port": self.port,
            "db_name": self.db_name,
            "identifier": self.identifier,
            "arn": self.arn,
            "resource_id": self.resource_id,
            "master_secret_arn": self.master_secret_arn,
            "master_username": self.master_username,
            "parameter_group_name": self.parameter_group_name,
            "log_group_names": self.log_group_names,
        })

    def _parameter_group(self, name: str, args: DatabaseArgs) -> aws.rds.ParameterGroup:
        return aws.rds.ParameterGroup(f"{name}-params", aws.rds.ParameterGroupArgs(
            # A prefix, not a name: a new major version needs a new group created before the
            # old one is deleted.
            name_prefix=f"{physical_prefix()}-{args.parameter_group_family}-",
            family=args.parameter_group_family,
            description="psychology-api PostgreSQL settings (spec 3.2.2, TLS only, slow-query logging)",
            parameters=[aws.rds.ParameterGroupParameterArgs(name=p.name, value=p.value, apply_method=p.apply_method)
                        for p in PARAMETERS],
            tags=name_tag("postgres-params"),
        ), pulumi.ResourceOptions(parent=self))

    def _log_groups(self, name: str, identifier: str, args: DatabaseArgs) -> list[aws.cloudwatch.LogGroup]:
        """RDS would create these on first export, unencrypted and kept forever. Created here
        first, they carry the data key (statement logs may contain personal data) and a retention."""
        return [
            aws.cloudwatch.LogGroup(f"{name}-log-{kind}", aws.cloudwatch.LogGroupArgs(
                name=f"/aws/rds/instance/{identifier}/{kind}",
                retention_in_days=args.log_retention_days,
                kms_key_id=args.kms_key_arn,
                tags=name_tag(f"postgres-{kind}-log"),
            ), pulumi.ResourceOptions(parent=self))
            for kind in LOG_EXPORTS
        ]

    def _monitoring_role(self, name: str, args: DatabaseArgs) -> pulumi.Output[str]:
        """The enhanced-monitoring role's ARN, known once its policy is attached."""
        child = pulumi.ResourceOptions(parent=self)
        monitoring_role = aws.iam.Role(f"{name}-monitoring-role", aws.iam.RoleArgs(
            description="Lets RDS enhanced monitoring publish OS metrics of the PostgreSQL instance",
            assume_role_policy=assume_role_policy("monitoring.rds.amazonaws.com", args.account_id),
            tags=name_tag("postgres-monitoring-role"),
        ), child)
        attachment = aws.iam.RolePolicyAttachment(f"{name}-monitoring-policy", aws.iam.RolePolicyAttachmentArgs(
            role=monitoring_role.name, policy_arn=ENHANCED_MONITORING_POLICY), child)
        # The instance must not start before the role can actually be used.
        return pulumi.Output.all(monitoring_role.arn, attachment.id).apply(lambda v: str(v[0]))

    def _instance(self, name: str, identifier: str, args: DatabaseArgs, parameter_group: aws.rds.ParameterGroup,
                  log_groups: Sequence[aws.cloudwatch.LogGroup],
                  monitoring_role_arn: Optional[pulumi.Output[str]]) -> aws.rds.Instance:
        return aws.rds.Instance(f"{name}-instance", aws.rds.InstanceArgs(
            identifier=identifier,
            engine="postgres",
            engine_version=args.engine_version,
            # With a major version only, RDS picks the newest minor and keeps it current.
            auto_minor_version_upgrade=True,
            allow_major_version_upgrade=args.allow_major_version_upgrade,
            instance_class=args.instance_class,
            storage_type="gp3",
            allocated_storage=args.allocated_storage_gb,
            max_allocated_storage=args.max_allocated_storage_gb,
            storage_encrypted=True,
            kms_key_id=args.kms_key_arn,
            multi_az=args.multi_az,
            db_subnet_group_name=args.subnet_group_name,
            vpc_security_group_ids=[args.security_group_id],
            publicly_accessible=False,
            port=POSTGRES_PORT,
            network_type="IPV4",
            ca_cert_identifier=CA_CERT_IDENTIFIER,
            db_name=args.db_name,
            username=args.master_username,
            manage_master_user_password=True,
            master_user_secret_kms_key_id=args.kms_key_arn,
            iam_database_authentication_enabled=args.iam_database_authentication,
            parameter_group_name=parameter_group.name,
            backup_retention_period=args.backup_retention_days,
            backup_window=BACKUP_WINDOW,
            maintenance_window=MAINTENANCE_WINDOW,
            copy_tags_to_snapshot=True,
            deletion_protection=args.deletion_protection,
            skip_final_snapshot=not args.deletion_protection,
            final_snapshot_identifier=f"{identifier}-final" if args.deletion_protection else None,
            delete_automated_backups=not args.deletion_protection,
            apply_immediately=args.apply_immediately,
            performance_insights_enabled=True,
            performance_insights_kms_key_id=args.kms_key_arn,
            performance_insights_retention_period=args.performance_insights_retention_days,
            monitoring_interval=args.monitoring_interval_seconds,
            monitoring_role_arn=monitoring_role_arn,
            enabled_cloudwatch_logs_exports=list(LOG_EXPORTS),
            tags=name_tag("postgres"),
        ), pulumi.ResourceOptions(parent=self, depends_on=list(log_groups)))


def _first_secret_arn(secrets: Optional[Sequence[aws.rds.outputs.InstanceMasterUserSecret]]) -> str:
    """The ARN of the RDS-managed master secret. With manage_master_user_password there is
    exactly one once the instance exists; an empty list means RDS did not create it."""
    arn = secrets[0].secret_arn if secrets else None
    if not arn:
        raise ValueError("RDS reported no master user secret although manage_master_user_password is set")
    return arn
