"""VPC with three tiers per AZ: public (load balancer, NAT), private (application) and
database (isolated: no route to the internet, not even through NAT)."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.common import assume_role_policy, joined, name_tag, policy_json, type_token

# Interface endpoints that let private workloads (hosts, functions) reach the AWS APIs they
# use without the NAT gateway: secrets at boot and rotation, SSM sessions, KMS, logs, metrics.
INTERFACE_ENDPOINT_SERVICES = ("secretsmanager", "ssm", "ssmmessages", "ec2messages", "kms", "logs", "monitoring")


@dataclass
class NetworkArgs:
    vpc_cidr: str                            # config vpcCidr, e.g. "10.30.0.0/16"
    availability_zones: Sequence[str]        # the first azCount zones of the region; one subnet per tier in each
    public_subnet_cidrs: Sequence[str]       # config publicSubnetCidrs: one per AZ, in AZ order
    private_subnet_cidrs: Sequence[str]      # config privateSubnetCidrs: one per AZ, in AZ order
    database_subnet_cidrs: Sequence[str]     # config databaseSubnetCidrs: one per AZ, in AZ order
    nat_gateway_per_az: bool                 # config natGatewayPerAz: a NAT gateway per AZ, else one shared
    interface_endpoints: bool                # config interfaceEndpoints: the INTERFACE_ENDPOINT_SERVICES endpoints
    flow_log_retention_days: int             # config flowLogRetentionDays: days flow logs are kept
    flow_log_kms_key_arn: pulumi.Input[str]  # DataKey.arn: encrypts the flow-log group
    region: str                              # AWS region (config aws:region): the endpoints' service names
    account_id: str                          # this account's id: the flow-log role's confused-deputy guard


def _nth_ipv6_subnet(index: int) -> Callable[[str], str]:
    """The index-th /64 of the VPC's Amazon-provided /56."""
    def pick(block: str) -> str:
        return str(next(itertools.islice(ipaddress.ip_network(block).subnets(new_prefix=64), index, None)))
    return pick


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    vpc_cidr: str
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    database_subnet_ids: list[pulumi.Output[str]]
    db_subnet_group_name: pulumi.Output[str]
    cache_subnet_group_name: pulumi.Output[str]
    endpoint_security_group_id: pulumi.Output[str] | None
    nat_public_ips: list[pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(type_token("network", "Network"), name, None, opts)
        self.vpc_cidr = args.vpc_cidr
        vpc, igw = self._vpc(name, args)
        self.vpc_id = vpc.id
        public = self._subnets(name, args, vpc, "public", args.public_subnet_cidrs, ipv6=True)
        private = self._subnets(name, args, vpc, "private", args.private_subnet_cidrs)
        database = self._subnets(name, args, vpc, "database", args.database_subnet_cidrs)
        self.public_subnet_ids = [s.id for s in public]
        self.private_subnet_ids = [s.id for s in private]
        self.database_subnet_ids = [s.id for s in database]
        self._public_routes(name, args, vpc, igw, public)
        private_rts = self._private_routes(name, args, vpc, self._nat_gateways(name, args, igw, public), private)
        self._database_routes(name, args, vpc, database)
        self._subnet_groups(name)
        self._flow_logs(name, args, vpc)
        self._endpoints(name, args, vpc, private_rts)
        self.register_outputs({
            "vpc_id": self.vpc_id,
            "public_subnet_ids": self.public_subnet_ids,
            "private_subnet_ids": self.private_subnet_ids,
            "database_subnet_ids": self.database_subnet_ids,
            "db_subnet_group_name": self.db_subnet_group_name,
            "cache_subnet_group_name": self.cache_subnet_group_name,
            "flow_log_group_name": self.flow_log_group_name,
        })

    def _vpc(self, name: str, args: NetworkArgs) -> tuple[aws.ec2.Vpc, aws.ec2.InternetGateway]:
        child = pulumi.ResourceOptions(parent=self)
        vpc = aws.ec2.Vpc(f"{name}-vpc", aws.ec2.VpcArgs(
            cidr_block=args.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            # The public tier is dual-stack so the load balancer answers IPv6 clients too.
            assign_generated_ipv6_cidr_block=True,
            tags=name_tag("vpc"),
        ), child)
        # Adopt the default security group and strip every rule from it, so nothing that
        # lands in it by accident gets any traffic (CIS 5.4 / FSBP EC2.2).
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", aws.ec2.DefaultSecurityGroupArgs(
            vpc_id=vpc.id, ingress=[], egress=[], tags=name_tag("default-sg-unused"),
        ), child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", aws.ec2.InternetGatewayArgs(
            vpc_id=vpc.id, tags=name_tag("igw")), child)
        return vpc, igw

    def _subnets(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, tier: str, cidrs: Sequence[str],
                 ipv6: bool = False) -> list[aws.ec2.Subnet]:
        """One subnet of the tier per AZ."""
        out = []
        for index, (az, cidr) in enumerate(zip(args.availability_zones, cidrs, strict=True)):
            ipv6_block = vpc.ipv6_cidr_block.apply(_nth_ipv6_subnet(index)) if ipv6 else None
            out.append(aws.ec2.Subnet(f"{name}-{tier}-{az}", aws.ec2.SubnetArgs(
                vpc_id=vpc.id,
                cidr_block=cidr,
                availability_zone=az,
                ipv6_cidr_block=ipv6_block,
                # Nothing in this VPC needs an automatic public address: the load balancer
                # and NAT gateways carry their own.
                map_public_ip_on_launch=False,
                assign_ipv6_address_on_creation=False,
                tags=name_tag(f"{tier}-{az}", {"tier": tier}),
            ), pulumi.ResourceOptions(parent=self)))
        return out

    def _public_routes(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, igw: aws.ec2.InternetGateway,
                       public: Sequence[aws.ec2.Subnet]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        public_rt = aws.ec2.RouteTable(f"{name}-public-rt", aws.ec2.RouteTableArgs(
            vpc_id=vpc.id, tags=name_tag("public-rt", {"tier": "public"})), child)
        aws.ec2.Route(f"{name}-public-default-ipv4", aws.ec2.RouteArgs(
            route_table_id=public_rt.id, destination_cidr_block="0.0.0.0/0", gateway_id=igw.id), child)
        aws.ec2.Route(f"{name}-public-default-ipv6", aws.ec2.RouteArgs(
            route_table_id=public_rt.id, destination_ipv6_cidr_block="::/0", gateway_id=igw.id), child)
        for subnet, az in zip(public, args.availability_zones, strict=True):
            aws.ec2.RouteTableAssociation(f"{name}-public-rta-{az}", aws.ec2.RouteTableAssociationArgs(
                subnet_id=subnet.id, route_table_id=public_rt.id), child)

    def _nat_gateways(self, name: str, args: NetworkArgs, igw: aws.ec2.InternetGateway,
                      public: Sequence[aws.ec2.Subnet]) -> list[aws.ec2.NatGateway]:
        """One NAT gateway per AZ, or one for all (nat_gateway_per_az), in the public subnets."""
        nats = []
        self.nat_public_ips = []
        for index in range(nat_gateway_count(args)):
            az = args.availability_zones[index]
            eip = aws.ec2.Eip(f"{name}-nat-eip-{az}", aws.ec2.EipArgs(
                domain="vpc", tags=name_tag(f"nat-{az}")), pulumi.ResourceOptions(parent=self, depends_on=[igw]))
            nats.append(aws.ec2.NatGateway(f"{name}-nat-{az}", aws.ec2.NatGatewayArgs(
                allocation_id=eip.allocation_id, subnet_id=public[index].id, connectivity_type="public",
                tags=name_tag(f"nat-{az}")), pulumi.ResourceOptions(parent=self, depends_on=[igw])))
            self.nat_public_ips.append(eip.public_ip)
        return nats

    def _private_routes(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, nats: Sequence[aws.ec2.NatGateway],
                        private: Sequence[aws.ec2.Subnet]) -> list[aws.ec2.RouteTable]:
        """One private route table per NAT gateway: with a NAT per AZ, an AZ outage never
        cuts the other AZs' egress."""
        child = pulumi.ResourceOptions(parent=self)
        private_rts = []
        for index, nat in enumerate(nats):
            label = args.availability_zones[index] if args.nat_gateway_per_az else "shared"
            rt = aws.ec2.RouteTable(f"{name}-private-rt-{label}", aws.ec2.RouteTableArgs(
                vpc_id=vpc.id, tags=name_tag(f"private-rt-{label}", {"tier": "private"})), child)
            aws.ec2.Route(f"{name}-private-default-{label}", aws.ec2.RouteArgs(
                route_table_id=rt.id, destination_cidr_block="0.0.0.0/0", nat_gateway_id=nat.id), child)
            private_rts.append(rt)
        for index, (subnet, az) in enumerate(zip(private, args.availability_zones, strict=True)):
            rt = private_rts[index if args.nat_gateway_per_az else 0]
            aws.ec2.RouteTableAssociation(f"{name}-private-rta-{az}", aws.ec2.RouteTableAssociationArgs(
                subnet_id=subnet.id, route_table_id=rt.id), child)
        return private_rts

    def _database_routes(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc,
                         database: Sequence[aws.ec2.Subnet]) -> None:
        """The database tier's table holds only the implicit local route."""
        child = pulumi.ResourceOptions(parent=self)
        database_rt = aws.ec2.RouteTable(f"{name}-database-rt", aws.ec2.RouteTableArgs(
            vpc_id=vpc.id, tags=name_tag("database-rt", {"tier": "database"})), child)
        for subnet, az in zip(database, args.availability_zones, strict=True):
            aws.ec2.RouteTableAssociation(f"{name}-database-rta-{az}", aws.ec2.RouteTableAssociationArgs(
                subnet_id=subnet.id, route_table_id=database_rt.id), child)

    def _subnet_groups(self, name: str) -> None:
        child = pulumi.ResourceOptions(parent=self)
        db_subnet_group = aws.rds.SubnetGroup(f"{name}-db-subnets", aws.rds.SubnetGroupArgs(
            subnet_ids=self.database_subnet_ids, description="Isolated database subnets for PostgreSQL",
            tags=name_tag("db-subnets")), child)
        cache_subnet_group = aws.elasticache.SubnetGroup(f"{name}-cache-subnets", aws.elasticache.SubnetGroupArgs(
            subnet_ids=self.database_subnet_ids, description="Isolated database subnets for Redis",
            tags=name_tag("cache-subnets")), child)
        self.db_subnet_group_name = db_subnet_group.name
        self.cache_subnet_group_name = cache_subnet_group.name

    def _flow_logs(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc) -> None:
        """Every accepted and rejected flow, encrypted with the data key."""
        child = pulumi.ResourceOptions(parent=self)
        flow_log_group = aws.cloudwatch.LogGroup(f"{name}-flow-logs", aws.cloudwatch.LogGroupArgs(
            name=f"/psychology-api/{pulumi.get_stack()}/vpc-flow-logs",
            retention_in_days=args.flow_log_retention_days,
            kms_key_id=args.flow_log_kms_key_arn,
            tags=name_tag("vpc-flow-logs")), child)
        flow_role = aws.iam.Role(f"{name}-flow-logs-role", aws.iam.RoleArgs(
            description="Lets VPC Flow Logs write to its log group",
            assume_role_policy=assume_role_policy("vpc-flow-logs.amazonaws.com", args.account_id),
            tags=name_tag("flow-logs-role")), child)
        aws.iam.RolePolicy(f"{name}-flow-logs-write", aws.iam.RolePolicyArgs(
            role=flow_role.id, policy=policy_json(flow_log_write_statements(flow_log_group.arn))), child)
        aws.ec2.FlowLog(f"{name}-flow-log", aws.ec2.FlowLogArgs(
            vpc_id=vpc.id, traffic_type="ALL", log_destination_type="cloud-watch-logs",
            log_destination=flow_log_group.arn, iam_role_arn=flow_role.arn,
            max_aggregation_interval=60, tags=name_tag("flow-log")), child)
        self.flow_log_group_name = flow_log_group.name

    def _endpoints(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, private_rts: Sequence[aws.ec2.RouteTable]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        # S3 through a gateway endpoint: backups and release archives never cross the NAT.
        aws.ec2.VpcEndpoint(f"{name}-s3-endpoint", aws.ec2.VpcEndpointArgs(
            vpc_id=vpc.id, service_name=f"com.amazonaws.{args.region}.s3", vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_rts], tags=name_tag("s3-endpoint")), child)
        self.endpoint_security_group_id = None
        if not args.interface_endpoints:
            return
        endpoint_sg = aws.ec2.SecurityGroup(f"{name}-endpoints-sg", aws.ec2.SecurityGroupArgs(
            vpc_id=vpc.id, description="Interface VPC endpoints: HTTPS from inside the VPC only",
            tags=name_tag("endpoints-sg", {"role": "endpoints"})), child)
        aws.vpc.SecurityGroupIngressRule(f"{name}-endpoints-in-443-vpc", aws.vpc.SecurityGroupIngressRuleArgs(
            security_group_id=endpoint_sg.id, ip_protocol="tcp", from_port=443, to_port=443,
            cidr_ipv4=args.vpc_cidr, description="HTTPS to AWS APIs from workloads in the VPC"), child)
        self.endpoint_security_group_id = endpoint_sg.id
        for service in INTERFACE_ENDPOINT_SERVICES:
            aws.ec2.VpcEndpoint(f"{name}-{service}-endpoint", aws.ec2.VpcEndpointArgs(
                vpc_id=vpc.id, service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Interface", private_dns_enabled=True,
                subnet_ids=self.private_subnet_ids, security_group_ids=[endpoint_sg.id],
                tags=name_tag(f"{service}-endpoint")), child)


def nat_gateway_count(args: NetworkArgs) -> int:
    return len(args.availability_zones) if args.nat_gateway_per_az else 1


def flow_log_write_statements(log_group_arn: pulumi.Input[str]) -> list[dict[str, Any]]:
    """The flow-log role's policy: write to its own log group and nothing else."""
    return [{
        "Sid": "WriteFlowLogs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        "Resource": [log_group_arn, joined(log_group_arn, ":*")],
    }]
