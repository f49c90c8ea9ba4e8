"""Synthetic resources for the policy tests, declared with the real pulumi-aws v7 classes.

`synthetic_program(stack)` registers, under the mock engine, one fully compliant resource of
every kind the baseline judges ("good-*") and, next to it, resources that break exactly one
rule each ("bad-*"). Because the SDK serialises them, the rules are proven against the
property names the engine really receives, including for resource types (launch templates,
load balancers, RDS, ElastiCache, rotation) that other parts of the program declare.

`EXPECTED[name]` is the set of rules that must report resource `name` in both stacks;
`EXPECTED_PROD_ONLY[name]` the rules that report it in prod only. Every other resource must be
reported by no rule at all.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

REGION = "eu-central-1"
AMI = "ami-0a1b2c3d4e5f67890"

BENIGN_SCRIPT = """#!/bin/bash
set -euo pipefail
TOKEN=$(curl -sX PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")
secret=$(aws secretsmanager get-secret-value --secret-id "$DB_SECRET_ARN" --query SecretString --output text)
DB_PASSWORD="$(jq -r .password <<<"$secret")"
export REDIS_PASSWORD=${REDIS_PASSWORD:-}
echo "password=${DB_PASSWORD}" > /dev/null
"""
BENIGN_CLOUD_CONFIG = """#cloud-config
users:
  - name: deploy
    lock_passwd: true
ssh_pwauth: false
runcmd:
  - [systemctl, enable, --now, psychology-api.service]
"""

EXPECTED: dict[str, set[str]] = {
    "bad-key-untagged-provider": {"aws-provider-default-tags"},
    "bad-asg-unpropagated-tags": {"explicit-tags-where-default-tags-do-not-reach"},
    "bad-lt-no-tag-specs": {"explicit-tags-where-default-tags-do-not-reach"},
    "bad-lt-stack-tag-wrong": {"explicit-tags-where-default-tags-do-not-reach"},
    "bad-vpc-no-flow-log": {"vpc-flow-logs"},
    "bad-vpc-default-sg-kept": {"default-security-group-closed"},
    "bad-vpc-rules-default-sg": {"default-security-group-closed"},
    "bad-in-22-anywhere": {"no-open-ingress-except-lb-web"},
    "bad-alb-in-8080-anywhere": {"no-open-ingress-except-lb-web"},
    "bad-sg-inline-open": {"no-open-ingress-except-lb-web"},
    "bad-legacy-rule-3389-anywhere-v6": {"no-open-ingress-except-lb-web"},
    "bad-sg-no-description": {"security-groups-described"},
    "bad-sg-inline-rule-undescribed": {"security-groups-described"},
    "bad-out-443-undescribed": {"security-groups-described"},
    "bad-subnet-public": {"no-public-ip"},
    "bad-instance-public-ip": {"no-public-ip"},
    "bad-lt-public-ip": {"no-public-ip"},
    "bad-instance-imdsv1": {"imdsv2-required"},
    "bad-lt-hop-limit-2": {"imdsv2-required"},
    "bad-lt-no-metadata-options": {"imdsv2-required"},
    "bad-instance-root-unencrypted": {"ebs-encrypted"},
    "bad-lt-no-block-devices": {"ebs-encrypted"},
    "bad-lt-volume-unencrypted": {"ebs-encrypted"},
    "bad-volume-unencrypted": {"ebs-encrypted"},
    "bad-instance-aws-key-in-user-data": {"user-data-without-secrets"},
    "bad-lt-gzip-password": {"user-data-without-secrets"},
    "bad-lt-private-key-in-mime": {"user-data-without-secrets"},
    "bad-asg-ec2-health-check": {"asg-elb-health-check"},
    "bad-asg-attached-ec2-health-check": {"asg-elb-health-check"},
    "bad-alb-keeps-invalid-headers": {"alb-drops-invalid-headers"},
    "bad-alb-no-access-logs": {"alb-access-logs"},
    "bad-http-forwards": {"http-redirects-to-https"},
    "bad-https-tls10-policy": {"https-listener-tls12-policy"},
    "bad-https-default-policy": {"https-listener-tls12-policy"},
    "bad-db-unencrypted": {"rds-encrypted-customer-key"},
    "bad-db-aws-managed-key": {"rds-encrypted-customer-key"},
    "bad-db-public": {"rds-not-public"},
    "bad-db-one-day-backups": {"rds-backup-retention"},
    "bad-db-force-ssl-off": {"rds-force-ssl"},
    "bad-db-default-parameter-group": {"rds-force-ssl"},
    "bad-db-no-insights": {"rds-performance-insights"},
    "bad-db-no-log-exports": {"rds-log-exports"},
    "bad-db-manual-minor-upgrades": {"rds-auto-minor-upgrades"},
    "bad-redis-plain-at-rest": {"elasticache-encrypted-at-rest"},
    "bad-redis-no-tls": {"elasticache-tls-and-auth"},
    "bad-redis-no-auth": {"elasticache-tls-and-auth"},
    "bad-redis-no-snapshots": {"elasticache-snapshots"},
    "bad-bucket-no-public-access-block-bucket": {"s3-public-access-blocked"},
    "bad-bucket-public-policy-allowed-bucket": {"s3-public-access-blocked"},
    "bad-bucket-unversioned-bucket": {"s3-versioning"},
    "bad-bucket-sse-s3-bucket": {"s3-kms-encryption"},
    "bad-access-log-bucket-unencrypted-bucket": {"s3-kms-encryption"},
    "bad-bucket-http-allowed-bucket": {"s3-tls-only"},
    "bad-bucket-no-lifecycle-bucket": {"s3-lifecycle"},
    "bad-bucket-not-access-logged-bucket": {"s3-access-logging"},
    "bad-secret-aws-managed-key": {"secrets-customer-key"},
    "bad-app-secret-not-rotated": {"secrets-rotation"},
    "bad-operator-secret-not-rotated": {"secrets-rotation"},
    "bad-db-secret-not-rotated": {"secrets-rotation"},
    "bad-rotation-every-180-days": {"secrets-rotation"},
    "bad-key-no-rotation": {"kms-key-rotation"},
    "bad-topic-unencrypted": {"sns-topic-encrypted"},
}
EXPECTED_PROD_ONLY: dict[str, set[str]] = {
    "bad-alb-deletable": {"alb-deletion-protection-prod"},
    "bad-alb-without-waf": {"alb-waf-prod"},
    "http-only-listener": {"http-redirects-to-https"},
    "bad-db-single-az": {"rds-multi-az-prod"},
    "bad-db-deletable": {"rds-deletion-protection-prod"},
    "bad-db-seven-day-backups": {"rds-backup-retention"},
    "bad-redis-no-failover": {"elasticache-failover-prod"},
}


def expected_rules(stack: str, name: str) -> set[str]:
    rules = set(EXPECTED.get(name, set()))
    if stack == "prod":
        rules |= EXPECTED_PROD_ONLY.get(name, set())
    return rules


def synthetic_program(stack: str) -> Callable[[], None]:
    def program() -> None:
        _Declare(stack).all()

    return program


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class _Declare:
    def __init__(self, stack: str):
        self.stack = stack
        tags = {"project": "psychology-api", "stack": stack, "managed-by": "pulumi", "environment": stack}
        self.provider = aws.Provider("aws", aws.ProviderArgs(
            region=REGION, default_tags=aws.ProviderDefaultTagsArgs(tags=tags)))
        self.untagged = aws.Provider("untagged", aws.ProviderArgs(
            region=REGION, default_tags=aws.ProviderDefaultTagsArgs(tags={"project": "psychology-api"})))
        self.opts = pulumi.ResourceOptions(provider=self.provider)
        self.required_tags = {k: v for k, v in tags.items() if k != "environment"}

    def all(self) -> None:
        self.key = aws.kms.Key("good-key", aws.kms.KeyArgs(enable_key_rotation=True, description="data"), self.opts)
        self.keys_and_topics()
        self.network()
        self.compute()
        self.load_balancer()
        self.databases()
        self.buckets()
        self.secrets()

    # --- KMS, SNS, tags --------------------------------------------------------------------
    def keys_and_topics(self) -> None:
        aws.kms.Key("bad-key-no-rotation", aws.kms.KeyArgs(enable_key_rotation=False), self.opts)
        aws.kms.Key("good-asymmetric-key", aws.kms.KeyArgs(
            customer_master_key_spec="RSA_2048", key_usage="SIGN_VERIFY"), self.opts)
        aws.kms.Key("bad-key-untagged-provider", aws.kms.KeyArgs(enable_key_rotation=True),
                    pulumi.ResourceOptions(provider=self.untagged))
        aws.sns.Topic("good-topic", aws.sns.TopicArgs(kms_master_key_id=self.key.arn), self.opts)
        aws.sns.Topic("bad-topic-unencrypted", aws.sns.TopicArgs(), self.opts)

    # --- network ----------------------------------------------------------------------------
    def vpc(self, name: str, flow_log: bool = True, adopt_default_sg: bool = True,
            default_sg_ingress: Optional[list[aws.ec2.DefaultSecurityGroupIngressArgs]] = None) -> aws.ec2.Vpc:
        vpc = aws.ec2.Vpc(name, aws.ec2.VpcArgs(cidr_block="10.0.0.0/16"), self.opts)
        if flow_log:
            aws.ec2.FlowLog(f"{name}-flow-log", aws.ec2.FlowLogArgs(
                vpc_id=vpc.id, traffic_type="ALL", log_destination_type="s3",
                log_destination="arn:aws:s3:::flow-logs"), self.opts)
        if adopt_default_sg:
            aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", aws.ec2.DefaultSecurityGroupArgs(
                vpc_id=vpc.id, ingress=default_sg_ingress or [], egress=[]), self.opts)
        return vpc

    def network(self) -> None:
        vpc = self.vpc("good-vpc")
        self.vpc_id = vpc.id
        self.vpc("bad-vpc-no-flow-log", flow_log=False)
        self.vpc("bad-vpc-default-sg-kept", adopt_default_sg=False)
        self.vpc("bad-vpc-rules", default_sg_ingress=[aws.ec2.DefaultSecurityGroupIngressArgs(
            protocol="-1", from_port=0, to_port=0, self=True, description="members talk to each other")])

        self.alb_sg = aws.ec2.SecurityGroup("good-alb-sg", aws.ec2.SecurityGroupArgs(
            vpc_id=vpc.id, description="Load balancer", tags={"role": "alb"}), self.opts)
        self.app_sg = aws.ec2.SecurityGroup("good-app-sg", aws.ec2.SecurityGroupArgs(
            vpc_id=vpc.id, description="API hosts", tags={"role": "api"},
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=80, to_port=80,
                                                      cidr_blocks=["10.0.0.0/16"], description="from the VPC")],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=443, to_port=443,
                                                    cidr_blocks=["0.0.0.0/0"], description="HTTPS out")]), self.opts)

        def ingress(name: str, group: aws.ec2.SecurityGroup, port: int, v4: Optional[str] = None,
                    v6: Optional[str] = None) -> None:
            aws.vpc.SecurityGroupIngressRule(name, aws.vpc.SecurityGroupIngressRuleArgs(
                security_group_id=group.id, ip_protocol="tcp", from_port=port, to_port=port,
                cidr_ipv4=v4, cidr_ipv6=v6, description=f"port {port}"), self.opts)

        ingress("good-alb-in-443-anywhere", self.alb_sg, 443, v4="0.0.0.0/0")
        ingress("good-alb-in-80-anywhere-v6", self.alb_sg, 80, v6="::/0")
        ingress("good-app-in-8000-vpc", self.app_sg, 8000, v4="10.0.0.0/16")
        ingress("bad-in-22-anywhere", self.app_sg, 22, v4="0.0.0.0/0")
        ingress("bad-alb-in-8080-anywhere", self.alb_sg, 8080, v4="0.0.0.0/0")
        aws.ec2.SecurityGroupRule("bad-legacy-rule-3389-anywhere-v6", aws.ec2.SecurityGroupRuleArgs(
            type="ingress", security_group_id=self.app_sg.id, protocol="tcp", from_port=3389, to_port=3389,
            ipv6_cidr_blocks=["::/0"], description="remote desktop"), self.opts)
        aws.vpc.SecurityGroupEgressRule("good-out-443", aws.vpc.SecurityGroupEgressRuleArgs(
            security_group_id=self.app_sg.id, ip_protocol="tcp", from_port=443, to_port=443,
            cidr_ipv4="0.0.0.0/0", description="HTTPS out"), self.opts)
        aws.vpc.SecurityGroupEgressRule("bad-out-443-undescribed", aws.vpc.SecurityGroupEgressRuleArgs(
            security_group_id=self.app_sg.id, ip_protocol="tcp", from_port=443, to_port=443,
            cidr_ipv4="0.0.0.0/0"), self.opts)
        aws.ec2.SecurityGroup("bad-sg-inline-open", aws.ec2.SecurityGroupArgs(
            vpc_id=vpc.id, description="API hosts, open by mistake",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443,
                                                      cidr_blocks=["0.0.0.0/0"], description="HTTPS")]), self.opts)
        aws.ec2.SecurityGroup("bad-sg-no-description", aws.ec2.SecurityGroupArgs(vpc_id=vpc.id), self.opts)
        aws.ec2.SecurityGroup("bad-sg-inline-rule-undescribed", aws.ec2.SecurityGroupArgs(
            vpc_id=vpc.id, description="workers",
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=443, to_port=443,
                                                    cidr_blocks=["0.0.0.0/0"])]), self.opts)

        self.subnet = aws.ec2.Subnet("good-subnet", aws.ec2.SubnetArgs(
            vpc_id=vpc.id, cidr_block="10.0.1.0/24", map_public_ip_on_launch=False), self.opts)
        aws.ec2.Subnet("bad-subnet-public", aws.ec2.SubnetArgs(
            vpc_id=vpc.id, cidr_block="10.0.2.0/24", map_public_ip_on_launch=True), self.opts)

    # --- instances, launch templates, volumes, Auto Scaling ----------------------------------
    def instance(self, name: str, **overrides: Any) -> None:
        args: dict[str, Any] = dict(
            ami=AMI, instance_type="t3.medium", subnet_id=self.subnet.id, vpc_security_group_ids=[self.app_sg.id],
            associate_public_ip_address=False,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required", http_put_response_hop_limit=1,
                                                                 http_endpoint="enabled"),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(encrypted=True, kms_key_id=self.key.arn,
                                                                  volume_size=30, volume_type="gp3"),
            user_data=BENIGN_SCRIPT)
        args.update(overrides)
        aws.ec2.Instance(name, aws.ec2.InstanceArgs(**args), self.opts)

    def launch_template(self, name: str, **overrides: Any) -> aws.ec2.LaunchTemplate:
        args: dict[str, Any] = dict(
            image_id=AMI, instance_type="t3.medium",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1),
            network_interfaces=[aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                associate_public_ip_address="false", security_groups=[self.app_sg.id])],
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda", ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    encrypted="true", kms_key_id=self.key.arn, volume_size=30, volume_type="gp3",
                    delete_on_termination="true"))],
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=self.required_tags)
                                for kind in ("instance", "volume")],
            user_data=_b64(BENIGN_CLOUD_CONFIG))
        args.update(overrides)
        return aws.ec2.LaunchTemplate(name, aws.ec2.LaunchTemplateArgs(**args), self.opts)

    def asg(self, name: str, template: aws.ec2.LaunchTemplate, **overrides: Any) -> aws.autoscaling.Group:
        args: dict[str, Any] = dict(
            min_size=1, max_size=2, vpc_zone_identifiers=[self.subnet.id], health_check_type="ELB",
            target_group_arns=[self.target_group.arn],
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(id=template.id, version="$Latest"),
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                  for k, v in self.required_tags.items()])
        args.update(overrides)
        return aws.autoscaling.Group(name, aws.autoscaling.GroupArgs(**args), self.opts)

    def compute(self) -> None:
        self.instance("good-instance")
        self.instance("bad-instance-public-ip", associate_public_ip_address=True)
        self.instance("bad-instance-imdsv1", metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
            http_tokens="optional", http_put_response_hop_limit=1))
        self.instance("bad-instance-root-unencrypted", root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
            encrypted=False, volume_size=30))
        self.instance("bad-instance-aws-key-in-user-data",
                      user_data=BENIGN_SCRIPT + "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n")

        good_lt = self.launch_template("good-lt")
        self.launch_template("bad-lt-public-ip", network_interfaces=[aws.ec2.LaunchTemplateNetworkInterfaceArgs(
            associate_public_ip_address="true", security_groups=[self.app_sg.id])])
        self.launch_template("bad-lt-hop-limit-2", metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=2))
        self.launch_template("bad-lt-no-metadata-options", metadata_options=None)
        self.launch_template("bad-lt-no-block-devices", block_device_mappings=None)
        self.launch_template("bad-lt-volume-unencrypted", block_device_mappings=[
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(device_name="/dev/xvda", ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                encrypted="false", volume_size=30))])
        self.launch_template("bad-lt-no-tag-specs", tag_specifications=None)
        self.launch_template("bad-lt-stack-tag-wrong", tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags={**self.required_tags, "stack": "other"})
            for kind in ("instance", "volume")])
        gzipped = base64.b64encode(gzip.compress(b"#!/bin/sh\nDB_PASSWORD=hunter2-but-longer\n")).decode()
        self.launch_template("bad-lt-gzip-password", user_data=gzipped)
        mime = ("Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n--XYZ\n"
                "Content-Type: text/x-shellscript\nContent-Transfer-Encoding: base64\n\n"
                + _b64("#!/bin/sh\ncat > /root/key <<EOF\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\nEOF\n")
                + "\n--XYZ--\n")
        self.launch_template("bad-lt-private-key-in-mime", user_data=_b64(mime))

        aws.ebs.Volume("good-volume", aws.ebs.VolumeArgs(availability_zone=f"{REGION}a", size=10, encrypted=True,
                                                         kms_key_id=self.key.arn), self.opts)
        aws.ebs.Volume("bad-volume-unencrypted", aws.ebs.VolumeArgs(availability_zone=f"{REGION}a", size=10), self.opts)

        self.target_group = aws.lb.TargetGroup("good-tg", aws.lb.TargetGroupArgs(
            port=80, protocol="HTTP", vpc_id=self.vpc_id), self.opts)
        self.asg("good-asg", good_lt)
        self.asg("bad-asg-ec2-health-check", good_lt, health_check_type="EC2")
        self.asg("bad-asg-unpropagated-tags", good_lt, tags=[
            aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=False) for k, v in self.required_tags.items()])
        # A group with no load balancer (the monitoring host's) may keep EC2 health checks.
        self.asg("good-asg-without-lb", good_lt, health_check_type="EC2", target_group_arns=None)
        attached = self.asg("bad-asg-attached-ec2-health-check", good_lt, health_check_type="EC2",
                            target_group_arns=None)
        aws.autoscaling.Attachment("good-attachment", aws.autoscaling.AttachmentArgs(
            autoscaling_group_name=attached.name, lb_target_group_arn=self.target_group.arn), self.opts)

    # --- load balancer ------------------------------------------------------------------------
    def alb(self, name: str, **overrides: Any) -> aws.lb.LoadBalancer:
        args: dict[str, Any] = dict(
            load_balancer_type="application", internal=False, security_groups=[self.alb_sg.id],
            subnets=[self.subnet.id], drop_invalid_header_fields=True, enable_deletion_protection=True,
            access_logs=aws.lb.LoadBalancerAccessLogsArgs(bucket="access-logs", prefix="alb", enabled=True))
        waf = overrides.pop("waf", True)  # every balancer gets a web ACL unless told otherwise
        args.update(overrides)
        balancer = aws.lb.LoadBalancer(name, aws.lb.LoadBalancerArgs(**args), self.opts)
        if waf:
            aws.wafv2.WebAclAssociation(f"{name}-waf", aws.wafv2.WebAclAssociationArgs(
                resource_arn=balancer.arn, web_acl_arn=self.web_acl_arn), self.opts)
        return balancer

    def listener(self, name: str, alb: aws.lb.LoadBalancer, protocol: str, **overrides: Any) -> None:
        forward = [aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=self.target_group.arn)]
        args: dict[str, Any] = dict(load_balancer_arn=alb.arn, protocol=protocol, port=443 if protocol == "HTTPS" else 80,
                                    default_actions=forward)
        if protocol == "HTTPS":
            args.update(ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
                        certificate_arn="arn:aws:acm:eu-central-1:123456789012:certificate/00000000-0000-0000-0000-000000000000")
        args.update(overrides)
        aws.lb.Listener(name, aws.lb.ListenerArgs(**args), self.opts)

    def load_balancer(self) -> None:
        self.web_acl_arn = "arn:aws:wafv2:eu-central-1:123456789012:regional/webacl/good-acl/0a1b2c3d"
        alb = self.alb("good-alb")
        redirect = [aws.lb.ListenerDefaultActionArgs(type="redirect", redirect=aws.lb.ListenerDefaultActionRedirectArgs(
            protocol="HTTPS", port="443", status_code="HTTP_301"))]
        self.listener("good-https", alb, "HTTPS")
        self.listener("good-http-redirect", alb, "HTTP", default_actions=redirect)
        self.listener("bad-http-forwards", alb, "HTTP")
        self.listener("bad-https-tls10-policy", alb, "HTTPS", ssl_policy="ELBSecurityPolicy-2016-08")
        self.listener("bad-https-default-policy", alb, "HTTPS", ssl_policy=None)
        self.alb("bad-alb-keeps-invalid-headers", drop_invalid_header_fields=False)
        self.alb("bad-alb-no-access-logs", access_logs=None)
        self.alb("bad-alb-deletable", enable_deletion_protection=False)
        self.alb("bad-alb-without-waf", waf=False)
        self.alb("good-internal-alb-without-waf", internal=True, waf=False)
        # Staging may serve plain HTTP when it has no certificate; prod never.
        http_only = self.alb("http-only-alb")
        self.listener("http-only-listener", http_only, "HTTP")

    # --- RDS and ElastiCache --------------------------------------------------------------------
    def databases(self) -> None:
        good_pg = aws.rds.ParameterGroup("good-pg", aws.rds.ParameterGroupArgs(
            family="postgres16", parameters=[aws.rds.ParameterGroupParameterArgs(name="rds.force_ssl", value="1")]), self.opts)
        lax_pg = aws.rds.ParameterGroup("lax-pg", aws.rds.ParameterGroupArgs(
            family="postgres16", parameters=[aws.rds.ParameterGroupParameterArgs(name="rds.force_ssl", value="0")]), self.opts)

        def db(name: str, **overrides: Any) -> None:
            args: dict[str, Any] = dict(
                engine="postgres", engine_version="16", instance_class="db.t4g.medium", allocated_storage=20,
                username="psychology", manage_master_user_password=True, storage_encrypted=True,
                kms_key_id=self.key.arn, publicly_accessible=False, multi_az=True, deletion_protection=True,
                backup_retention_period=30, parameter_group_name=good_pg.name, performance_insights_enabled=True,
                performance_insights_kms_key_id=self.key.arn, enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
                auto_minor_version_upgrade=True, skip_final_snapshot=False, final_snapshot_identifier=f"{name}-final")
            args.update(overrides)
            aws.rds.Instance(name, aws.rds.InstanceArgs(**args), self.opts)

        db("good-db")
        db("bad-db-unencrypted", storage_encrypted=False)
        db("bad-db-aws-managed-key", kms_key_id=None)
        db("bad-db-public", publicly_accessible=True)
        db("bad-db-single-az", multi_az=False)
        db("bad-db-deletable", deletion_protection=False)
        db("bad-db-seven-day-backups", backup_retention_period=7)
        db("bad-db-one-day-backups", backup_retention_period=1)
        db("bad-db-force-ssl-off", parameter_group_name=lax_pg.name)
        db("bad-db-default-parameter-group", parameter_group_name=None)
        db("bad-db-no-insights", performance_insights_enabled=False, performance_insights_kms_key_id=None)
        db("bad-db-no-log-exports", enabled_cloudwatch_logs_exports=None)
        db("bad-db-manual-minor-upgrades", auto_minor_version_upgrade=False)

        def redis(name: str, **overrides: Any) -> None:
            args: dict[str, Any] = dict(
                description="sessions and cache", engine="redis", engine_version="7.1", node_type="cache.t4g.small",
                num_cache_clusters=2, port=6379, at_rest_encryption_enabled=True, kms_key_id=self.key.arn,
                transit_encryption_enabled=True, auth_token=pulumi.Output.secret("a-long-generated-auth-token-000"),
                automatic_failover_enabled=True, multi_az_enabled=True, snapshot_retention_limit=7,
                security_group_ids=[self.app_sg.id])
            args.update(overrides)
            aws.elasticache.ReplicationGroup(name, aws.elasticache.ReplicationGroupArgs(**args), self.opts)

        redis("good-redis")
        redis("bad-redis-plain-at-rest", at_rest_encryption_enabled=False, kms_key_id=None)
        redis("bad-redis-no-tls", transit_encryption_enabled=False)
        redis("bad-redis-no-auth", auth_token=None)
        redis("bad-redis-no-failover", automatic_failover_enabled=False, multi_az_enabled=False)
        redis("bad-redis-no-snapshots", snapshot_retention_limit=0)

    # --- S3 ---------------------------------------------------------------------------------------
    def bucket(self, name: str, *, purpose: str = "data", public_access: Optional[dict[str, bool]] = None,
               versioning: str = "Enabled", sse: Optional[str] = "aws:kms", tls_only: bool = True,
               lifecycle: bool = True, access_logged: bool = True) -> None:
        bucket = aws.s3.Bucket(f"{name}-bucket", aws.s3.BucketArgs(tags={"purpose": purpose}), self.opts)
        if access_logged and purpose != "load-balancer-access-logs":
            aws.s3.BucketLogging(f"{name}-access-logging", aws.s3.BucketLoggingInitArgs(
                bucket=bucket.id, target_bucket="access-logs", target_prefix=f"s3/{name}/"), self.opts)
        flags = {"block_public_acls": True, "block_public_policy": True, "ignore_public_acls": True,
                 "restrict_public_buckets": True}
        if public_access is not None:
            flags.update(public_access)
        if public_access != {}:
            aws.s3.BucketPublicAccessBlock(f"{name}-public-access", aws.s3.BucketPublicAccessBlockArgs(
                bucket=bucket.id, block_public_acls=flags["block_public_acls"],
                block_public_policy=flags["block_public_policy"], ignore_public_acls=flags["ignore_public_acls"],
                restrict_public_buckets=flags["restrict_public_buckets"]), self.opts)
        aws.s3.BucketVersioning(f"{name}-versioning", aws.s3.BucketVersioningInitArgs(
            bucket=bucket.id, versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status=versioning)), self.opts)
        if sse is not None:
            default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm=sse, kms_master_key_id=self.key.arn if sse == "aws:kms" else None)
            aws.s3.BucketServerSideEncryptionConfiguration(f"{name}-encryption",
                                                           aws.s3.BucketServerSideEncryptionConfigurationInitArgs(
                bucket=bucket.id, rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=default)]), self.opts)
        statement: dict[str, Any] = {
            "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
        if not tls_only:
            statement = {"Sid": "ReadForAccount", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                         "Action": "s3:GetObject", "Resource": pulumi.Output.concat(bucket.arn, "/*")}
        aws.s3.BucketPolicy(f"{name}-policy", aws.s3.BucketPolicyArgs(
            bucket=bucket.id, policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [statement]})),
            self.opts)
        if lifecycle:
            aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", aws.s3.BucketLifecycleConfigurationArgs(
                bucket=bucket.id, rules=[aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire", status="Enabled", filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=30))]), self.opts)

    def buckets(self) -> None:
        self.bucket("good-bucket")
        self.bucket("good-access-log", purpose="load-balancer-access-logs", sse="AES256")
        self.bucket("bad-bucket-no-public-access-block", public_access={})
        self.bucket("bad-bucket-public-policy-allowed", public_access={"block_public_policy": False})
        self.bucket("bad-bucket-unversioned", versioning="Suspended")
        self.bucket("bad-bucket-sse-s3", sse="AES256")
        self.bucket("bad-access-log-bucket-unencrypted", purpose="load-balancer-access-logs", sse=None)
        self.bucket("bad-bucket-http-allowed", tls_only=False)
        self.bucket("bad-bucket-no-lifecycle", lifecycle=False)
        self.bucket("bad-bucket-not-access-logged", access_logged=False)

    # --- Secrets Manager --------------------------------------------------------------------------
    def secrets(self) -> None:
        def secret(name: str, kind: str, kms: bool = True) -> aws.secretsmanager.Secret:
            return aws.secretsmanager.Secret(name, aws.secretsmanager.SecretArgs(
                kms_key_id=self.key.arn if kms else None, tags={"secret-kind": kind}), self.opts)

        def rotation(name: str, target: aws.secretsmanager.Secret, days: int) -> None:
            aws.secretsmanager.SecretRotation(name, aws.secretsmanager.SecretRotationArgs(
                secret_id=target.id, rotation_lambda_arn="arn:aws:lambda:eu-central-1:123456789012:function:rotate",
                rotation_rules=aws.secretsmanager.SecretRotationRotationRulesArgs(automatically_after_days=days)), self.opts)

        rotation("good-rotation", secret("good-db-secret", "database"), 30)
        rotation("good-app-rotation", secret("good-app-secret", "app"), 90)
        secret("good-integration-secret", "integration")
        secret("bad-secret-aws-managed-key", "integration", kms=False)
        # Generated values (the Django key, a UI's admin password) rotate like credentials.
        secret("bad-app-secret-not-rotated", "app")
        secret("bad-operator-secret-not-rotated", "operator")
        secret("bad-db-secret-not-rotated", "database")
        rotation("bad-rotation-every-180-days", secret("good-db-secret-slow", "database"), 180)

