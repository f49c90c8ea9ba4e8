"""Auto-scaled API hosts: launch template, instance role, auto-scaling group (spec 3.2.1, 3.7).

Amazon Linux 2023 hosts in the private subnets, no public address, IMDSv2 only, encrypted gp3
root volume with the data key. Each host bootstraps from cloud-init (components/hostconfig.py):
it reads its secrets by ARN at boot and installs the release named in configuration. A new
release (appVersion) or any change of the host configuration makes a new launch-template
version, and the group replaces its hosts by a rolling instance refresh that launches new hosts
before it retires old ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

from components.common import assume_role_policy, name_tag, physical_prefix, policy_json, type_token
from components.connection_budget import REFRESH_MIN_HEALTHY_PERCENT
from components.hostconfig import ApiHostSettings, render_api_user_data
from components.userdata import encode_user_data

MANAGED_POLICIES = {
    "ssm": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    "cloudwatch-agent": "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy",
}
API_LOG_RETENTION_DAYS = 90
# First boot installs packages, builds the virtualenv from the release's wheels and collects
# static files before nginx answers the health check.
HEALTH_CHECK_GRACE_SECONDS = 600
INSTANCE_WARMUP_SECONDS = 300
GROUP_METRICS = tuple(aws.autoscaling.Metric(m) for m in (
    "GroupMinSize", "GroupMaxSize", "GroupDesiredCapacity", "GroupInServiceInstances",
    "GroupPendingInstances", "GroupStandbyInstances", "GroupTerminatingInstances", "GroupTotalInstances"))


@dataclass
class ApiHostsArgs:
    # An AMI id, or `resolve:ssm:<parameter>` (components.ami.AL2023_AT_LAUNCH): the image each
    # host is launched from.
    image_id: pulumi.Input[str]
    instance_type: str                           # config apiInstanceType, e.g. "c6i.xlarge"
    root_volume_gb: int                          # config apiRootVolumeGb: encrypted gp3 root volume (GiB)
    kms_key_arn: pulumi.Input[str]               # DataKey.arn: root volumes, the log group, the secrets' decryption
    private_subnet_ids: Sequence[pulumi.Input[str]]  # Network.private_subnet_ids: one per AZ, the group spreads over them
    security_group_id: pulumi.Input[str]         # SecurityGroups.ids["api"]
    target_group_arn: pulumi.Input[str]          # LoadBalancer.target_group_arn: the group registers its hosts there
    min_size: int                                # config apiMinSize (hosts); also the healthy hosts `up` waits for
    max_size: int                                # config apiMaxSize (hosts)
    desired_capacity: int                        # config apiDesiredCapacity: hosts at creation; then the scaling policy owns it
    cpu_target_percent: int                      # config apiCpuTargetPercent: average CPU (%) the scaling policy aims at
    environment: str                             # config environment ("staging", "prod"): the app's settings
    region: str                                  # AWS region (config aws:region)
    vpc_cidr: str                                # config vpcCidr: the proxies nginx trusts for X-Forwarded-For
    app_port: int                                # config appPort: the port nginx serves to the load balancer
    health_check_path: str                       # config healthCheckPath, e.g. "/health/"
    app_version: str                             # config appVersion: the release the hosts install
    artifact_bucket: str                         # bucket of config appArtifactUrl (the release archive)
    artifact_key: str                            # key of config appArtifactUrl with the version filled in
    # Host name clients use (LoadBalancer.public_host).
    public_host: pulumi.Input[str]
    # Tags for what the provider's default tags do not reach (instances, volumes, the group).
    tags: Mapping[str, str]
    app_secret_arn: pulumi.Input[str]            # AppSecrets.app_secret_arn: SECRET_KEY and its fallbacks
    # Integration name -> secret ARN (AppSecrets.integration_secret_arns).
    integration_secret_arns: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # Created by the database-operations part ({engine, host, port, dbname, username, password}).
    database_secret_arn: Optional[pulumi.Input[str]] = None
    # Created by the data part ({host, port, auth_token, tls}).
    redis_secret_arn: Optional[pulumi.Input[str]] = None
    root_device_name: str = "/dev/xvda"          # the AMI's root device (components.ami lookup)
    # Config apiMaxInstanceLifetimeDays: a host older than this is replaced (its successor launched
    # first) on the image current then; 0: hosts are replaced only by releases and health checks.
    max_instance_lifetime_days: int = 14
    log_retention_days: int = API_LOG_RETENTION_DAYS  # days the hosts' log group keeps logs
    # Resources a new release waits for before its launch template exists (the migrations):
    # hosts of a release never start against a schema older than the release.
    start_after: Sequence[pulumi.Resource] = ()
    # Hosts launched above the desired capacity during a refresh, as a percentage of it: sized
    # by components.connection_budget so the database's max_connections holds the peak.
    refresh_max_healthy_percent: int = 200


class ApiHosts(pulumi.ComponentResource):
    asg_name: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]
    launch_template_latest_version: pulumi.Output[int]
    role_arn: pulumi.Output[str]
    role_name: pulumi.Output[str]
    instance_profile_name: pulumi.Output[str]
    log_group_name: pulumi.Output[str]

    def __init__(self, name: str, args: ApiHostsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("api_hosts", "ApiHosts"), name, None, opts)
        tags = host_tags(args, physical_prefix())
        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", aws.cloudwatch.LogGroupArgs(
            name=f"/{pulumi.get_project()}/{pulumi.get_stack()}/api",
            retention_in_days=args.log_retention_days,
            kms_key_id=args.kms_key_arn,
            tags=name_tag("api-logs"),
        ), pulumi.ResourceOptions(parent=self))
        role, profile = self._identity(name, args)
        template = self._launch_template(name, args, profile, self._user_data(args, log_group), tags)
        group = self._group(name, args, template, tags)
        self._scaling_policy(name, args, group)

        self.asg_name = group.name
        self.launch_template_id = template.id
        self.launch_template_latest_version = template.latest_version
        self.role_arn = role.arn
        self.role_name = role.name
        self.instance_profile_name = profile.name
        self.log_group_name = log_group.name
        self.register_outputs({
            "asg_name": self.asg_name, "launch_template_id": self.launch_template_id, "role_arn": self.role_arn,
            "role_name": self.role_name, "instance_profile_name": self.instance_profile_name,
            "log_group_name": self.log_group_name,
        })

    def _identity(self, name: str, args: ApiHostsArgs) -> tuple[aws.iam.Role, aws.iam.InstanceProfile]:
        """The hosts' role (managed policies for SSM and the CloudWatch agent, an inline policy
        for the app's own needs) and its instance profile."""
        child = pulumi.ResourceOptions(parent=self)
        prefix = physical_prefix()
        role = aws.iam.Role(f"{name}-role", aws.iam.RoleArgs(
            name_prefix=f"{prefix}-api-"[:38],
            description="API hosts: SSM sessions, CloudWatch agent, the app's secrets and its release artifact",
            assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
            tags=name_tag("api-role"),
        ), child)
        for label, policy_arn in MANAGED_POLICIES.items():
            aws.iam.RolePolicyAttachment(f"{name}-{label}", aws.iam.RolePolicyAttachmentArgs(
                role=role.name, policy_arn=policy_arn), child)
        aws.iam.RolePolicy(f"{name}-app-access", aws.iam.RolePolicyArgs(
            role=role.id,
            policy=policy_json(instance_policy_statements(
                host_secret_arns(args), args.kms_key_arn, args.region, args.artifact_bucket, args.artifact_key)),
        ), child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", aws.iam.InstanceProfileArgs(
            name_prefix=f"{prefix}-api-"[:38], role=role.name, tags=name_tag("api-profile")), child)
        return role, profile

    @staticmethod
    def _user_data(args: ApiHostsArgs, log_group: aws.cloudwatch.LogGroup) -> pulumi.Output[str]:
        """The hosts' cloud-init, rendered once the ids and ARNs it names are known."""
        return pulumi.Output.all(
            public_host=args.public_host,
            log_group=log_group.name,
            app_secret=args.app_secret_arn,
            integrations=pulumi.Output.all(**dict(args.integration_secret_arns)),
            database=args.database_secret_arn,
            redis=args.redis_secret_arn,
        ).apply(lambda v: encode_user_data(render_api_user_data(api_host_settings(args, v)), host="API host"))

    def _launch_template(self, name: str, args: ApiHostsArgs, profile: aws.iam.InstanceProfile,
                         user_data: pulumi.Input[str], tags: Mapping[str, str]) -> aws.ec2.LaunchTemplate:
        return aws.ec2.LaunchTemplate(f"{name}-lt", aws.ec2.LaunchTemplateArgs(
            name_prefix=f"{physical_prefix()}-api-",
            description=f"psychology-api hosts, release {args.app_version}",
            image_id=args.image_id,
            instance_type=args.instance_type,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # One hop: nothing behind the host (a container, a proxied request) reaches
                # the instance credentials.
                http_put_response_hop_limit=1,
                instance_metadata_tags="enabled",
            ),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=args.root_device_name,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_type="gp3",
                    volume_size=args.root_volume_gb,
                    encrypted="true",
                    kms_key_id=args.kms_key_arn,
                    delete_on_termination="true",
                ),
            )],
            network_interfaces=[aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                device_index=0,
                associate_public_ip_address="false",
                security_groups=[args.security_group_id],
                delete_on_termination="true",
            )],
            monitoring=aws.ec2.LaunchTemplateMonitoringArgs(enabled=True),
            user_data=user_data,
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                                for kind in ("instance", "volume", "network-interface")],
            update_default_version=True,
            tags=name_tag("api-lt"),
        ), pulumi.ResourceOptions(parent=self, depends_on=list(args.start_after)))

    def _group(self, name: str, args: ApiHostsArgs, template: aws.ec2.LaunchTemplate,
               tags: Mapping[str, str]) -> aws.autoscaling.Group:
        return aws.autoscaling.Group(f"{name}-asg", aws.autoscaling.GroupArgs(
            name=f"{physical_prefix()}-api",
            vpc_zone_identifiers=list(args.private_subnet_ids),
            min_size=args.min_size,
            max_size=args.max_size,
            desired_capacity=args.desired_capacity,
            # A host counts as healthy only when the load balancer's health check passes.
            health_check_type="ELB",
            health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
            default_instance_warmup=INSTANCE_WARMUP_SECONDS,
            target_group_arns=[args.target_group_arn],
            # The exact version (not $Latest): a new version is a change of the group, which
            # starts the instance refresh.
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)),
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    # Launch before terminate: capacity never drops below 100 % during a release;
                    # the surge above it is what the database's connection limit allows.
                    min_healthy_percentage=REFRESH_MIN_HEALTHY_PERCENT,
                    max_healthy_percentage=args.refresh_max_healthy_percent,
                    instance_warmup=str(INSTANCE_WARMUP_SECONDS),
                    skip_matching=True,
                ),
            ),
            # Health-check replacements also launch first, then terminate.
            instance_maintenance_policy=aws.autoscaling.GroupInstanceMaintenancePolicyArgs(
                min_healthy_percentage=REFRESH_MIN_HEALTHY_PERCENT, max_healthy_percentage=args.refresh_max_healthy_percent),
            termination_policies=["OldestLaunchTemplate", "OldestInstance"],
            # Patching between releases: with the image resolved at launch, a replaced host comes
            # up on the newest Amazon Linux, under the maintenance policy above.
            max_instance_lifetime=args.max_instance_lifetime_days * 86400,
            enabled_metrics=list(GROUP_METRICS),
            metrics_granularity="1Minute",
            # `pulumi up` fails when the hosts do not become healthy behind the load balancer.
            wait_for_capacity_timeout="15m",
            min_elb_capacity=args.min_size,
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                  for k, v in sorted(tags.items())],
        ), pulumi.ResourceOptions(
            parent=self,
            # The desired capacity is the starting point; afterwards the scaling policy owns it.
            ignore_changes=["desiredCapacity"]))

    def _scaling_policy(self, name: str, args: ApiHostsArgs, group: aws.autoscaling.Group) -> None:
        aws.autoscaling.Policy(f"{name}-cpu-target", aws.autoscaling.PolicyArgs(
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type="ASGAverageCPUUtilization"),
                target_value=float(args.cpu_target_percent),
            ),
        ), pulumi.ResourceOptions(parent=self))


def host_tags(args: ApiHostsArgs, prefix: str) -> dict[str, str]:
    """Tags of the hosts, their volumes and network interfaces, and the group."""
    return {**args.tags, "Name": f"{prefix}-api", "role": "api"}


def host_secret_arns(args: ApiHostsArgs) -> list[pulumi.Input[str]]:
    """Every secret the hosts read at boot: the app's, each integration's (sorted by name), the
    database login and Redis when given."""
    arns: list[pulumi.Input[str]] = [args.app_secret_arn]
    arns.extend(args.integration_secret_arns[k] for k in sorted(args.integration_secret_arns))
    arns.extend(arn for arn in (args.database_secret_arn, args.redis_secret_arn) if arn is not None)
    return arns


def api_host_settings(args: ApiHostsArgs, resolved: Mapping[str, Any]) -> ApiHostSettings:
    """What the hosts' files are rendered from: the args plus the resolved values of the inputs
    that are Outputs (public_host, log_group, app_secret, integrations, database, redis)."""
    return ApiHostSettings(
        environment=args.environment,
        region=args.region,
        app_version=args.app_version,
        artifact_bucket=args.artifact_bucket,
        artifact_key=args.artifact_key,
        app_port=args.app_port,
        health_check_path=args.health_check_path,
        vpc_cidr=args.vpc_cidr,
        public_host=resolved["public_host"],
        log_group_name=resolved["log_group"],
        app_secret_arn=resolved["app_secret"],
        integration_secret_arns=resolved["integrations"] or {},
        database_secret_arn=resolved["database"],
        redis_secret_arn=resolved["redis"],
    )


def instance_policy_statements(secret_arns: Sequence[pulumi.Input[str]], kms_key_arn: pulumi.Input[str],
                               region: str, artifact_bucket: str, artifact_key: str) -> list[dict[str, Any]]:
    """What the hosts' own code needs: the app's secrets, the key they are encrypted with
    (through Secrets Manager only), and the one release archive of this deployment."""
    return [
        {
            "Sid": "ReadTheAppSecrets",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": list(secret_arns),
        },
        {
            "Sid": "DecryptSecretsThroughSecretsManager",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": kms_key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}},
        },
        {
            "Sid": "ReadTheReleaseArtifact",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{artifact_bucket}/{artifact_key}",
        },
    ]
