"""The network baseline under mocks, for both stacks."""

from __future__ import annotations

import ipaddress

from harness.mock_engine import Plan, PlannedResource, run_program

SUBNET = "aws:ec2/subnet:Subnet"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
NAT = "aws:ec2/natGateway:NatGateway"
IGW = "aws:ec2/internetGateway:InternetGateway"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"

EXPECTED = {"staging": {"azs": 2, "nats": 1}, "prod": {"azs": 3, "nats": 3}}


def subnets(plan: Plan, tier: str) -> list[PlannedResource]:
    return [s for s in plan.of_type(SUBNET) if s.inputs["tags"]["tier"] == tier]


def tables_of(plan: Plan, tier: str) -> set[str]:
    ids = {s.id for s in subnets(plan, tier)}
    return {a.inputs["routeTableId"] for a in plan.of_type(ASSOCIATION) if a.inputs["subnetId"] in ids}


def routes_of(plan: Plan, table_id: str) -> list[PlannedResource]:
    return [r for r in plan.of_type(ROUTE) if r.inputs["routeTableId"] == table_id]


def test_vpc_has_dns_and_the_configured_cidr(plan: Plan) -> None:
    vpc = plan.one("aws:ec2/vpc:Vpc")
    assert vpc.inputs["enableDnsSupport"] is True and vpc.inputs["enableDnsHostnames"] is True
    assert vpc.inputs["cidrBlock"] == plan.outputs["vpc_cidr"]
    assert plan.outputs["vpc_id"] == vpc.id


def test_three_tiers_in_every_az(plan: Plan) -> None:
    count = EXPECTED[plan.stack]["azs"]
    assert len(plan.outputs["availability_zones"]) == count
    for tier in ("public", "private", "database"):
        tier_subnets = subnets(plan, tier)
        assert len(tier_subnets) == count
        assert sorted(s.inputs["availabilityZone"] for s in tier_subnets) == plan.outputs["availability_zones"]
        assert plan.outputs[f"{tier}_subnet_ids"] == [s.id for s in sorted(tier_subnets, key=lambda s: s.inputs["availabilityZone"])]


def test_no_subnet_maps_public_ips(plan: Plan) -> None:
    for subnet in plan.of_type(SUBNET):
        assert subnet.inputs["mapPublicIpOnLaunch"] is False, subnet.name


def test_only_the_public_tier_is_dual_stack(plan: Plan) -> None:
    for subnet in plan.of_type(SUBNET):
        has_v6 = "ipv6CidrBlock" in subnet.inputs
        assert has_v6 == (subnet.inputs["tags"]["tier"] == "public"), subnet.name
    blocks = [ipaddress.ip_network(s.inputs["ipv6CidrBlock"]) for s in subnets(plan, "public")]
    assert all(b.prefixlen == 64 for b in blocks) and len(set(blocks)) == len(blocks)


def test_subnets_do_not_overlap_and_fit_the_vpc(plan: Plan) -> None:
    vpc = ipaddress.ip_network(plan.outputs["vpc_cidr"])
    nets = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in plan.of_type(SUBNET)]
    assert all(n.subnet_of(vpc) for n in nets)  # type: ignore[arg-type]
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])


def test_nat_gateways_per_az_in_prod_and_shared_in_staging(plan: Plan) -> None:
    nats = plan.of_type(NAT)
    assert len(nats) == EXPECTED[plan.stack]["nats"]
    public_ids = {s.id for s in subnets(plan, "public")}
    assert all(n.inputs["subnetId"] in public_ids for n in nats)
    assert len(plan.outputs["nat_public_ips"]) == len(nats)


def test_public_tier_routes_to_the_internet_gateway(plan: Plan) -> None:
    igw = plan.one(IGW)
    (table,) = tables_of(plan, "public")
    routes = routes_of(plan, table)
    assert {r.inputs.get("destinationCidrBlock") or r.inputs.get("destinationIpv6CidrBlock") for r in routes} == {"0.0.0.0/0", "::/0"}
    assert all(r.inputs["gatewayId"] == igw.id for r in routes)


def test_private_tier_leaves_through_nat_in_its_own_az(plan: Plan) -> None:
    nat_by_id = {n.id: n for n in plan.of_type(NAT)}
    subnet_az = {s.id: s.inputs["availabilityZone"] for s in plan.of_type(SUBNET)}
    for subnet in subnets(plan, "private"):
        (assoc,) = [a for a in plan.of_type(ASSOCIATION) if a.inputs["subnetId"] == subnet.id]
        (route,) = routes_of(plan, assoc.inputs["routeTableId"])
        assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0"
        nat = nat_by_id[route.inputs["natGatewayId"]]
        if plan.stack == "prod":
            assert subnet_az[nat.inputs["subnetId"]] == subnet.inputs["availabilityZone"]


def test_database_tier_has_no_route_to_internet_or_nat(plan: Plan) -> None:
    tables = tables_of(plan, "database")
    assert len(tables) == 1
    for table in tables:
        assert routes_of(plan, table) == []
    # Nor does any gateway endpoint or other route reach into the database tables.
    for endpoint in plan.of_type(ENDPOINT):
        assert not tables & set(endpoint.inputs.get("routeTableIds", []))


def test_subnet_groups_span_the_database_subnets(plan: Plan) -> None:
    db_ids = sorted(plan.outputs["database_subnet_ids"])
    assert sorted(plan.one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"]) == db_ids
    assert sorted(plan.one("aws:elasticache/subnetGroup:SubnetGroup").inputs["subnetIds"]) == db_ids


def test_flow_logs_go_to_an_encrypted_log_group_with_retention(plan: Plan) -> None:
    flow = plan.one("aws:ec2/flowLog:FlowLog")
    group = plan.one("aws:cloudwatch/logGroup:LogGroup", "network-flow-logs")
    assert flow.inputs["vpcId"] == plan.outputs["vpc_id"]
    assert flow.inputs["trafficType"] == "ALL"
    assert flow.inputs["logDestination"] == group.outputs["arn"]
    assert group.inputs["kmsKeyId"] == plan.outputs["kms_key_arn"]
    assert group.inputs["retentionInDays"] == 365  # security-relevant: a year in both stacks
    role = plan.by_id(next(r.id for r in plan.of_type("aws:iam/role:Role") if r.outputs["arn"] == flow.inputs["iamRoleArn"]))
    assert role is not None and "vpc-flow-logs.amazonaws.com" in role.inputs["assumeRolePolicy"]
    assert '"aws:SourceAccount"' in role.inputs["assumeRolePolicy"]


def test_s3_gateway_endpoint_serves_the_private_tier(plan: Plan) -> None:
    (s3,) = [e for e in plan.of_type(ENDPOINT) if e.inputs["serviceName"].endswith(".s3")]
    assert s3.inputs["vpcEndpointType"] == "Gateway"
    assert set(s3.inputs["routeTableIds"]) == tables_of(plan, "private")


def test_interface_endpoints_only_when_configured(plan: Plan) -> None:
    interface = [e for e in plan.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Interface"]
    if plan.stack == "staging":
        assert interface == [] and "endpoints" not in plan.outputs["security_group_ids"]
        return
    services = {e.inputs["serviceName"].rsplit(".", 1)[1] for e in interface}
    assert {"secretsmanager", "ssm", "ssmmessages", "ec2messages", "kms", "logs"} <= services
    for endpoint in interface:
        assert endpoint.inputs["privateDnsEnabled"] is True
        assert sorted(endpoint.inputs["subnetIds"]) == sorted(plan.outputs["private_subnet_ids"])
        assert endpoint.inputs["securityGroupIds"] == [plan.outputs["security_group_ids"]["endpoints"]]


def test_default_security_group_is_stripped(plan: Plan) -> None:
    default = plan.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert default.inputs["vpcId"] == plan.outputs["vpc_id"]
    assert default.inputs.get("ingress", []) == [] and default.inputs.get("egress", []) == []


def test_staging_can_opt_into_a_nat_per_az() -> None:
    plan = run_program("staging", overrides={"natGatewayPerAz": True, "interfaceEndpoints": True})
    assert len(plan.of_type(NAT)) == 2
    assert len([e for e in plan.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Interface"]) >= 6
