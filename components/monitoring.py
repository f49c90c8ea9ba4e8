"""The monitoring host: Prometheus, Alertmanager, Grafana and the exporters on one EC2 instance
in a private subnet, plus the nightly backup and the monthly restore drill (systemd timers).

The instance is disposable; its state is not. Prometheus' TSDB, Alertmanager's silences,
Grafana's database and the backup metrics live on a separate encrypted EBS volume that a
replacement instance re-attaches. That is what makes `user_data_replace_on_change` the right
choice: cloud-init applies user data once per instance, so an in-place change would leave
the running host on the old configuration; replacing it makes every configuration change
(and every change of the operations bundle, whose SHA-256 is in the user data) take effect,
and loses no history. The user data carries only the boot script and the bundle's installer;
the bundle, rendered per stack, carries every other file the host runs.

Secrets never travel in user data: the host reads them at boot with its own role, by ARN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.common import assume_role_policy, joined, name_tag, physical_prefix, policy_json, type_token
from components.monitoring_render import (
    CLOUDWATCH_NAMESPACE,
    MonitoringSettings,
    bundle_key,
    ops_bundle,
    user_data_base64,
)
from components.storage import BACKUP_PREFIX

GRAFANA_PORT = 3000
ROOT_VOLUME_GB = 20
DATA_DEVICE_NAME = "/dev/sdf"
SSM_CORE_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


@dataclass
class MonitoringHostArgs:
    # Placement and access.
    subnet_id: pulumi.Input[str]                 # one private subnet
    availability_zone: str                       # the subnet's AZ (the data volume must match)
    security_group_id: pulumi.Input[str]         # SecurityGroups.ids["monitoring"]
    ami_id: pulumi.Input[str]                    # components.ami.amazon_linux_2023_ami, the one lookup
    account_id: str                              # this account's id (not read by the component at present)
    region: str                                  # AWS region (config aws:region): the host's AWS clients
    environment: str                             # config environment: labels on every metric and alert
    # Encryption, storage, alerting.
    kms_key_arn: pulumi.Input[str]               # DataKey.arn: data and root volumes, secrets, the bundle object
    backup_bucket_name: pulumi.Input[str]        # the backups PrivateBucket's name: backups and the ops bundle
    backup_bucket_arn: pulumi.Input[str]         # the same bucket's ARN (the role's S3 grants)
    alerts_topic_arn: pulumi.Input[str]          # AlertsTopic.arn: Alertmanager's fallback receiver
    # The database to watch and back up (from the data part).
    db_address: pulumi.Input[str]                # Database.endpoint (host name)
    db_name: str                                 # config dbName: the database backed up and drilled
    # The host's own database logins (components/dbops.py): never the RDS master's secret.
    db_backup_secret_arn: pulumi.Input[str]      # psychology-api/<stack>/database/backup (pg_read_all_data)
    db_drill_secret_arn: pulumi.Input[str]       # psychology-api/<stack>/database/drill (CREATEDB)
    # What Prometheus probes from outside: "https://api.example.com" or "http://<alb dns>".
    public_url: pulumi.Input[str]
    https: bool                                  # the stack serves HTTPS; False opens port 80 out for the probes
    # Sizes and schedules (config).
    instance_type: str                           # config monitoringInstanceType, e.g. "t3.large"
    volume_gb: int                               # config monitoringVolumeGb: the data volume (GiB)
    backup_schedule: str                         # config backupSchedule: systemd OnCalendar of the nightly backup
    restore_drill_schedule: str                  # config restoreDrillSchedule: systemd OnCalendar of the restore drill
    secret_recovery_window_days: int             # config secretRecoveryWindowDays: days a deleted secret can be restored
    health_check_path: str = "/health/"          # config healthCheckPath: probed on the public URL too
    db_port: int = 5432                          # PostgreSQL's TCP port
    postgres_major_version: int = 16             # major of config dbEngineVersion: the pg_dump/psql client installed
    # Optional inputs from other parts: without them the matching exporter stays off.
    db_monitor_secret_arn: Optional[pulumi.Input[str]] = None   # psychology-api/<stack>/database/monitor
    redis_secret_arn: Optional[pulumi.Input[str]] = None        # {"host","port","auth_token","tls"}
    # Optional alert channels (secret config); without them Alertmanager sends to SNS.
    alert_webhook_url: Optional[pulumi.Input[str]] = None       # config alertWebhookUrl (secret): chat webhook
    pagerduty_routing_key: Optional[pulumi.Input[str]] = None   # config pagerdutyRoutingKey (secret): critical alerts
    # Keep a snapshot of the data volume when the stack is destroyed (prod).
    final_snapshot: bool = False
    # The host's network path: its security group's rules, the NAT routes, the VPC endpoints
    # (pass the Network and SecurityGroups components: depending on a component waits for
    # all its children). The boot script downloads the bundle, reads secrets and installs
    # packages at once, so on a first `up` it must not start before the path exists.
    network_ready: Sequence[pulumi.Resource] = ()


class MonitoringHost(pulumi.ComponentResource):
    instance_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    data_volume_id: pulumi.Output[str]
    grafana_admin_secret_arn: pulumi.Output[str]
    grafana_admin_secret_version: pulumi.Resource  # the first value; rotation waits for it
    alerting_secret_arn: Optional[pulumi.Output[str]]
    grafana_url: pulumi.Output[str]
    bundle_key: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringHostArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("monitoring", "MonitoringHost"), name, None, opts)
        # Secrets the host reads at boot.
        grafana_secret, grafana_version = self._grafana_secret(name, args)
        alerting = self._alerting_secret(name, args)
        alerting_arn = alerting[0].arn if alerting is not None else None
        secret_versions: list[pulumi.Resource] = [grafana_version, *([alerting[1]] if alerting is not None else [])]
        data_volume = self._data_volume(name, args)
        # What the host runs: rendered from ids and ARNs, never from a secret value.
        settings = host_settings(args, grafana_secret_name(), grafana_secret.arn, alerting_arn, data_volume.id)
        bundle = self._ops_bundle(name, args, settings)
        role, profile, permissions = self._identity(name, args,
                                                    readable_secret_arns(args, grafana_secret.arn, alerting_arn))
        if not args.https:
            self._probe_http_egress(name, args)
        instance = self._instance(name, args, settings, profile,
                                  # The boot script uses its permissions and its network path to read the
                                  # bundle and the secrets' values: all of them must exist before it runs.
                                  depends_on=[bundle, *permissions, *secret_versions, *args.network_ready])
        self._attach_data_volume(name, instance, data_volume)

        self.instance_id = instance.id
        self.private_ip = instance.private_ip
        self.role_arn = role.arn
        self.data_volume_id = data_volume.id
        self.grafana_admin_secret_arn = grafana_secret.arn
        self.grafana_admin_secret_version = grafana_version
        self.alerting_secret_arn = alerting_arn
        self.grafana_url = pulumi.Output.concat(
            f"http://localhost:{GRAFANA_PORT} after: aws ssm start-session --region {args.region} --target ",
            instance.id,
            f" --document-name AWS-StartPortForwardingSession --parameters portNumber={GRAFANA_PORT},localPortNumber={GRAFANA_PORT}")
        self.register_outputs({
            "instance_id": self.instance_id, "private_ip": self.private_ip, "role_arn": self.role_arn,
            "data_volume_id": self.data_volume_id, "grafana_admin_secret_arn": self.grafana_admin_secret_arn,
            "grafana_url": self.grafana_url, "bundle_key": self.bundle_key,
        })

    def _grafana_secret(self, name: str, args: MonitoringHostArgs) -> tuple[aws.secretsmanager.Secret,
                                                                           aws.secretsmanager.SecretVersion]:
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-grafana-admin-password", random.RandomPasswordArgs(
            length=32, special=False), child)
        secret = aws.secretsmanager.Secret(f"{name}-grafana", aws.secretsmanager.SecretArgs(
            name=grafana_secret_name(),
            description="Grafana admin credentials of the monitoring host (generated; rotated, applied by the host hourly)",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=args.secret_recovery_window_days,
            tags=name_tag("grafana-secret", {"secret-kind": "operator"})), child)
        version = aws.secretsmanager.SecretVersion(f"{name}-grafana-value", aws.secretsmanager.SecretVersionArgs(
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(
                {"admin_user": "admin", "admin_password": password.result}))),
            # The rotation function owns the value after the first version (DbOps.rotate_generated_secrets).
            pulumi.ResourceOptions(parent=self, ignore_changes=["secret_string", "version_stages"]))
        return secret, version

    def _alerting_secret(self, name: str, args: MonitoringHostArgs) -> Optional[tuple[aws.secretsmanager.Secret,
                                                                                     aws.secretsmanager.SecretVersion]]:
        """Alertmanager's receiver credentials, when a webhook or PagerDuty is configured."""
        document = alerting_document(args)
        if not document:
            return None
        child = pulumi.ResourceOptions(parent=self)
        secret = aws.secretsmanager.Secret(f"{name}-alerting", aws.secretsmanager.SecretArgs(
            name=f"{pulumi.get_project()}/{pulumi.get_stack()}/alerting",
            description="Alertmanager receiver credentials: chat webhook URL, PagerDuty routing key",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=args.secret_recovery_window_days,
            tags=name_tag("alerting-secret", {"secret-kind": "integration"})), child)
        version = aws.secretsmanager.SecretVersion(f"{name}-alerting-value", aws.secretsmanager.SecretVersionArgs(
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(document))), child)
        return secret, version

    def _data_volume(self, name: str, args: MonitoringHostArgs) -> aws.ebs.Volume:
        return aws.ebs.Volume(f"{name}-data", aws.ebs.VolumeArgs(
            availability_zone=args.availability_zone,
            size=args.volume_gb,
            type="gp3",
            encrypted=True,
            kms_key_id=args.kms_key_arn,
            final_snapshot=args.final_snapshot,
            tags=name_tag("monitoring-data", {"role": "monitoring"})), pulumi.ResourceOptions(parent=self))

    def _ops_bundle(self, name: str, args: MonitoringHostArgs,
                    settings: pulumi.Output[MonitoringSettings]) -> aws.s3.BucketObjectv2:
        """The operations bundle: host files, scripts, pinned requirements, rules, dashboards."""
        files = settings.apply(ops_bundle)
        self.bundle_key = files.apply(bundle_key)
        return aws.s3.BucketObjectv2(f"{name}-ops-bundle", aws.s3.BucketObjectv2Args(
            bucket=args.backup_bucket_name,
            key=self.bundle_key,
            source=files.apply(lambda f: pulumi.AssetArchive({path: pulumi.StringAsset(text) for path, text in f.items()})),
            content_type="application/zip",
            # The bucket refuses objects not encrypted with KMS.
            server_side_encryption="aws:kms",
            kms_key_id=args.kms_key_arn,
            bucket_key_enabled=True,
            tags=name_tag("ops-bundle")), pulumi.ResourceOptions(
                parent=self,
                # The key follows the contents, so every change replaces the object; the bucket's
                # Object Lock refuses the provider's delete of the old, locked version (it never
                # bypasses governance retention), which would fail the `up`. Pulumi forgets the
                # old bundle instead (a few KB, kept like every object of the bucket).
                retain_on_delete=True))

    def _identity(self, name: str, args: MonitoringHostArgs, readable_secrets: list[pulumi.Input[str]],
                  ) -> tuple[aws.iam.Role, aws.iam.InstanceProfile, list[pulumi.Resource]]:
        """Exactly what the host does, nothing more: the role, its instance profile, and the
        policies the boot script needs in place (returned for the instance to wait on)."""
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(f"{name}-role", aws.iam.RoleArgs(
            name=f"{physical_prefix()}-monitoring",
            description="Monitoring host: EC2 discovery, its own secrets, backups, alerts topic",
            assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
            tags=name_tag("monitoring-role")), child)
        ssm_core = aws.iam.RolePolicyAttachment(f"{name}-ssm", aws.iam.RolePolicyAttachmentArgs(
            role=role.name, policy_arn=SSM_CORE_POLICY), child)
        permissions = aws.iam.RolePolicy(f"{name}-policy", aws.iam.RolePolicyArgs(
            role=role.id,
            policy=host_policy(args, readable_secrets)), child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", aws.iam.InstanceProfileArgs(
            name=f"{physical_prefix()}-monitoring", role=role.name, tags=name_tag("monitoring-profile")), child)
        return role, profile, [permissions, ssm_core]

    def _probe_http_egress(self, name: str, args: MonitoringHostArgs) -> None:
        """Probing the public URL over plain HTTP needs port 80 out (staging without TLS)."""
        aws.vpc.SecurityGroupEgressRule(f"{name}-probe-http-out", aws.vpc.SecurityGroupEgressRuleArgs(
            security_group_id=args.security_group_id, ip_protocol="tcp", from_port=80, to_port=80,
            # The load balancer is reached at its public addresses (through NAT), so no
            # security-group reference can express it.
            cidr_ipv4="0.0.0.0/0",
            description="Blackbox probes of the public URL over plain HTTP (no certificate in this stack)",
            tags=name_tag("monitoring-out-80")), pulumi.ResourceOptions(parent=self))

    def _instance(self, name: str, args: MonitoringHostArgs, settings: pulumi.Output[MonitoringSettings],
                  profile: aws.iam.InstanceProfile, depends_on: list[pulumi.Resource]) -> aws.ec2.Instance:
        return aws.ec2.Instance(f"{name}-host", aws.ec2.InstanceArgs(
            ami=args.ami_id,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            associate_public_ip_address=False,
            iam_instance_profile=profile.name,
            monitoring=True,
            ebs_optimized=True,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                instance_metadata_tags="disabled"),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", volume_size=ROOT_VOLUME_GB, encrypted=True, kms_key_id=args.kms_key_arn,
                delete_on_termination=True, tags=name_tag("monitoring-root", {"role": "monitoring"})),
            user_data_base64=settings.apply(user_data_base64),
            user_data_replace_on_change=True,
            tags=name_tag("monitoring", {"role": "monitoring"}),
        ), pulumi.ResourceOptions(
            parent=self,
            depends_on=depends_on,
            # A newer AMI alone must not replace the host in the middle of an unrelated
            # deployment; roll it deliberately with `pulumi up --replace <urn>`.
            ignore_changes=["ami"]))

    def _attach_data_volume(self, name: str, instance: aws.ec2.Instance, data_volume: aws.ebs.Volume) -> None:
        aws.ec2.VolumeAttachment(f"{name}-data-attachment", aws.ec2.VolumeAttachmentArgs(
            device_name=DATA_DEVICE_NAME, instance_id=instance.id, volume_id=data_volume.id,
            # Stop the old instance before detaching so Prometheus closes its TSDB cleanly.
            stop_instance_before_detaching=True,
        ), pulumi.ResourceOptions(
            parent=self,
            # On replacement the volume must leave the old instance before it can join the new
            # one (create-before-delete would try to attach a volume still in use).
            delete_before_replace=True))


# --- what the host is made of, as plain data ---------------------------------------------------
# Pure functions (arguments in, values out; Outputs only as values), called by the component
# above and by the unit tests directly.

def grafana_secret_name() -> str:
    return f"{pulumi.get_project()}/{pulumi.get_stack()}/grafana"


def alerting_document(args: MonitoringHostArgs) -> dict[str, Any]:
    """The alerting secret's value: the receivers that are configured ({} for none)."""
    document: dict[str, Any] = {}
    if args.alert_webhook_url is not None:
        document["webhook_url"] = args.alert_webhook_url
    if args.pagerduty_routing_key is not None:
        document["pagerduty_routing_key"] = args.pagerduty_routing_key
    return document


def readable_secret_arns(args: MonitoringHostArgs, grafana_secret_arn: pulumi.Input[str],
                         alerting_secret_arn: Optional[pulumi.Input[str]]) -> list[pulumi.Input[str]]:
    """Every secret the host reads: Grafana's, its two database logins, then the optional ones."""
    readable: list[pulumi.Input[str]] = [grafana_secret_arn, args.db_backup_secret_arn, args.db_drill_secret_arn]
    readable.extend(arn for arn in (alerting_secret_arn, args.db_monitor_secret_arn, args.redis_secret_arn)
                    if arn is not None)
    return readable


def host_settings(args: MonitoringHostArgs, grafana_secret_name: str, grafana_secret_arn: pulumi.Input[str],
                  alerting_secret_arn: Optional[pulumi.Input[str]],
                  data_volume_id: pulumi.Input[str]) -> pulumi.Output[MonitoringSettings]:
    """Everything the host's files are rendered from, once its inputs are known (one value for
    the user data and the operations bundle, so the two always agree)."""
    inputs = pulumi.Output.all(
        public_url=args.public_url, topic=args.alerts_topic_arn, bucket=args.backup_bucket_name,
        key=args.kms_key_arn, db_host=args.db_address, backup_login=args.db_backup_secret_arn,
        drill_login=args.db_drill_secret_arn, grafana=grafana_secret_arn, volume=data_volume_id,
        monitor=args.db_monitor_secret_arn, redis=args.redis_secret_arn, alerting=alerting_secret_arn)
    project, stack = pulumi.get_project(), pulumi.get_stack()
    return inputs.apply(lambda values: monitoring_settings(args, values, grafana_secret_name, project, stack))


def monitoring_settings(args: MonitoringHostArgs, resolved: Mapping[str, Any], grafana_secret_name: str,
                        project: str, stack: str) -> MonitoringSettings:
    """The host's settings from the args and the resolved values of the inputs that are Outputs
    (the keys host_settings gathers: public_url, topic, bucket, key, db_host, backup_login,
    drill_login, grafana, volume, monitor, redis, alerting)."""
    v = resolved
    return MonitoringSettings(
        project=project, stack=stack, environment=args.environment,
        region=args.region, public_url=v["public_url"], https=args.https,
        alerts_topic_arn=v["topic"], backup_bucket=v["bucket"], kms_key_arn=v["key"],
        db_host=v["db_host"], db_port=args.db_port, db_name=args.db_name, db_backup_secret_arn=v["backup_login"],
        db_drill_secret_arn=v["drill_login"],
        grafana_secret_arn=v["grafana"], grafana_secret_name=grafana_secret_name,
        data_volume_id=v["volume"], volume_gb=args.volume_gb,
        backup_schedule=args.backup_schedule, restore_drill_schedule=args.restore_drill_schedule,
        db_monitor_secret_arn=v["monitor"], redis_secret_arn=v["redis"],
        alerting_secret_arn=v["alerting"], webhook_enabled=args.alert_webhook_url is not None,
        pagerduty_enabled=args.pagerduty_routing_key is not None,
        postgres_client_major=args.postgres_major_version,
        probe_paths=tuple(dict.fromkeys((args.health_check_path, "/api/v1/health/"))))


def host_policy(args: MonitoringHostArgs, readable_secrets: list[pulumi.Input[str]]) -> pulumi.Output[str]:
    """The monitoring host's inline policy: least privilege, exact ARNs wherever the API allows."""
    return policy_json(host_policy_statements(args, readable_secrets))


def host_policy_statements(args: MonitoringHostArgs, readable_secrets: Sequence[pulumi.Input[str]]) -> list[dict[str, Any]]:
    return [*_discovery_and_secret_statements(args, readable_secrets), *_backup_statements(args),
            *_publishing_statements(args)]


def _discovery_and_secret_statements(args: MonitoringHostArgs,
                                     readable_secrets: Sequence[pulumi.Input[str]]) -> list[dict[str, Any]]:
    region = args.region
    return [
        {
            # Prometheus EC2 service discovery. Describe* calls support no resource-level
            # permissions, so "*" is the only resource IAM accepts here.
            "Sid": "DiscoverApiHosts",
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstances", "ec2:DescribeAvailabilityZones"],
            "Resource": "*",
        },
        {
            "Sid": "ReadOwnSecrets",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": list(readable_secrets),
        },
        {
            # Secrets, backups and the alerts topic are encrypted with the data key; the host may
            # use it only through those three services.
            "Sid": "UseDataKeyThroughServices",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": args.kms_key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": [
                f"secretsmanager.{region}.amazonaws.com", f"s3.{region}.amazonaws.com", f"sns.{region}.amazonaws.com"]}},
        },
    ]


def _backup_statements(args: MonitoringHostArgs) -> list[dict[str, Any]]:
    return [
        {
            # Exactly what scripts.backup/restore/restore_drill call (a test derives it from
            # their code): PutObject for the multipart upload (create, parts, complete) and the
            # manifest; GetObject for HEAD and downloads, GetObjectVersion for both pinned to
            # the manifest's version; AbortMultipartUpload for a failed backup. No delete:
            # retention is the bucket's lifecycle rule, and a compromised host cannot erase
            # the backups.
            "Sid": "WriteAndReadBackups",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:AbortMultipartUpload"],
            "Resource": joined(args.backup_bucket_arn, "/", BACKUP_PREFIX, "*"),
        },
        {
            # An interrupted backup confirms that its multipart upload is gone.
            "Sid": "ListPendingBackupUploads",
            "Effect": "Allow",
            "Action": "s3:ListBucketMultipartUploads",
            "Resource": args.backup_bucket_arn,
        },
        {
            "Sid": "ListBackups",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": args.backup_bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{BACKUP_PREFIX}*"]}},
        },
        {
            "Sid": "ReadOpsBundle",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": joined(args.backup_bucket_arn, "/ops/*"),
        },
    ]


def _publishing_statements(args: MonitoringHostArgs) -> list[dict[str, Any]]:
    return [
        {
            "Sid": "PublishAlerts",
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": args.alerts_topic_arn,
        },
        {
            # CloudWatch agent (memory, disk, heartbeat). PutMetricData has no resource-level
            # permissions; the namespace condition confines it to this host's namespace.
            "Sid": "PublishHostMetrics",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": CLOUDWATCH_NAMESPACE}},
        },
    ]
