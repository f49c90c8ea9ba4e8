"""The account drift scan against moto's server mode.

Each test builds a small platform in moto with boto3 (VPC, subnets, routes, security groups and
rules, instances, an auto-scaling group, a load balancer, RDS, Redis, a bucket with its
settings, KMS, secrets, logs, ...), writes the stack export Pulumi would hold for it (the
deployment checkpoint format, pulumi-aws v7 type tokens and camelCase outputs), then changes AWS
out of band and runs `python -m scripts.drift scan` for real.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import boto3

from tests.services import MotoServer

REGION = "eu-central-1"
PROJECT = "psychology-api"
STACK = "prod"
SECRET_SIG = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}
OUR_TAGS = {"project": PROJECT, "stack": STACK, "managed-by": "pulumi", "environment": "prod"}
ROOT = Path(__file__).resolve().parents[2]


def aws_tags(name: str, **extra: str) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in {**OUR_TAGS, "Name": name, **extra}.items()]


class Checkpoint:
    """A `pulumi stack export` document built resource by resource."""

    def __init__(self) -> None:
        provider_urn = f"urn:pulumi:{STACK}::{PROJECT}::pulumi:providers:aws::aws"
        self.provider = f"{provider_urn}::{uuid.uuid4()}"
        provider_inputs = {"region": REGION, "defaultTags": json.dumps({"tags": OUR_TAGS}), "version": "7.51.1"}
        self.resources: list[dict[str, Any]] = [
            {"urn": f"urn:pulumi:{STACK}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{STACK}", "custom": False,
             "type": "pulumi:pulumi:Stack", "outputs": {}},
            {"urn": provider_urn, "custom": True, "id": self.provider.rsplit("::", 1)[1], "type": "pulumi:providers:aws",
             "inputs": provider_inputs, "outputs": provider_inputs},
        ]

    def add(self, token: str, name: str, resource_id: str, outputs: Optional[dict[str, Any]] = None,
            inputs: Optional[dict[str, Any]] = None, **extra: Any) -> str:
        urn = f"urn:pulumi:{STACK}::{PROJECT}::{token}::{name}"
        tags = {**OUR_TAGS, "Name": f"{PROJECT}-{STACK}-{name}"}
        self.resources.append({
            "urn": urn, "custom": True, "id": resource_id, "type": token, "provider": self.provider,
            "inputs": inputs if inputs is not None else {},
            "outputs": {"id": resource_id, "region": REGION, "tags": tags, "tagsAll": tags, **(outputs or {})},
            **extra,
        })
        return urn

    def count(self) -> int:
        return sum(1 for r in self.resources if r["custom"] and not r["type"].startswith("pulumi:"))

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({"version": 3, "deployment": {
            "manifest": {"time": "2026-01-01T00:00:00Z", "magic": "", "version": "v3.200.0"},
            "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:test"}},
            "resources": self.resources}}, indent=1))
        return path


class World:
    """The platform in moto, and its checkpoint."""

    def __init__(self, moto: MotoServer) -> None:
        self.clients: dict[str, Any] = {}
        self.endpoint = moto.endpoint_url
        self.state = Checkpoint()
        self.ids: dict[str, Any] = {}

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_") or service in ("clients", "endpoint", "state", "ids"):
            raise AttributeError(service)
        name = {"lambda_": "lambda"}.get(service, service)
        if name not in self.clients:
            self.clients[name] = boto3.client(name, endpoint_url=self.endpoint, region_name=REGION)
        return self.clients[name]

    # --- network -----------------------------------------------------------------------
    def network(self, scale: int) -> None:
        ec2, state = self.ec2, self.state
        vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16", TagSpecifications=[
            {"ResourceType": "vpc", "Tags": aws_tags("vpc")}])["Vpc"]["VpcId"]
        self.ids["vpc"] = vpc
        state.add("aws:ec2/vpc:Vpc", "network-vpc", vpc, {"cidrBlock": "10.30.0.0/16", "enableDnsSupport": True})

        # The program adopts the default security group and strips its rules.
        default_sg = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                           {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
        for rule in ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [default_sg["GroupId"]]}])["SecurityGroupRules"]:
            (ec2.revoke_security_group_egress if rule["IsEgress"] else ec2.revoke_security_group_ingress)(
                GroupId=default_sg["GroupId"], SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]])
        state.add("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", "network-default-sg", default_sg["GroupId"],
                  {"vpcId": vpc, "ingress": [], "egress": []}, inputs={"vpcId": vpc, "ingress": [], "egress": []})

        igw = ec2.create_internet_gateway(TagSpecifications=[
            {"ResourceType": "internet-gateway", "Tags": aws_tags("igw")}])["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        state.add("aws:ec2/internetGateway:InternetGateway", "network-igw", igw, {"vpcId": vpc})

        zones = [f"{REGION}{z}" for z in "abc"]
        self.ids["subnets"] = []
        for index in range(2 * scale):
            cidr = f"10.30.{index}.0/24"
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zones[index % 3], TagSpecifications=[
                {"ResourceType": "subnet", "Tags": aws_tags(f"subnet-{index}")}])["Subnet"]["SubnetId"]
            self.ids["subnets"].append(subnet)
            state.add("aws:ec2/subnet:Subnet", f"network-subnet-{index}", subnet,
                      {"vpcId": vpc, "cidrBlock": cidr, "mapPublicIpOnLaunch": False, "availabilityZone": zones[index % 3]})

        public_rt = self.route_table("public", vpc)
        self.route(public_rt, "0.0.0.0/0", "public-default-ipv4", gateway_id=igw)
        self.ids["public_rt"] = public_rt
        eip = ec2.allocate_address(Domain="vpc", TagSpecifications=[
            {"ResourceType": "elastic-ip", "Tags": aws_tags("nat")}])["AllocationId"]
        state.add("aws:ec2/eip:Eip", "network-nat-eip", eip, {"domain": "vpc", "allocationId": eip})
        nat = ec2.create_nat_gateway(SubnetId=self.ids["subnets"][0], AllocationId=eip, ConnectivityType="public",
                                     TagSpecifications=[{"ResourceType": "natgateway", "Tags": aws_tags("nat")}])["NatGateway"]["NatGatewayId"]
        state.add("aws:ec2/natGateway:NatGateway", "network-nat", nat,
                  {"subnetId": self.ids["subnets"][0], "connectivityType": "public", "allocationId": eip})
        for index in range(scale):
            private_rt = self.route_table(f"private-{index}", vpc)
            self.route(private_rt, "0.0.0.0/0", f"private-default-{index}", nat_gateway_id=nat)
        # An S3 gateway endpoint adds its own route to the tables it serves: managed by the endpoint.
        endpoint = ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.s3", VpcEndpointType="Gateway",
                                           RouteTableIds=[public_rt], TagSpecifications=[
                                               {"ResourceType": "vpc-endpoint", "Tags": aws_tags("s3-endpoint")}])["VpcEndpoint"]
        state.add("aws:ec2/vpcEndpoint:VpcEndpoint", "network-s3-endpoint", endpoint["VpcEndpointId"],
                  {"vpcId": vpc, "serviceName": f"com.amazonaws.{REGION}.s3", "vpcEndpointType": "Gateway",
                   "routeTableIds": [public_rt]})

        self.logs.create_log_group(logGroupName=f"/{PROJECT}/{STACK}/flow-logs", tags=OUR_TAGS)
        state.add("aws:cloudwatch/logGroup:LogGroup", "network-flow-logs", f"/{PROJECT}/{STACK}/flow-logs",
                  {"name": f"/{PROJECT}/{STACK}/flow-logs", "retentionInDays": 0})
        flow = ec2.create_flow_logs(ResourceIds=[vpc], ResourceType="VPC", TrafficType="ALL",
                                    LogDestinationType="cloud-watch-logs", LogGroupName=f"/{PROJECT}/{STACK}/flow-logs",
                                    DeliverLogsPermissionArn="arn:aws:iam::123456789012:role/flow-logs")["FlowLogIds"][0]
        state.add("aws:ec2/flowLog:FlowLog", "network-flow-log", flow,
                  {"vpcId": vpc, "trafficType": "ALL", "logDestinationType": "cloud-watch-logs"})

    def route_table(self, role: str, vpc: str) -> str:
        table = self.ec2.create_route_table(VpcId=vpc, TagSpecifications=[
            {"ResourceType": "route-table", "Tags": aws_tags(f"{role}-rt")}])["RouteTable"]["RouteTableId"]
        self.state.add("aws:ec2/routeTable:RouteTable", f"network-{role}-rt", table, {"vpcId": vpc, "routes": []})
        return table

    def route(self, table: str, destination: str, name: str, **target: str) -> None:
        api = {"gateway_id": "GatewayId", "nat_gateway_id": "NatGatewayId"}
        self.ec2.create_route(RouteTableId=table, DestinationCidrBlock=destination,
                              **{api[k]: v for k, v in target.items()})
        outputs = {"routeTableId": table, "destinationCidrBlock": destination, "origin": "CreateRoute", "state": "active"}
        outputs.update({{"gateway_id": "gatewayId", "nat_gateway_id": "natGatewayId"}[k]: v for k, v in target.items()})
        # The provider's id for a route: r-<table id><crc32 of the destination>.
        self.state.add("aws:ec2/route:Route", f"network-{name}", f"r-{table}{zlib.crc32(destination.encode())}", outputs)

    # --- security groups and compute -----------------------------------------------------
    def security_groups(self, scale: int) -> None:
        ec2, state, vpc = self.ec2, self.state, self.ids["vpc"]
        self.ids["sgs"] = []
        for index in range(scale):
            group = ec2.create_security_group(GroupName=f"api-{index}", Description=f"API hosts {index}", VpcId=vpc,
                                              TagSpecifications=[{"ResourceType": "security-group",
                                                                  "Tags": aws_tags(f"api-{index}")}])["GroupId"]
            self.ids["sgs"].append(group)
            # Like the provider: a group without inline egress loses AWS's allow-all egress rule.
            for rule in ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroupRules"]:
                ec2.revoke_security_group_egress(GroupId=group, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]])
            state.add("aws:ec2/securityGroup:SecurityGroup", f"sg-api-{index}", group,
                      {"vpcId": vpc, "name": f"api-{index}", "description": f"API hosts {index}", "ingress": [], "egress": []},
                      inputs={"vpcId": vpc, "description": f"API hosts {index}"})
            for port, cidr in ((80, "10.30.0.0/16"), (9100, "10.30.64.0/20")):
                rule = ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}])["SecurityGroupRules"][0]
                state.add("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", f"sg-api-{index}-in-{port}",
                          rule["SecurityGroupRuleId"], {"securityGroupId": group, "ipProtocol": "tcp", "fromPort": port,
                                                        "toPort": port, "cidrIpv4": cidr,
                                                        "securityGroupRuleId": rule["SecurityGroupRuleId"]})
            rule = ec2.authorize_security_group_egress(GroupId=group, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])["SecurityGroupRules"][0]
            state.add("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", f"sg-api-{index}-out-https",
                      rule["SecurityGroupRuleId"], {"securityGroupId": group, "ipProtocol": "tcp", "fromPort": 443,
                                                    "toPort": 443, "cidrIpv4": "0.0.0.0/0"})

    def instances(self, scale: int) -> None:
        self.ids["instances"] = []
        for index in range(scale):
            subnet = self.ids["subnets"][index % len(self.ids["subnets"])]
            group = self.ids["sgs"][index % len(self.ids["sgs"])]
            instance = self.ec2.run_instances(
                ImageId="ami-12c6146b", InstanceType="t3.small", MinCount=1, MaxCount=1, SubnetId=subnet,
                SecurityGroupIds=[group], MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                TagSpecifications=[{"ResourceType": "instance", "Tags": aws_tags(f"monitoring-{index}")}])["Instances"][0]
            self.ids["instances"].append(instance["InstanceId"])
            self.state.add("aws:ec2/instance:Instance", f"monitoring-{index}", instance["InstanceId"], {
                "instanceType": "t3.small", "subnetId": subnet, "vpcSecurityGroupIds": [group], "publicIp": "",
                "associatePublicIpAddress": False, "userData": SECRET_SIG | {"ciphertext": "v1:abc"},
                "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1, "httpEndpoint": "enabled"}},
                additionalSecretOutputs=["userData"])

    def api_tier(self) -> None:
        """Launch template, auto-scaling group behind a load balancer with HTTP and HTTPS listeners."""
        ec2, state = self.ec2, self.state
        subnets, group = self.ids["subnets"][:2], self.ids["sgs"][0]
        template = ec2.create_launch_template(LaunchTemplateName=f"{PROJECT}-{STACK}-api", LaunchTemplateData={
            "ImageId": "ami-12c6146b", "InstanceType": "t3.small", "SecurityGroupIds": [group],
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}},
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": aws_tags("api-lt")}])["LaunchTemplate"]
        state.add("aws:ec2/launchTemplate:LaunchTemplate", "api-lt", template["LaunchTemplateId"],
                  {"name": template["LaunchTemplateName"], "latestVersion": 1, "defaultVersion": 1})
        lb = self.elbv2.create_load_balancer(Name=f"{STACK}-api", Subnets=subnets, SecurityGroups=[group],
                                             Scheme="internet-facing", Type="application",
                                             Tags=aws_tags("alb"))["LoadBalancers"][0]
        state.add("aws:lb/loadBalancer:LoadBalancer", "api-alb", lb["LoadBalancerArn"], {
            "arn": lb["LoadBalancerArn"], "internal": False, "loadBalancerType": "application",
            "securityGroups": [group], "subnets": subnets})
        target_group = self.elbv2.create_target_group(Name=f"{STACK}-api", Protocol="HTTP", Port=80,
                                                      VpcId=self.ids["vpc"], TargetType="instance")["TargetGroups"][0]
        state.add("aws:lb/targetGroup:TargetGroup", "api-tg", target_group["TargetGroupArn"],
                  {"protocol": "HTTP", "port": 80, "vpcId": self.ids["vpc"]})
        certificate = self.acm.request_certificate(DomainName="api.example.com")["CertificateArn"]
        https = self.elbv2.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTPS", Port=443,
                                           SslPolicy="ELBSecurityPolicy-TLS13-1-2-2021-06",
                                           Certificates=[{"CertificateArn": certificate}],
                                           DefaultActions=[{"Type": "forward", "TargetGroupArn": target_group["TargetGroupArn"]}])["Listeners"][0]
        state.add("aws:lb/listener:Listener", "api-https", https["ListenerArn"], {
            "protocol": "HTTPS", "port": 443, "sslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06", "certificateArn": certificate})
        redirect = self.elbv2.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80, DefaultActions=[
            {"Type": "redirect", "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"}}])["Listeners"][0]
        # An export records an HTTP listener's computed sslPolicy and certificateArn as "".
        state.add("aws:lb/listener:Listener", "api-http-redirect", redirect["ListenerArn"],
                  {"protocol": "HTTP", "port": 80, "sslPolicy": "", "certificateArn": ""})
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=f"{PROJECT}-{STACK}-api", MinSize=1, MaxSize=3, DesiredCapacity=1,
            LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"},
            VPCZoneIdentifier=",".join(subnets), TargetGroupARNs=[target_group["TargetGroupArn"]], HealthCheckType="ELB",
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in OUR_TAGS.items()])
        state.add("aws:autoscaling/group:Group", "api-asg", f"{PROJECT}-{STACK}-api", {
            "name": f"{PROJECT}-{STACK}-api", "minSize": 1, "maxSize": 3, "desiredCapacity": 1, "healthCheckType": "ELB",
            "targetGroupArns": [target_group["TargetGroupArn"]]}, inputs={"minSize": 1, "maxSize": 3})

    # --- data, encryption, secrets -------------------------------------------------------
    def data_tier(self, scale: int) -> None:
        state = self.state
        key = self.kms.create_key(Description="data key", Tags=[{"TagKey": k, "TagValue": v} for k, v in OUR_TAGS.items()])["KeyMetadata"]
        self.kms.enable_key_rotation(KeyId=key["KeyId"])
        self.ids["key_arn"] = key["Arn"]
        state.add("aws:kms/key:Key", "data-key", key["KeyId"], {"arn": key["Arn"], "keyId": key["KeyId"],
                                                               "enableKeyRotation": True, "isEnabled": True})

        bucket = f"{PROJECT}-{STACK}-backups"
        self.ids["bucket"] = bucket
        self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        self.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": aws_tags("backups")})
        state.add("aws:s3/bucket:Bucket", "backups-bucket", bucket, {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}"})
        self.s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key["Arn"]},
             "BucketKeyEnabled": True}]})
        state.add("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                  "backups-encryption", bucket, {"bucket": bucket, "rules": [
                      {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": key["Arn"]},
                       "bucketKeyEnabled": True}]})
        self.s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
        state.add("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "backups-public-access", bucket, {
            "bucket": bucket, "blockPublicAcls": True, "ignorePublicAcls": True, "blockPublicPolicy": True,
            "restrictPublicBuckets": True})
        policy = {"Version": "2012-10-17", "Statement": [{
            "Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}
        self.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        state.add("aws:s3/bucketPolicy:BucketPolicy", "backups-policy", bucket, {"bucket": bucket, "policy": json.dumps(policy)})
        self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        state.add("aws:s3/bucketVersioning:BucketVersioning", "backups-versioning", bucket,
                  {"bucket": bucket, "versioningConfiguration": {"status": "Enabled", "mfaDelete": ""}})

        self.ids["secrets"] = []
        for index in range(scale):
            secret = self.secretsmanager.create_secret(Name=f"{PROJECT}/{STACK}/integration-{index}", KmsKeyId=key["Arn"],
                                                       SecretString=json.dumps({"TOKEN": f"value-{index}"}),
                                                       Tags=aws_tags(f"integration-{index}"))["ARN"]
            self.ids["secrets"].append(secret)
            state.add("aws:secretsmanager/secret:Secret", f"secret-{index}", secret,
                      {"arn": secret, "name": f"{PROJECT}/{STACK}/integration-{index}", "kmsKeyId": key["Arn"]})
            self.logs.create_log_group(logGroupName=f"/{PROJECT}/{STACK}/app-{index}", tags=OUR_TAGS)
            self.logs.put_retention_policy(logGroupName=f"/{PROJECT}/{STACK}/app-{index}", retentionInDays=30)
            state.add("aws:cloudwatch/logGroup:LogGroup", f"app-logs-{index}", f"/{PROJECT}/{STACK}/app-{index}",
                      {"name": f"/{PROJECT}/{STACK}/app-{index}", "retentionInDays": 30})
        db_secret = self.ids["secrets"][0]
        self.secretsmanager.rotate_secret(SecretId=db_secret, RotationRules={"AutomaticallyAfterDays": 30})
        state.add("aws:secretsmanager/secretRotation:SecretRotation", "db-app-rotation", db_secret,
                  {"secretId": db_secret, "rotationEnabled": True, "rotationRules": {"automaticallyAfterDays": 30}})

        database_subnets = self.ids["subnets"][:2]
        self.rds.create_db_subnet_group(DBSubnetGroupName=f"{STACK}-db", DBSubnetGroupDescription="db",
                                        SubnetIds=database_subnets)
        db = self.rds.create_db_instance(
            DBInstanceIdentifier=f"{PROJECT}-{STACK}-db", Engine="postgres", DBInstanceClass="db.t4g.medium",
            AllocatedStorage=20, MasterUsername="psychology", MasterUserPassword="not-a-real-password-123",
            DBSubnetGroupName=f"{STACK}-db", StorageEncrypted=True, KmsKeyId=key["Arn"], MultiAZ=True,
            DeletionProtection=True, PubliclyAccessible=False, BackupRetentionPeriod=30, AutoMinorVersionUpgrade=True,
            Tags=aws_tags("db"))["DBInstance"]
        state.add("aws:rds/instance:Instance", "db", db["DbiResourceId"], {
            "identifier": db["DBInstanceIdentifier"], "resourceId": db["DbiResourceId"], "arn": db["DBInstanceArn"],
            "publiclyAccessible": False, "storageEncrypted": True, "multiAz": True, "deletionProtection": True,
            "backupRetentionPeriod": 30, "kmsKeyId": key["Arn"], "autoMinorVersionUpgrade": True,
            "password": SECRET_SIG | {"ciphertext": "v1:xyz"}})

        self.elasticache.create_cache_subnet_group(CacheSubnetGroupName=f"{STACK}-cache", CacheSubnetGroupDescription="cache",
                                                   SubnetIds=database_subnets)
        group = self.elasticache.create_replication_group(
            ReplicationGroupId=f"{STACK}-redis", ReplicationGroupDescription="redis", Engine="redis",
            CacheNodeType="cache.t4g.small", NumCacheClusters=2, CacheSubnetGroupName=f"{STACK}-cache",
            AtRestEncryptionEnabled=True, TransitEncryptionEnabled=True, AutomaticFailoverEnabled=True, MultiAZEnabled=True,
            AuthToken="redis-auth-token-0123456789", SnapshotRetentionLimit=7,
            Tags=aws_tags("redis"))["ReplicationGroup"]
        state.add("aws:elasticache/replicationGroup:ReplicationGroup", "redis", group["ReplicationGroupId"], {
            "atRestEncryptionEnabled": True, "transitEncryptionEnabled": True, "automaticFailoverEnabled": True,
            "multiAzEnabled": True, "snapshotRetentionLimit": 7,
            "authToken": SECRET_SIG | {"ciphertext": "v1:redis"}})

    def functions(self) -> None:
        role = self.iam.create_role(RoleName=f"{STACK}-dbops", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                    "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("handler.py", "def handler(event, context):\n    return event\n")
        subnets, group = self.ids["subnets"][:2], self.ids["sgs"][0]
        self.lambda_.create_function(FunctionName=f"{PROJECT}-{STACK}-dbops", Runtime="python3.12", Role=role,
                                     Handler="handler.handler", Code={"ZipFile": archive.getvalue()},
                                     VpcConfig={"SubnetIds": subnets, "SecurityGroupIds": [group]}, Tags=OUR_TAGS)
        self.state.add("aws:lambda/function:Function", "dbops", f"{PROJECT}-{STACK}-dbops", {
            "name": f"{PROJECT}-{STACK}-dbops", "runtime": "python3.12", "role": role,
            "vpcConfig": {"subnetIds": subnets, "securityGroupIds": [group], "vpcId": self.ids["vpc"]}})
        topic = self.sns.create_topic(Name=f"{PROJECT}-{STACK}-alarms", Tags=aws_tags("alarms"))["TopicArn"]
        self.state.add("aws:sns/topic:Topic", "alarms", topic, {"arn": topic, "name": f"{PROJECT}-{STACK}-alarms"})

    def build(self, scale: int) -> World:
        self.network(scale)
        self.security_groups(scale)
        self.instances(scale)
        self.api_tier()
        self.data_tier(scale)
        self.functions()
        return self


def run_scan(state_file: Path, endpoint: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.drift", "scan", "--state", str(state_file),
                           "--endpoint-url", endpoint, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ})


def scan_json(state_file: Path, endpoint: str) -> tuple[int, dict[str, Any]]:
    result = run_scan(state_file, endpoint, "--json")
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_scan_of_an_untouched_platform_reports_no_drift(moto: MotoServer, tmp_path: Path) -> None:
    world = World(moto).build(scale=1)
    code, report = scan_json(world.state.write(tmp_path / "prod.json"), moto.endpoint_url)
    assert (report["missing"], report["changed"], report["unmanaged"]) == ([], [], []), report
    assert code == 0 and report["drifted"] is False
    assert report["summary"]["managed"] == world.state.count()
    assert report["summary"]["coverage_percent"] == 100.0
    # The auto-scaling group's instance and the endpoint's route are not ours to report.
    assert report["summary"]["managed_indirectly"] >= 1
    assert report["not_checked_types"] == {}
    assert report["api_calls"]["total"] > 0


def test_scan_finds_each_kind_of_drift_and_nothing_else(moto: MotoServer, tmp_path: Path) -> None:
    world = World(moto).build(scale=1)
    state_file = world.state.write(tmp_path / "prod.json")
    ec2, vpc, group = world.ec2, world.ids["vpc"], world.ids["sgs"][0]

    # Out of band: SSH opened to the world, backups' encryption removed, the monitoring host
    # deleted, and a hand-made security group in our VPC.
    added = ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])["SecurityGroupRules"][0]
    world.s3.delete_bucket_encryption(Bucket=world.ids["bucket"])
    ec2.terminate_instances(InstanceIds=[world.ids["instances"][0]])
    rogue = ec2.create_security_group(GroupName="debug", Description="made by hand", VpcId=vpc)["GroupId"]

    result = run_scan(state_file, moto.endpoint_url, "--json")
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)

    assert [(f["type"], f["id"]) for f in report["missing"]] == [
        ("aws:ec2/instance:Instance", world.ids["instances"][0])]
    assert [(f["type"], f["id"]) for f in report["changed"]] == [
        ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", world.ids["bucket"])]
    changes = {c["property"]: (c["state"], c["live"]) for c in report["changed"][0]["changes"]}
    assert changes["sseAlgorithm"] == ("aws:kms", None)
    assert sorted((f["type"], f["id"]) for f in report["unmanaged"]) == sorted([
        ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", added["SecurityGroupRuleId"]),
        ("aws:ec2/securityGroup:SecurityGroup", rogue)])
    rule = next(f for f in report["unmanaged"] if f["id"] == added["SecurityGroupRuleId"])
    assert "22" in rule["name"] and "0.0.0.0/0" in rule["name"] and group in rule["name"]

    managed = world.state.count() - 1
    assert report["summary"] == {"managed": managed, "missing": 1, "changed": 1, "unmanaged": 2,
                                 "managed_indirectly": report["summary"]["managed_indirectly"],
                                 "coverage_percent": round(100 * managed / (managed + 2), 1)}
    # Secrets in the export (user data, DB password, Redis AUTH token) never reach the output.
    assert "v1:" not in result.stdout and "ciphertext" not in result.stdout

    human = run_scan(state_file, moto.endpoint_url)
    assert human.returncode == 3
    assert "MISSING" in human.stdout and "CHANGED" in human.stdout and "UNMANAGED" in human.stdout
    assert "sseAlgorithm: \"aws:kms\" -> null" in human.stdout
    assert human.stderr.strip().splitlines()[-1].startswith("FAIL: 1 missing, 1 changed, 2 unmanaged")


def test_more_safety_properties_are_compared(moto: MotoServer, tmp_path: Path) -> None:
    world = World(moto).build(scale=1)
    state_file = world.state.write(tmp_path / "prod.json")
    bucket = world.ids["bucket"]
    world.s3.delete_public_access_block(Bucket=bucket)
    world.s3.delete_bucket_policy(Bucket=bucket)
    world.kms.disable_key_rotation(KeyId=world.ids["key_arn"])
    # (moto cannot cancel a rotation without a rotation function; a longer schedule is drift too.)
    world.secretsmanager.rotate_secret(SecretId=world.ids["secrets"][0], RotationRules={"AutomaticallyAfterDays": 365})
    world.rds.modify_db_instance(DBInstanceIdentifier=f"{PROJECT}-{STACK}-db", PubliclyAccessible=True,
                                 DeletionProtection=False, ApplyImmediately=True)
    world.autoscaling.update_auto_scaling_group(AutoScalingGroupName=f"{PROJECT}-{STACK}-api", MaxSize=10)
    world.ec2.modify_subnet_attribute(SubnetId=world.ids["subnets"][1], MapPublicIpOnLaunch={"Value": True})

    code, report = scan_json(state_file, moto.endpoint_url)
    assert code == 3 and report["missing"] == [] and report["unmanaged"] == []
    changed = {f["type"].split(":")[-1]: {c["property"]: (c["state"], c["live"]) for c in f["changes"]}
               for f in report["changed"]}
    assert changed == {
        "BucketPublicAccessBlock": {k: (True, False) for k in ("blockPublicAcls", "blockPublicPolicy",
                                                               "ignorePublicAcls", "restrictPublicBuckets")},
        "BucketPolicy": {"policy": (changed["BucketPolicy"]["policy"][0], None)},
        "Key": {"enableKeyRotation": (True, False)},
        "SecretRotation": {"rotationRules.automaticallyAfterDays": (30, 365)},
        "Instance": {"publiclyAccessible": (False, True), "deletionProtection": (True, False)},
        "Group": {"maxSize": (3, 10)},
        "Subnet": {"mapPublicIpOnLaunch": (False, True)},
    }


def test_api_calls_stay_flat_when_resources_grow_tenfold(moto: MotoServer, tmp_path: Path) -> None:
    counts = {}
    sizes = {}
    for scale in (1, 10):
        moto.reset()
        world = World(moto).build(scale=scale)
        code, report = scan_json(world.state.write(tmp_path / f"prod-{scale}.json"), moto.endpoint_url)
        assert code == 0, report
        sizes[scale] = report["summary"]["managed"]
        counts[scale] = report["api_calls"]
    assert sizes[10] >= sizes[1] + 9 * 8  # subnets, groups, rules, instances, routes, secrets, logs grew
    assert counts[10] == counts[1], (counts[1], counts[10])


def test_scan_errors_are_one_line(moto: MotoServer, tmp_path: Path) -> None:
    missing = run_scan(tmp_path / "nope.json", moto.endpoint_url)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: --state {tmp_path / 'nope.json'}: no such file"
    (tmp_path / "bad.json").write_text(json.dumps({"version": 9, "deployment": {}}))
    bad = run_scan(tmp_path / "bad.json", moto.endpoint_url)
    assert bad.returncode == 2 and "unsupported stack export version 9" in bad.stderr
    assert "Traceback" not in bad.stderr
    unreachable = run_scan(World(moto).state.write(tmp_path / "empty.json"), "http://127.0.0.1:9", "--json")
    assert unreachable.returncode == 1 and unreachable.stdout == ""
    assert unreachable.stderr.strip().splitlines()[-1].startswith("error: ec2.describe_vpcs failed")


def test_other_stacks_resources_are_not_unmanaged(moto: MotoServer, tmp_path: Path) -> None:
    world = World(moto)
    world.state.add("aws:ec2/vpc:Vpc", "network-vpc", world.ec2.create_vpc(CidrBlock="10.30.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": aws_tags("vpc")}])["Vpc"]["VpcId"], {"cidrBlock": "10.30.0.0/16"})
    # The staging stack's bucket shares the account: it belongs to a state we did not pass.
    world.s3.create_bucket(Bucket=f"{PROJECT}-staging-backups", CreateBucketConfiguration={"LocationConstraint": REGION})
    world.s3.put_bucket_tagging(Bucket=f"{PROJECT}-staging-backups", Tagging={"TagSet": aws_tags("backups", stack="staging")})
    # A hand-made bucket with our project tag but no stack tag is ours, and unmanaged.
    world.s3.create_bucket(Bucket=f"{PROJECT}-scratch", CreateBucketConfiguration={"LocationConstraint": REGION})
    world.s3.put_bucket_tagging(Bucket=f"{PROJECT}-scratch", Tagging={"TagSet": [{"Key": "project", "Value": PROJECT}]})
    code, report = scan_json(world.state.write(tmp_path / "prod.json"), moto.endpoint_url)
    assert code == 3
    assert [(f["type"], f["id"]) for f in report["unmanaged"]] == [("aws:s3/bucket:Bucket", f"{PROJECT}-scratch")]
