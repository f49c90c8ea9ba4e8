"""The scan's type table: for each Pulumi type token, how to list its live resources in a few
batched requests and which properties to compare (the ones that matter to safety).

Adding a type is one `TypeSpec(...)` entry in SPECS (plus a lister if no existing one fits).
State values come from the export's outputs (camelCase, as pulumi-aws v7 writes them); live
values are normalized to the same shape.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Optional

from scripts.drift.live import tags_of
from scripts.drift.model import Context, LiveResource, TypeSpec
from scripts.drift.state import StateResource

# --- value helpers -------------------------------------------------------------------------


def first(value: Any) -> Any:
    """Nested blocks are lists of one object in older provider versions, objects in newer."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def path(bag: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        bag = first(bag)
        if not isinstance(bag, dict):
            return None
        bag = bag.get(part)
    return bag


def out(r: StateResource, dotted: str) -> Any:
    value = path(r.outputs, dotted)
    return path(r.inputs, dotted) if value is None else value


def sorted_list(value: Any) -> Optional[list[str]]:
    if value is None:
        return None
    return sorted(str(v) for v in (value if isinstance(value, list) else [value]) if v not in (None, ""))


def as_bool(value: Any) -> Optional[bool]:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.lower() in ("true", "enabled", "enabling", "yes")
    return bool(value)


def as_int(value: Any) -> Optional[int]:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def kms_key(value: Any) -> Optional[str]:
    """A KMS key reference reduced to what both sides can agree on: the key id for key ARNs and
    ids, the alias name for aliases."""
    if not value:
        return None
    text = str(value)
    if ":key/" in text:
        return text.rsplit(":key/", 1)[1]
    if ":alias/" in text:
        return "alias/" + text.rsplit(":alias/", 1)[1]
    return text


_POLICY_LISTS = {"Action", "NotAction", "Resource", "NotResource"}


def canonical_policy(document: Any) -> Optional[str]:
    """An IAM-style policy as canonical JSON: AWS returns single-element lists as strings and
    may reorder keys, neither of which is drift."""
    if document in (None, ""):
        return None
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            return document

    def canon(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: canon(v, k) for k, v in sorted(value.items())}
        if isinstance(value, list):
            items = [canon(v) for v in value]
            if key in _POLICY_LISTS or key in ("AWS", "Service", "Federated", "CanonicalUser") or key == "":
                return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
            return items
        if key in _POLICY_LISTS or key in ("AWS", "Service", "Federated", "CanonicalUser"):
            return [value]
        return value

    canonical = canon(document)
    if isinstance(canonical, dict) and isinstance(canonical.get("Statement"), dict):
        canonical["Statement"] = [canonical["Statement"]]
    if isinstance(canonical, dict) and isinstance(canonical.get("Statement"), list):
        canonical["Statement"] = sorted(canonical["Statement"], key=lambda v: json.dumps(v, sort_keys=True))
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def name_tag(tags: dict[str, str], fallback: str = "") -> str:
    return tags.get("Name", fallback)


def ours(ctx: Context, tags: dict[str, str], vpc_id: Optional[str] = None) -> Optional[str]:
    return ctx.in_our_vpc(vpc_id) or ctx.ours_by_tags(tags)


# --- EC2 ---------------------------------------------------------------------------------

GONE_STATES = {"deleted", "deleting", "failed", "terminated", "shutting-down", "rejected", "expired"}


def list_vpcs(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:ec2/vpc:Vpc")
    result = []
    for vpc in ctx.vpcs:
        tags = tags_of(vpc.get("Tags"))
        reason = ctx.ours_by_tags(tags) or ("in a state" if vpc["VpcId"] in known else None)
        result.append(LiveResource(vpc["VpcId"], {"cidrBlock": vpc.get("CidrBlock")}, name_tag(tags), reason))
    return result


def list_subnets(ctx: Context) -> list[LiveResource]:
    return [LiveResource(s["SubnetId"], {
        "vpcId": s.get("VpcId"), "cidrBlock": s.get("CidrBlock"),
        "mapPublicIpOnLaunch": bool(s.get("MapPublicIpOnLaunch")),
    }, name_tag(tags_of(s.get("Tags"))), ours(ctx, tags_of(s.get("Tags")), s.get("VpcId")))
        for s in ctx.live.filtered_pages("ec2", "describe_subnets", "Subnets", "vpc-id", ctx.vpc_ids)]


def security_groups(ctx: Context) -> list[dict[str, Any]]:
    return ctx.live.filtered_pages("ec2", "describe_security_groups", "SecurityGroups", "vpc-id", ctx.vpc_ids)


def list_security_groups(ctx: Context) -> list[LiveResource]:
    return [LiveResource(g["GroupId"], {"vpcId": g.get("VpcId")}, g.get("GroupName", ""),
                         ours(ctx, tags_of(g.get("Tags")), g.get("VpcId")))
            for g in security_groups(ctx) if g.get("GroupName") != "default"]


def list_default_security_groups(ctx: Context) -> list[LiveResource]:
    # AWS creates one per VPC; it is ours only when a state adopted it.
    return [LiveResource(g["GroupId"], {"vpcId": g.get("VpcId")}, f"default ({g.get('VpcId')})")
            for g in security_groups(ctx) if g.get("GroupName") == "default"]


_PROTOCOLS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", "all": "-1"}


def rule_tuple(protocol: Any, from_port: Any, to_port: Any, source: str) -> tuple[str, Optional[int], Optional[int], str]:
    proto = str(protocol).lower() if protocol not in (None, "") else "-1"
    proto = _PROTOCOLS.get(proto, proto)
    if proto == "-1":
        return (proto, None, None, source)
    return (proto, as_int(from_port), as_int(to_port), source)


def _declared_inline_rules(ctx: Context) -> dict[tuple[str, bool], set[tuple[Any, ...]]]:
    """(group id, egress?) -> rules the program declared inline on a (default) security group;
    live rules that match them are managed by that group resource."""
    declared: dict[tuple[str, bool], set[tuple[Any, ...]]] = {}
    for group in ctx.state_resources("aws:ec2/securityGroup:SecurityGroup",
                                     "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"):
        for direction, egress in (("ingress", False), ("egress", True)):
            rules = group.inputs.get(direction)
            if not isinstance(rules, list):
                continue  # not declared inline: separate rule resources own the rules
            bucket = declared.setdefault((group.id, egress), set())
            for rule in rules:
                sources = [*(rule.get("cidrBlocks") or []), *(rule.get("ipv6CidrBlocks") or []),
                           *(rule.get("prefixListIds") or []), *(rule.get("securityGroups") or [])]
                if rule.get("self"):
                    sources.append(group.id)
                for source in sources:
                    bucket.add(rule_tuple(rule.get("protocol"), rule.get("fromPort"), rule.get("toPort"), source))
    return declared


def security_group_rules(ctx: Context) -> list[dict[str, Any]]:
    adopted_defaults = ctx.state_ids("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    group_ids = [g["GroupId"] for g in security_groups(ctx)
                 if g.get("GroupName") != "default" or g["GroupId"] in adopted_defaults]
    return ctx.live.filtered_pages("ec2", "describe_security_group_rules", "SecurityGroupRules", "group-id", group_ids)


def _rule_source(rule: dict[str, Any]) -> str:
    referenced = (rule.get("ReferencedGroupInfo") or {}).get("GroupId")
    return rule.get("CidrIpv4") or rule.get("CidrIpv6") or rule.get("PrefixListId") or referenced or ""


def _list_rules(ctx: Context, egress: bool) -> list[LiveResource]:
    declared = _declared_inline_rules(ctx)
    # Rules of a group no state knows are part of that (unmanaged) group's finding, not findings of their own.
    managed_groups = ctx.state_ids("aws:ec2/securityGroup:SecurityGroup", "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    result = []
    for rule in security_group_rules(ctx):
        if bool(rule.get("IsEgress")) != egress:
            continue
        group = rule.get("GroupId", "")
        source = _rule_source(rule)
        key = rule_tuple(rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort"), source)
        proto, low, high, _ = key
        ports = "all ports" if proto == "-1" else (f"{low}" if low == high else f"{low}-{high}")
        label = f"{'egress' if egress else 'ingress'} {proto if proto != '-1' else 'all'} {ports} " \
                f"{'to' if egress else 'from'} {source} on {group}"
        inline = key in declared.get((group, egress), set())
        result.append(LiveResource(rule["SecurityGroupRuleId"], {
            "securityGroupId": group, "ipProtocol": proto, "fromPort": low, "toPort": high,
            "cidrIpv4": rule.get("CidrIpv4"), "cidrIpv6": rule.get("CidrIpv6"),
            "prefixListId": rule.get("PrefixListId"),
            "referencedSecurityGroupId": (rule.get("ReferencedGroupInfo") or {}).get("GroupId"),
        }, label, f"rule of {group}" if group in managed_groups else None,
            managed_by=f"{group} (inline rule)" if inline else None))
    return result


def rule_state_props(r: StateResource) -> dict[str, Any]:
    proto, low, high, _ = rule_tuple(out(r, "ipProtocol"), out(r, "fromPort"), out(r, "toPort"), "")
    return {"securityGroupId": out(r, "securityGroupId"), "ipProtocol": proto, "fromPort": low, "toPort": high,
            "cidrIpv4": out(r, "cidrIpv4"), "cidrIpv6": out(r, "cidrIpv6"), "prefixListId": out(r, "prefixListId"),
            "referencedSecurityGroupId": out(r, "referencedSecurityGroupId")}


def list_internet_gateways(ctx: Context) -> list[LiveResource]:
    result = []
    for igw in ctx.live.pages("ec2", "describe_internet_gateways", "InternetGateways"):
        vpc_id = next((a.get("VpcId") for a in igw.get("Attachments") or []), None)
        tags = tags_of(igw.get("Tags"))
        reason = ours(ctx, tags, vpc_id)
        if reason or igw["InternetGatewayId"] in ctx.state_ids("aws:ec2/internetGateway:InternetGateway"):
            result.append(LiveResource(igw["InternetGatewayId"], {"vpcId": vpc_id}, name_tag(tags), reason))
    return result


def list_nat_gateways(ctx: Context) -> list[LiveResource]:
    return [LiveResource(n["NatGatewayId"], {"subnetId": n.get("SubnetId"), "connectivityType": n.get("ConnectivityType")},
                         name_tag(tags_of(n.get("Tags"))), ours(ctx, tags_of(n.get("Tags")), n.get("VpcId")))
            for n in ctx.live.filtered_pages("ec2", "describe_nat_gateways", "NatGateways", "vpc-id", ctx.vpc_ids)
            if n.get("State") not in GONE_STATES]


def route_tables(ctx: Context) -> list[dict[str, Any]]:
    return ctx.live.filtered_pages("ec2", "describe_route_tables", "RouteTables", "vpc-id", ctx.vpc_ids)


def _is_main(table: dict[str, Any]) -> bool:
    return any(a.get("Main") for a in table.get("Associations") or [])


def list_route_tables(ctx: Context) -> list[LiveResource]:
    # The main route table comes with the VPC; it is ours only when a state adopted it.
    return [LiveResource(t["RouteTableId"], {"vpcId": t.get("VpcId")}, name_tag(tags_of(t.get("Tags"))),
                         None if _is_main(t) else ours(ctx, tags_of(t.get("Tags")), t.get("VpcId")))
            for t in route_tables(ctx)]


_ROUTE_TARGETS = ("GatewayId", "NatGatewayId", "VpcEndpointId", "TransitGatewayId", "NetworkInterfaceId",
                  "VpcPeeringConnectionId", "EgressOnlyInternetGatewayId", "InstanceId", "CarrierGatewayId",
                  "LocalGatewayId", "CoreNetworkArn")


def route_id(table_id: str, destination: str) -> str:
    """The id the AWS provider gives an aws.ec2.Route: r-<table><crc32 of the destination>."""
    return f"r-{table_id}{zlib.crc32(destination.encode())}"


def _route_target(route: dict[str, Any]) -> Optional[str]:
    return next((route[k] for k in _ROUTE_TARGETS if route.get(k)), None)


def list_routes(ctx: Context) -> list[LiveResource]:
    adopted = ctx.state_ids("aws:ec2/routeTable:RouteTable", "aws:ec2/defaultRouteTable:DefaultRouteTable")
    # A gateway endpoint writes its own routes into the tables it serves.
    endpoints = ctx.state_ids("aws:ec2/vpcEndpoint:VpcEndpoint")
    result = []
    for table in route_tables(ctx):
        table_ours = table["RouteTableId"] in adopted or not _is_main(table)
        for route in table.get("Routes") or []:
            if route.get("GatewayId") == "local" or route.get("Origin") in ("CreateRouteTable", "EnableVgwRoutePropagation"):
                continue  # the VPC's implicit local route, or propagated by a gateway
            destination = (route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock")
                           or route.get("DestinationPrefixListId") or "")
            target = _route_target(route)
            result.append(LiveResource(route_id(table["RouteTableId"], destination),
                                       {"routeTableId": table["RouteTableId"], "destination": destination, "target": target},
                                       f"{destination} -> {target} in {table['RouteTableId']}",
                                       f"route in {table['RouteTableId']}" if table_ours else None,
                                       managed_by=f"endpoint {target}" if target in endpoints else None))
    return result


def route_state_props(r: StateResource) -> dict[str, Any]:
    destination = out(r, "destinationCidrBlock") or out(r, "destinationIpv6CidrBlock") or out(r, "destinationPrefixListId")
    target = next((out(r, k) for k in ("gatewayId", "natGatewayId", "vpcEndpointId", "transitGatewayId",
                                       "networkInterfaceId", "vpcPeeringConnectionId", "egressOnlyGatewayId",
                                       "carrierGatewayId", "localGatewayId", "coreNetworkArn") if out(r, k)), None)
    return {"routeTableId": out(r, "routeTableId"), "destination": destination, "target": target}


def list_vpc_endpoints(ctx: Context) -> list[LiveResource]:
    return [LiveResource(e["VpcEndpointId"], {
        "vpcId": e.get("VpcId"), "serviceName": e.get("ServiceName"), "vpcEndpointType": e.get("VpcEndpointType"),
        "privateDnsEnabled": e.get("PrivateDnsEnabled"),
    }, name_tag(tags_of(e.get("Tags"))), ours(ctx, tags_of(e.get("Tags")), e.get("VpcId")))
        for e in ctx.live.filtered_pages("ec2", "describe_vpc_endpoints", "VpcEndpoints", "vpc-id", ctx.vpc_ids)
        if str(e.get("State", "")).lower() not in GONE_STATES]


def list_instances(ctx: Context) -> list[LiveResource]:
    result = []
    reservations = ctx.live.filtered_pages("ec2", "describe_instances", "Reservations", "vpc-id", ctx.vpc_ids)
    managed_groups = {r.id for r in ctx.state_resources("aws:autoscaling/group:Group")}
    for reservation in reservations:
        for i in reservation.get("Instances") or []:
            if (i.get("State") or {}).get("Name") in GONE_STATES:
                continue
            tags = tags_of(i.get("Tags"))
            group = tags.get("aws:autoscaling:groupName")
            metadata = i.get("MetadataOptions") or {}
            result.append(LiveResource(i["InstanceId"], {
                "instanceType": i.get("InstanceType"), "subnetId": i.get("SubnetId"),
                "publicIp": bool(i.get("PublicIpAddress")),
                "metadataOptions.httpTokens": metadata.get("HttpTokens"),
                "metadataOptions.httpPutResponseHopLimit": metadata.get("HttpPutResponseHopLimit"),
                "vpcSecurityGroupIds": sorted(g["GroupId"] for g in i.get("SecurityGroups") or []),
            }, name_tag(tags), ours(ctx, tags, i.get("VpcId")),
                managed_by=f"auto-scaling group {group}" if group in managed_groups else None))
    return result


def instance_state_props(r: StateResource) -> dict[str, Any]:
    return {"instanceType": out(r, "instanceType"), "subnetId": out(r, "subnetId"),
            "publicIp": bool(out(r, "publicIp")),
            "metadataOptions.httpTokens": out(r, "metadataOptions.httpTokens"),
            "metadataOptions.httpPutResponseHopLimit": as_int(out(r, "metadataOptions.httpPutResponseHopLimit")),
            "vpcSecurityGroupIds": sorted_list(out(r, "vpcSecurityGroupIds"))}


def list_launch_templates(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:ec2/launchTemplate:LaunchTemplate")
    result = []
    for t in ctx.live.pages("ec2", "describe_launch_templates", "LaunchTemplates"):
        tags = tags_of(t.get("Tags"))
        reason = ctx.ours_by_tags(tags)
        if reason or t["LaunchTemplateId"] in known:
            result.append(LiveResource(t["LaunchTemplateId"], {
                "latestVersion": as_int(t.get("LatestVersionNumber")),
                "defaultVersion": as_int(t.get("DefaultVersionNumber")),
            }, t.get("LaunchTemplateName", ""), reason))
    return result


def list_addresses(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:ec2/eip:Eip")
    result = []
    for a in ctx.live.call("ec2", "describe_addresses").get("Addresses") or []:
        tags = tags_of(a.get("Tags"))
        alloc = a.get("AllocationId") or a.get("PublicIp", "")
        reason = ctx.ours_by_tags(tags)
        if reason or alloc in known:
            result.append(LiveResource(alloc, {"domain": a.get("Domain")}, name_tag(tags, a.get("PublicIp", "")), reason))
    return result


def list_flow_logs(ctx: Context) -> list[LiveResource]:
    return [LiveResource(f["FlowLogId"], {
        "trafficType": f.get("TrafficType"), "logDestinationType": f.get("LogDestinationType"),
    }, f"flow log of {f.get('ResourceId')}", ctx.in_our_vpc(f.get("ResourceId")))
        for f in ctx.live.filtered_pages("ec2", "describe_flow_logs", "FlowLogs", "resource-id", ctx.vpc_ids)]


# --- auto scaling, load balancing ----------------------------------------------------------


def list_auto_scaling_groups(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:autoscaling/group:Group")
    result = []
    for g in ctx.live.pages("autoscaling", "describe_auto_scaling_groups", "AutoScalingGroups"):
        tags = {t["Key"]: t.get("Value", "") for t in g.get("Tags") or []}
        reason = ctx.ours_by_tags(tags)
        if reason or g["AutoScalingGroupName"] in known:
            result.append(LiveResource(g["AutoScalingGroupName"], {
                "minSize": g.get("MinSize"), "maxSize": g.get("MaxSize"), "desiredCapacity": g.get("DesiredCapacity"),
                "healthCheckType": g.get("HealthCheckType"), "targetGroupArns": sorted(g.get("TargetGroupARNs") or []),
            }, g["AutoScalingGroupName"], reason, aliases=(g.get("AutoScalingGroupARN", ""),)))
    return result


def asg_state_props(r: StateResource) -> dict[str, Any]:
    props = {"minSize": as_int(out(r, "minSize")), "maxSize": as_int(out(r, "maxSize")),
             "healthCheckType": out(r, "healthCheckType"), "targetGroupArns": sorted_list(out(r, "targetGroupArns"))}
    # Without a declared desired capacity, scaling policies own it: a different value is not drift.
    if r.inputs.get("desiredCapacity") is not None:
        props["desiredCapacity"] = as_int(out(r, "desiredCapacity"))
    return props


def load_balancers(ctx: Context) -> list[dict[str, Any]]:
    return ctx.live.pages("elbv2", "describe_load_balancers", "LoadBalancers")


def list_load_balancers(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
    result = []
    for lb in load_balancers(ctx):
        reason = ctx.in_our_vpc(lb.get("VpcId"))
        if reason or lb["LoadBalancerArn"] in known:
            result.append(LiveResource(lb["LoadBalancerArn"], {
                "internal": lb.get("Scheme") == "internal", "loadBalancerType": lb.get("Type"),
                "securityGroups": sorted(lb.get("SecurityGroups") or []),
                "subnets": sorted(z["SubnetId"] for z in lb.get("AvailabilityZones") or [] if z.get("SubnetId")),
            }, lb.get("LoadBalancerName", ""), reason))
    return result


def list_target_groups(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:lb/targetGroup:TargetGroup", "aws:alb/targetGroup:TargetGroup")
    result = []
    for tg in ctx.live.pages("elbv2", "describe_target_groups", "TargetGroups"):
        reason = ctx.in_our_vpc(tg.get("VpcId"))
        if reason or tg["TargetGroupArn"] in known:
            result.append(LiveResource(tg["TargetGroupArn"], {
                "protocol": tg.get("Protocol"), "port": tg.get("Port"), "vpcId": tg.get("VpcId"),
            }, tg.get("TargetGroupName", ""), reason))
    return result


def list_listeners(ctx: Context) -> list[LiveResource]:
    # Listeners are only listed per load balancer: one request per load balancer of ours, not per listener.
    result = []
    for lb in list_load_balancers(ctx):
        for listener in ctx.live.pages("elbv2", "describe_listeners", "Listeners", LoadBalancerArn=lb.id):
            certificate = next((c.get("CertificateArn") for c in listener.get("Certificates") or []), None)
            result.append(LiveResource(listener["ListenerArn"], {
                "protocol": listener.get("Protocol"), "port": listener.get("Port"),
                "sslPolicy": listener.get("SslPolicy"), "certificateArn": certificate,
            }, f"{listener.get('Protocol')}:{listener.get('Port')} on {lb.name}", lb.ours))
    return result


# --- data stores -------------------------------------------------------------------------


def list_db_instances(ctx: Context) -> list[LiveResource]:
    result = []
    for db in ctx.live.pages("rds", "describe_db_instances", "DBInstances"):
        tags = tags_of(db.get("TagList"))
        vpc_id = (db.get("DBSubnetGroup") or {}).get("VpcId")
        result.append(LiveResource(db["DBInstanceIdentifier"], {
            "publiclyAccessible": db.get("PubliclyAccessible"), "storageEncrypted": db.get("StorageEncrypted"),
            "multiAz": db.get("MultiAZ"), "deletionProtection": db.get("DeletionProtection"),
            "backupRetentionPeriod": db.get("BackupRetentionPeriod"), "kmsKeyId": kms_key(db.get("KmsKeyId")),
            "autoMinorVersionUpgrade": db.get("AutoMinorVersionUpgrade"),
        }, db["DBInstanceIdentifier"], ours(ctx, tags, vpc_id),
            aliases=tuple(a for a in (db.get("DbiResourceId"), db.get("DBInstanceArn")) if a)))
    return result


def db_state_props(r: StateResource) -> dict[str, Any]:
    return {"publiclyAccessible": as_bool(out(r, "publiclyAccessible")), "storageEncrypted": as_bool(out(r, "storageEncrypted")),
            "multiAz": as_bool(out(r, "multiAz")), "deletionProtection": as_bool(out(r, "deletionProtection")),
            "backupRetentionPeriod": as_int(out(r, "backupRetentionPeriod")), "kmsKeyId": kms_key(out(r, "kmsKeyId")),
            "autoMinorVersionUpgrade": as_bool(out(r, "autoMinorVersionUpgrade"))}


def list_replication_groups(ctx: Context) -> list[LiveResource]:
    tagged = {arn.rsplit(":", 1)[-1]: reason for arn, reason in ctx.tagged_ours("elasticache", "replicationgroup:").items()}
    known = ctx.state_ids("aws:elasticache/replicationGroup:ReplicationGroup")
    result = []
    for g in ctx.live.pages("elasticache", "describe_replication_groups", "ReplicationGroups"):
        group_id = g["ReplicationGroupId"]
        if group_id in tagged or group_id in known:
            result.append(LiveResource(group_id, {
                "atRestEncryptionEnabled": g.get("AtRestEncryptionEnabled"),
                "transitEncryptionEnabled": g.get("TransitEncryptionEnabled"),
                "automaticFailoverEnabled": as_bool(g.get("AutomaticFailover")),
                "multiAzEnabled": as_bool(g.get("MultiAZ")),
                "snapshotRetentionLimit": g.get("SnapshotRetentionLimit"), "kmsKeyId": kms_key(g.get("KmsKeyId")),
            }, group_id, tagged.get(group_id), aliases=(g.get("ARN", ""),)))
    return result


def cache_state_props(r: StateResource) -> dict[str, Any]:
    return {key: as_bool(out(r, key)) for key in ("atRestEncryptionEnabled", "transitEncryptionEnabled",
                                                  "automaticFailoverEnabled", "multiAzEnabled")} | {
        "snapshotRetentionLimit": as_int(out(r, "snapshotRetentionLimit")), "kmsKeyId": kms_key(out(r, "kmsKeyId"))}


# --- S3: bucket settings are only readable per bucket, so they are read for managed buckets only --

BUCKET_TOKENS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")


def bucket_names(ctx: Context) -> set[str]:
    return {b["Name"] for b in ctx.live.pages("s3", "list_buckets", "Buckets")}


def list_buckets(ctx: Context) -> list[LiveResource]:
    tagged = {arn.rsplit(":", 1)[-1]: reason for arn, reason in ctx.tagged_ours("s3").items()}
    return [LiveResource(name, {}, name, tagged.get(name)) for name in sorted(bucket_names(ctx))]


def _bucket_of(r: StateResource) -> str:
    return str(out(r, "bucket") or r.id.split(",", 1)[0])


def _bucket_setting(token_list: tuple[str, ...], read: Any) -> Any:
    def lister(ctx: Context) -> list[LiveResource]:
        existing = bucket_names(ctx)
        wanted = sorted({_bucket_of(r) for r in ctx.state_resources(*token_list)} & existing)
        return [LiveResource(bucket, read(ctx, bucket), bucket) for bucket in wanted]
    return lister


def _public_access_block(ctx: Context, bucket: str) -> dict[str, Any]:
    answer = ctx.live.call("s3", "get_public_access_block", tolerate=("NoSuchPublicAccessBlockConfiguration",),
                           Bucket=bucket)
    config = {} if isinstance(answer, Exception) else answer.get("PublicAccessBlockConfiguration") or {}
    return {"blockPublicAcls": bool(config.get("BlockPublicAcls")), "blockPublicPolicy": bool(config.get("BlockPublicPolicy")),
            "ignorePublicAcls": bool(config.get("IgnorePublicAcls")),
            "restrictPublicBuckets": bool(config.get("RestrictPublicBuckets"))}


def _encryption(ctx: Context, bucket: str) -> dict[str, Any]:
    answer = ctx.live.call("s3", "get_bucket_encryption", tolerate=("ServerSideEncryptionConfigurationNotFoundError",),
                           Bucket=bucket)
    rules = [] if isinstance(answer, Exception) else (answer.get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    rule = rules[0] if rules else {}
    default = rule.get("ApplyServerSideEncryptionByDefault") or {}
    return {"sseAlgorithm": default.get("SSEAlgorithm"), "kmsMasterKeyId": kms_key(default.get("KMSMasterKeyID")),
            "bucketKeyEnabled": bool(rule.get("BucketKeyEnabled"))}


def _policy(ctx: Context, bucket: str) -> dict[str, Any]:
    answer = ctx.live.call("s3", "get_bucket_policy", tolerate=("NoSuchBucketPolicy",), Bucket=bucket)
    return {"policy": None if isinstance(answer, Exception) else canonical_policy(answer.get("Policy"))}


def _versioning(ctx: Context, bucket: str) -> dict[str, Any]:
    answer = ctx.live.call("s3", "get_bucket_versioning", Bucket=bucket)
    return {"versioningConfiguration.status": answer.get("Status") or "Disabled"}


PAB_TOKENS = ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",)
SSE_TOKENS = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
              "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
POLICY_TOKENS = ("aws:s3/bucketPolicy:BucketPolicy",)
VERSIONING_TOKENS = ("aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketVersioningV2:BucketVersioningV2")


def pab_state_props(r: StateResource) -> dict[str, Any]:
    return {key: as_bool(out(r, key)) for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                  "restrictPublicBuckets")}


def sse_state_props(r: StateResource) -> dict[str, Any]:
    rule = first(out(r, "rules")) or {}
    return {"sseAlgorithm": path(rule, "applyServerSideEncryptionByDefault.sseAlgorithm"),
            "kmsMasterKeyId": kms_key(path(rule, "applyServerSideEncryptionByDefault.kmsMasterKeyId")),
            "bucketKeyEnabled": bool(rule.get("bucketKeyEnabled"))}


# --- KMS, Secrets Manager, Lambda, SNS, CloudWatch Logs ------------------------------------


def list_kms_keys(ctx: Context) -> list[LiveResource]:
    tagged = {arn.rsplit("/", 1)[-1]: reason for arn, reason in ctx.tagged_ours("kms", "key/").items()}
    known = ctx.state_ids("aws:kms/key:Key")
    result = []
    for key in ctx.live.pages("kms", "list_keys", "Keys"):
        key_id = key["KeyId"]
        if key_id in known:
            # Rotation status is only readable per key: read for managed keys only.
            status = ctx.live.call("kms", "get_key_rotation_status", tolerate=("KMSInvalidStateException", "NotFoundException"),
                                   KeyId=key_id)
            if isinstance(status, Exception):
                continue  # pending deletion or disabled: as good as gone for what it protects
            result.append(LiveResource(key_id, {"enableKeyRotation": status.get("KeyRotationEnabled")}, key_id,
                                       tagged.get(key_id), aliases=(key.get("KeyArn", ""),)))
        elif key_id in tagged:
            result.append(LiveResource(key_id, {}, key_id, tagged[key_id], aliases=(key.get("KeyArn", ""),)))
    return result


def secrets(ctx: Context) -> list[dict[str, Any]]:
    return ctx.live.pages("secretsmanager", "list_secrets", "SecretList")


def list_secrets(ctx: Context) -> list[LiveResource]:
    known = ctx.state_ids("aws:secretsmanager/secret:Secret")
    result = []
    for s in secrets(ctx):
        reason = ctx.ours_by_tags(tags_of(s.get("Tags")))
        if reason or s["ARN"] in known:
            result.append(LiveResource(s["ARN"], {"kmsKeyId": kms_key(s.get("KmsKeyId"))}, s.get("Name", ""), reason))
    return result


def list_secret_rotations(ctx: Context) -> list[LiveResource]:
    wanted = {out(r, "secretId") or r.id for r in ctx.state_resources("aws:secretsmanager/secretRotation:SecretRotation")}
    result = []
    for s in secrets(ctx):
        if s["ARN"] in wanted or s.get("Name") in wanted:
            rules = s.get("RotationRules") or {}
            result.append(LiveResource(s["ARN"], {
                "rotationEnabled": bool(s.get("RotationEnabled")),
                "rotationRules.automaticallyAfterDays": rules.get("AutomaticallyAfterDays"),
                "rotationRules.scheduleExpression": rules.get("ScheduleExpression"),
                "rotationLambdaArn": s.get("RotationLambdaARN") or None,
            }, s.get("Name", ""), aliases=(s.get("Name", ""),)))
    return result


def rotation_state_props(r: StateResource) -> dict[str, Any]:
    props: dict[str, Any] = {"rotationEnabled": as_bool(out(r, "rotationEnabled")) if out(r, "rotationEnabled") is not None else True}
    days = as_int(out(r, "rotationRules.automaticallyAfterDays"))
    schedule = out(r, "rotationRules.scheduleExpression")
    if days:
        props["rotationRules.automaticallyAfterDays"] = days
    if schedule:
        props["rotationRules.scheduleExpression"] = schedule
    if out(r, "rotationLambdaArn"):
        props["rotationLambdaArn"] = out(r, "rotationLambdaArn")
    return props


def list_functions(ctx: Context) -> list[LiveResource]:
    tagged = {arn.rsplit(":", 1)[-1]: reason for arn, reason in ctx.tagged_ours("lambda", "function:").items()}
    known = ctx.state_ids("aws:lambda/function:Function")
    result = []
    for f in ctx.live.pages("lambda", "list_functions", "Functions"):
        vpc = f.get("VpcConfig") or {}
        reason = ctx.in_our_vpc(vpc.get("VpcId")) or tagged.get(f["FunctionName"])
        if reason or f["FunctionName"] in known:
            result.append(LiveResource(f["FunctionName"], {
                "runtime": f.get("Runtime"), "role": f.get("Role"),
                "vpcConfig.subnetIds": sorted(vpc.get("SubnetIds") or []),
                "vpcConfig.securityGroupIds": sorted(vpc.get("SecurityGroupIds") or []),
            }, f["FunctionName"], reason, aliases=(f.get("FunctionArn", ""),)))
    return result


def function_state_props(r: StateResource) -> dict[str, Any]:
    return {"runtime": out(r, "runtime"), "role": out(r, "role"),
            "vpcConfig.subnetIds": sorted_list(out(r, "vpcConfig.subnetIds")) or [],
            "vpcConfig.securityGroupIds": sorted_list(out(r, "vpcConfig.securityGroupIds")) or []}


def list_topics(ctx: Context) -> list[LiveResource]:
    tagged = ctx.tagged_ours("sns")
    known = ctx.state_ids("aws:sns/topic:Topic")
    return [LiveResource(t["TopicArn"], {}, t["TopicArn"].rsplit(":", 1)[-1], tagged.get(t["TopicArn"]))
            for t in ctx.live.pages("sns", "list_topics", "Topics") if t["TopicArn"] in tagged or t["TopicArn"] in known]


def list_log_groups(ctx: Context) -> list[LiveResource]:
    tagged = {arn.split(":log-group:", 1)[-1].removesuffix(":*"): reason
              for arn, reason in ctx.tagged_ours("logs", "log-group:").items()}
    known = ctx.state_ids("aws:cloudwatch/logGroup:LogGroup")
    result = []
    for g in ctx.live.pages("logs", "describe_log_groups", "logGroups"):
        name = g["logGroupName"]
        if name in tagged or name in known:
            result.append(LiveResource(name, {"retentionInDays": g.get("retentionInDays") or 0,  # 0: never expire, as in the state
                                                     "kmsKeyId": kms_key(g.get("kmsKeyId"))},
                                       name, tagged.get(name)))
    return result


# --- the table -------------------------------------------------------------------------------


def props(**getters: Any) -> Any:
    """state_props from {report key: state output path}, values passed through `convert` pairs."""
    def extract(r: StateResource) -> dict[str, Any]:
        result = {}
        for key, spec in getters.items():
            dotted, convert = spec if isinstance(spec, tuple) else (spec, lambda v: v)
            result[key] = convert(out(r, dotted))
        return result
    return extract


SPECS: tuple[TypeSpec, ...] = (
    TypeSpec("aws:ec2/vpc:Vpc", list_vpcs, props(cidrBlock="cidrBlock")),
    TypeSpec("aws:ec2/subnet:Subnet", list_subnets,
             props(vpcId="vpcId", cidrBlock="cidrBlock", mapPublicIpOnLaunch=("mapPublicIpOnLaunch", as_bool))),
    TypeSpec("aws:ec2/securityGroup:SecurityGroup", list_security_groups, props(vpcId="vpcId")),
    TypeSpec("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", list_default_security_groups, props(vpcId="vpcId"),
             unmanaged=False),
    TypeSpec("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", lambda ctx: _list_rules(ctx, egress=False),
             rule_state_props),
    TypeSpec("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", lambda ctx: _list_rules(ctx, egress=True),
             rule_state_props),
    TypeSpec("aws:ec2/internetGateway:InternetGateway", list_internet_gateways, props(vpcId="vpcId")),
    TypeSpec("aws:ec2/natGateway:NatGateway", list_nat_gateways, props(subnetId="subnetId", connectivityType="connectivityType")),
    TypeSpec("aws:ec2/routeTable:RouteTable", list_route_tables, props(vpcId="vpcId")),
    TypeSpec("aws:ec2/route:Route", list_routes, route_state_props),
    TypeSpec("aws:ec2/vpcEndpoint:VpcEndpoint", list_vpc_endpoints,
             props(vpcId="vpcId", serviceName="serviceName", vpcEndpointType="vpcEndpointType",
                   privateDnsEnabled=("privateDnsEnabled", as_bool))),
    TypeSpec("aws:ec2/instance:Instance", list_instances, instance_state_props),
    TypeSpec("aws:ec2/launchTemplate:LaunchTemplate", list_launch_templates,
             props(latestVersion=("latestVersion", as_int), defaultVersion=("defaultVersion", as_int))),
    TypeSpec("aws:ec2/eip:Eip", list_addresses, props(domain="domain")),
    TypeSpec("aws:ec2/flowLog:FlowLog", list_flow_logs,
             props(trafficType="trafficType", logDestinationType="logDestinationType")),
    TypeSpec("aws:autoscaling/group:Group", list_auto_scaling_groups, asg_state_props),
    TypeSpec("aws:lb/loadBalancer:LoadBalancer", list_load_balancers,
             props(internal=("internal", as_bool), loadBalancerType="loadBalancerType",
                   securityGroups=("securityGroups", sorted_list), subnets=("subnets", sorted_list)),
             also_tokens=("aws:alb/loadBalancer:LoadBalancer",)),
    TypeSpec("aws:lb/targetGroup:TargetGroup", list_target_groups,
             props(protocol="protocol", port=("port", as_int), vpcId="vpcId"),
             also_tokens=("aws:alb/targetGroup:TargetGroup",)),
    TypeSpec("aws:lb/listener:Listener", list_listeners,
             props(protocol="protocol", port=("port", as_int), sslPolicy="sslPolicy", certificateArn="certificateArn"),
             also_tokens=("aws:alb/listener:Listener",)),
    TypeSpec("aws:rds/instance:Instance", list_db_instances, db_state_props,
             state_keys=lambda r: [r.id, str(out(r, "identifier") or ""), str(out(r, "resourceId") or ""), str(out(r, "arn") or "")]),
    TypeSpec("aws:elasticache/replicationGroup:ReplicationGroup", list_replication_groups, cache_state_props,
             tagging="elasticache"),
    TypeSpec(BUCKET_TOKENS[0], list_buckets, tagging="s3", also_tokens=BUCKET_TOKENS[1:]),
    TypeSpec(PAB_TOKENS[0], _bucket_setting(PAB_TOKENS, _public_access_block), pab_state_props,
             state_keys=lambda r: [_bucket_of(r)], unmanaged=False),
    TypeSpec(SSE_TOKENS[0], _bucket_setting(SSE_TOKENS, _encryption), sse_state_props,
             state_keys=lambda r: [_bucket_of(r)], unmanaged=False, also_tokens=SSE_TOKENS[1:]),
    TypeSpec(POLICY_TOKENS[0], _bucket_setting(POLICY_TOKENS, _policy), props(policy=("policy", canonical_policy)),
             state_keys=lambda r: [_bucket_of(r)], unmanaged=False),
    TypeSpec(VERSIONING_TOKENS[0], _bucket_setting(VERSIONING_TOKENS, _versioning),
             props(**{"versioningConfiguration.status": "versioningConfiguration.status"}),
             state_keys=lambda r: [_bucket_of(r)], unmanaged=False, also_tokens=VERSIONING_TOKENS[1:]),
    TypeSpec("aws:kms/key:Key", list_kms_keys, props(enableKeyRotation=("enableKeyRotation", as_bool)), tagging="kms"),
    TypeSpec("aws:secretsmanager/secret:Secret", list_secrets, props(kmsKeyId=("kmsKeyId", kms_key))),
    TypeSpec("aws:secretsmanager/secretRotation:SecretRotation", list_secret_rotations, rotation_state_props,
             state_keys=lambda r: [str(out(r, "secretId") or r.id), r.id], unmanaged=False),
    TypeSpec("aws:lambda/function:Function", list_functions, function_state_props, tagging="lambda"),
    TypeSpec("aws:sns/topic:Topic", list_topics, tagging="sns"),
    TypeSpec("aws:cloudwatch/logGroup:LogGroup", list_log_groups,
             props(retentionInDays=("retentionInDays", as_int), kmsKeyId=("kmsKeyId", kms_key)), tagging="logs"),
)


def spec_for(token: str) -> Optional[TypeSpec]:
    return next((s for s in SPECS if token in s.tokens), None)
