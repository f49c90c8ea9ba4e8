"""The security baseline: every rule the policy pack, `python -m scripts.plan --policy` and the
unit tests run.

Each rule is a pure function over `ResourceView`s (policy.model) and names the AWS Foundational
Security Best Practices (FSBP) control or checkov check it matches. Property names are the
camelCase inputs of pulumi-aws v7 as the engine receives them. "Prod" means the stack is named
prod or the AWS provider's default tag `environment` is prod.

Two deliberate exemptions, each identified by a tag the program sets:
* the load-balancer access-log bucket (tag `purpose=load-balancer-access-logs`) is encrypted
  with SSE-S3, because ALB log delivery supports no other encryption; it must still be
  encrypted;
* secrets tagged `secret-kind` = `integration` hold values set by people or third parties that
  no rotation function can renew; every other secret (database and Redis credentials, the
  Django SECRET_KEY, Grafana's admin password) must rotate.
"""

from __future__ import annotations

import base64
import binascii
import email
import gzip
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from policy.model import (
    REQUIRED_TAG_KEYS,
    ResourceRule,
    ResourceView,
    Rule,
    StackRule,
    as_bool,
    as_int,
    as_list,
    default_tags,
    is_prod,
    is_set,
    is_unknown,
    linked,
    of_types,
    refers_to,
    stack_of,
    tags_of,
)

# --- type tokens (pulumi-aws v7) -------------------------------------------------------------

PROVIDER_AWS = "pulumi:providers:aws"
VPC = "aws:ec2/vpc:Vpc"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SUBNET = "aws:ec2/subnet:Subnet"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
EBS_VOLUME = "aws:ebs/volume:Volume"
ASG = "aws:autoscaling/group:Group"
ASG_ATTACHMENTS = ("aws:autoscaling/attachment:Attachment",
                   "aws:autoscaling/trafficSourceAttachment:TrafficSourceAttachment")
LOAD_BALANCERS = ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
LISTENERS = ("aws:lb/listener:Listener", "aws:alb/listener:Listener")
WAF_ASSOCIATIONS = ("aws:wafv2/webAclAssociation:WebAclAssociation",)
RDS_INSTANCE = "aws:rds/instance:Instance"
RDS_PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"
REDIS_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
BUCKET_PUBLIC_ACCESS = ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",)
BUCKET_VERSIONING = ("aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketVersioningV2:BucketVersioningV2")
BUCKET_ENCRYPTION = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                     "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
BUCKET_POLICY = ("aws:s3/bucketPolicy:BucketPolicy",)
BUCKET_LOGGING = ("aws:s3/bucketLogging:BucketLogging", "aws:s3/bucketLoggingV2:BucketLoggingV2")
BUCKET_LIFECYCLE = ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                    "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2")
SECRET = "aws:secretsmanager/secret:Secret"  # noqa: S105 - a type token
SECRET_ROTATION = "aws:secretsmanager/secretRotation:SecretRotation"  # noqa: S105 - a type token
KMS_KEY = "aws:kms/key:Key"
SNS_TOPIC = "aws:sns/topic:Topic"

# Auto Scaling groups carry tags as a list of {key, value, propagateAtLaunch}; the provider's
# default tags never reach them nor the instances and volumes they launch.
TYPES_WITHOUT_DEFAULT_TAGS = (ASG, LAUNCH_TEMPLATE)

ALB_ROLE_TAG = ("role", "alb")
ACCESS_LOG_BUCKET_TAG = ("purpose", "load-balancer-access-logs")
SECRET_KIND_TAG = "secret-kind"  # noqa: S105 - a tag key
ROTATION_EXEMPT_SECRET_KINDS = ("integration",)
MAX_ROTATION_DAYS = 90
RDS_BACKUP_DAYS, RDS_BACKUP_DAYS_PROD = 7, 30
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
PUBLIC_LISTENER_PORTS = (80, 443)
DEFAULT_DESCRIPTIONS = ("", "Managed by Pulumi", "Managed by Terraform")

# ALB security policies that refuse anything below TLS 1.2 and offer only AEAD, forward-secret
# ciphers (FSBP ELB.17's recommended set plus their FIPS and post-quantum variants).
TLS12_POLICIES = (
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Res-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext0-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-3-PQ-2025-09",
    "ELBSecurityPolicy-FS-1-2-Res-2019-08",
    "ELBSecurityPolicy-FS-1-2-Res-2020-10",
)


def _missing(value: Any) -> bool:
    return not is_set(value)


# --- tags (issue point 1) --------------------------------------------------------------------

def check_provider_default_tags(r: ResourceView) -> Iterator[str]:
    provider = r.provider
    if provider is None or provider.type != PROVIDER_AWS:
        yield "is not created through the explicit aws provider, so it gets none of the project's default tags"
        return
    if provider.name.startswith("default"):
        yield f"uses the default provider {provider.name!r}; pass the explicit aws provider that carries the default tags"
        return
    tags = default_tags(provider)
    missing = [k for k in REQUIRED_TAG_KEYS if not tags.get(k)]
    if missing:
        yield f"provider {provider.name!r} has no default tag {', '.join(missing)}"


def _required_tags_problem(tags: dict[str, Any], stack: str) -> Optional[str]:
    missing = [k for k in REQUIRED_TAG_KEYS if not tags.get(k)]
    if missing:
        return "no " + ", ".join(missing)
    if stack and not is_unknown(tags["stack"]) and tags["stack"] != stack:
        return f"stack={tags['stack']!r} on stack {stack!r}"
    return None


def check_explicit_tags(r: ResourceView) -> Iterator[str]:
    stack = stack_of(r)
    if r.type == ASG:
        propagated = {str(t.get("key")): t.get("value") for t in as_list(r.props.get("tags"))
                      if isinstance(t, dict) and as_bool(t.get("propagateAtLaunch")) is True}
        problem = _required_tags_problem(propagated, stack)
        if problem:
            yield f"tags propagated at launch: {problem} (default tags do not reach Auto Scaling groups)"
    elif r.type == LAUNCH_TEMPLATE:
        specs = {s.get("resourceType"): s.get("tags") or {} for s in as_list(r.props.get("tagSpecifications"))
                 if isinstance(s, dict)}
        for kind in ("instance", "volume"):
            tags = specs.get(kind)
            if not isinstance(tags, dict):
                yield f"no tag specification for {kind}s (default tags do not reach launched {kind}s)"
                continue
            problem = _required_tags_problem(tags, stack)
            if problem:
                yield f"tag specification for {kind}s: {problem}"


# --- network ---------------------------------------------------------------------------------

def check_flow_logs(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for vpc in of_types(resources, VPC):
        logs = [f for f in linked(resources, (FLOW_LOG,), "vpcId", vpc)
                if f.props.get("trafficType") in ("ALL", "REJECT") or is_unknown(f.props.get("trafficType"))]
        if not logs:
            yield vpc, "no flow log (trafficType ALL or REJECT) records this VPC's traffic"


def check_default_security_group(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    adopted = of_types(resources, DEFAULT_SG)
    for vpc in of_types(resources, VPC):
        if not any(refers_to(group, "vpcId", vpc) for group in adopted):
            yield vpc, "its default security group is not adopted (aws.ec2.DefaultSecurityGroup) and keeps AWS's allow rules"
    for group in adopted:
        for direction in ("ingress", "egress"):
            rules = group.props.get(direction)
            if rules and not is_unknown(rules):
                yield group, f"the default security group has {len(as_list(rules))} {direction} rule(s); it must have none"


def _port_range(rule: dict[str, Any]) -> tuple[Optional[int], Optional[int]]:
    return as_int(rule.get("fromPort")), as_int(rule.get("toPort"))


def _open_ingress(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, Optional[ResourceView], dict[str, Any], str]]:
    """(reported resource, its security group or None, rule as {protocol, fromPort, toPort}, cidr)
    for every ingress rule open to the whole internet."""
    groups = of_types(resources, SECURITY_GROUP, DEFAULT_SG)
    for group in groups:
        for rule in as_list(group.props.get("ingress")):
            if isinstance(rule, dict):
                for cidr in as_list(rule.get("cidrBlocks")) + as_list(rule.get("ipv6CidrBlocks")):
                    if cidr in OPEN_CIDRS:
                        yield group, group, rule, cidr
    for rule_resource in of_types(resources, SG_INGRESS, SG_RULE):
        props = dict(rule_resource.props)
        if rule_resource.type == SG_RULE:
            if props.get("type") != "ingress":
                continue
            cidrs = as_list(props.get("cidrBlocks")) + as_list(props.get("ipv6CidrBlocks"))
        else:
            cidrs = [props.get("cidrIpv4"), props.get("cidrIpv6")]
            props["protocol"] = props.get("ipProtocol")
        owner = next((g for g in groups if refers_to(rule_resource, "securityGroupId", g)), None)
        for cidr in cidrs:
            if cidr in OPEN_CIDRS:
                yield rule_resource, owner, props, cidr


def check_open_ingress(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for reported, group, rule, cidr in _open_ingress(resources):
        low, high = _port_range(rule)
        protocol = str(rule.get("protocol") or "").lower()
        is_lb_group = group is not None and tags_of(group).get(ALB_ROLE_TAG[0]) == ALB_ROLE_TAG[1]
        web_port = protocol in ("tcp", "6") and low == high and low in PUBLIC_LISTENER_PORTS
        if web_port and is_lb_group:
            continue
        if protocol in ("-1", "all"):
            ports = "all ports"
        else:
            ports = f"{protocol or '?'} {low}" + ("" if low == high else f"-{high}")
        where = "the load balancer group (role=alb)" if is_lb_group else "a group that is not the load balancer's (no tag role=alb)"
        yield reported, f"ingress from {cidr} on {ports} in {where}; only tcp 80/443 on the load balancer may be open"


def check_descriptions(r: ResourceView) -> Iterator[str]:
    if r.type == SECURITY_GROUP:
        description = r.props.get("description")
        if description in DEFAULT_DESCRIPTIONS or description is None:
            yield "the security group has no description of its purpose"
        for direction in ("ingress", "egress"):
            for index, rule in enumerate(as_list(r.props.get(direction))):
                if isinstance(rule, dict) and _missing(rule.get("description")):
                    yield f"inline {direction} rule #{index} has no description"
    elif _missing(r.props.get("description")):
        yield "the security group rule has no description"


def check_public_ips(r: ResourceView) -> Iterator[str]:
    if r.type == INSTANCE:
        if as_bool(r.props.get("associatePublicIpAddress")) is True:
            yield "associatePublicIpAddress is true; instances stay private behind the load balancer and NAT"
    elif r.type == LAUNCH_TEMPLATE:
        for index, nic in enumerate(as_list(r.props.get("networkInterfaces"))):
            if isinstance(nic, dict) and as_bool(nic.get("associatePublicIpAddress")) is True:
                yield f"network interface #{index} sets associatePublicIpAddress"
    elif r.type == SUBNET and as_bool(r.props.get("mapPublicIpOnLaunch")) is True:
        yield "mapPublicIpOnLaunch is true; instances launched here would get public addresses"


def check_imdsv2(r: ResourceView) -> Iterator[str]:
    options = r.props.get("metadataOptions")
    if not isinstance(options, dict):
        if not is_unknown(options):
            yield "no metadataOptions: IMDSv1 stays available; set httpTokens=required and httpPutResponseHopLimit=1"
        return
    if str(options.get("httpEndpoint") or "").lower() == "disabled":
        return  # no metadata service at all
    if options.get("httpTokens") != "required":
        yield f"httpTokens is {options.get('httpTokens')!r}; IMDSv2 needs 'required'"
    hops = as_int(options.get("httpPutResponseHopLimit"))
    if hops != 1 and not is_unknown(options.get("httpPutResponseHopLimit")):
        yield f"httpPutResponseHopLimit is {options.get('httpPutResponseHopLimit')!r}; 1 keeps tokens on the host"


def check_ebs_encryption(r: ResourceView) -> Iterator[str]:
    if r.type == EBS_VOLUME:
        if as_bool(r.props.get("encrypted")) is not True:
            yield "the volume is not encrypted"
    elif r.type == INSTANCE:
        root = r.props.get("rootBlockDevice")
        if not isinstance(root, dict) or as_bool(root.get("encrypted")) is not True:
            yield "rootBlockDevice.encrypted is not true"
        for index, device in enumerate(as_list(r.props.get("ebsBlockDevices"))):
            if isinstance(device, dict) and as_bool(device.get("encrypted")) is not True:
                yield f"ebsBlockDevices #{index} is not encrypted"
    elif r.type == LAUNCH_TEMPLATE:
        mappings = [m for m in as_list(r.props.get("blockDeviceMappings")) if isinstance(m, dict)]
        if not mappings:
            yield "no blockDeviceMappings: the root volume inherits the AMI snapshot's (unencrypted) setting"
        for mapping in mappings:
            ebs = mapping.get("ebs")
            if isinstance(ebs, dict) and as_bool(ebs.get("encrypted")) is not True:
                yield f"block device {mapping.get('deviceName') or '?'} is not encrypted"


# --- secrets in user data --------------------------------------------------------------------

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("an AWS secret access key", re.compile(r"(?i)aws_?secret_?access_?key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}")),
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")),
    # A key that starts a token (not a segment of an ARN such as ...:secret:name) assigned a literal
    # value, not a shell/template reference ($VAR, $(cmd), ${x}, {{ x }}, <x>) nor a boolean.
    ("a password assignment", re.compile(
        r"(?i)(?<![\w.:/-])[\w.-]*(?:password|passwd|pwd)\s*[=:]\s*['\"]?"
        r"(?![$\{<%(\[])(?!(?:true|false|yes|no|null|none)\b)[^\s'\"]{4,}")),
    ("a token, secret or API key assignment", re.compile(
        r"(?i)(?<![\w.:/-])[\w.-]*(?:token|secret|api[_-]?key|access[_-]?key)\s*[=:]\s*['\"]?"
        r"(?![$\{<%(\[])[A-Za-z0-9/+=_.\-]{12,}")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a Telegram bot token", re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_-]{33}\b")),
    ("credentials in a URL", re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:(?![$\{<%])[^@\s/]{3,}@")),
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _decode_bytes(data: bytes) -> Optional[str]:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def user_data_texts(raw: str, depth: int = 0) -> list[str]:
    """The user data as given plus every layer under it: base64, gzip, MIME multipart parts
    (cloud-init's formats), at most three layers deep."""
    texts = [raw]
    if depth >= 3:
        return texts
    compact = "".join(raw.split())
    if len(compact) >= 16 and len(compact) % 4 == 0 and _BASE64.match(compact):
        try:
            decoded = _decode_bytes(base64.b64decode(compact, validate=True))
        except (binascii.Error, ValueError):
            decoded = None
        if decoded:
            texts.extend(user_data_texts(decoded, depth + 1))
    if "multipart/" in raw[:2000].lower():
        message = email.message_from_string(raw)
        for part in message.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                decoded = _decode_bytes(payload)
                if decoded:
                    texts.extend(user_data_texts(decoded, depth + 1))
    return texts


def find_secrets(raw: str) -> list[str]:
    """What kinds of secret the user data appears to hold, with the line; never the value."""
    found: list[str] = []
    for layer, text in enumerate(user_data_texts(raw)):
        for number, line in enumerate(text.splitlines(), start=1):
            for kind, pattern in _SECRET_PATTERNS:
                if pattern.search(line):
                    where = f"line {number}" + (f" of decoded layer {layer}" if layer else "")
                    found.append(f"{kind} on {where}")
    return list(dict.fromkeys(found))


def check_user_data(r: ResourceView) -> Iterator[str]:
    for prop in ("userData", "userDataBase64"):
        value = r.props.get(prop)
        if not isinstance(value, str) or is_unknown(value) or value == "[secret]":
            continue
        for finding in find_secrets(value):
            yield f"{prop} contains {finding}; hosts must read secrets from Secrets Manager at boot"


# --- Auto Scaling and load balancer ----------------------------------------------------------

def check_asg_health_check(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    attachments = of_types(resources, *ASG_ATTACHMENTS)
    for group in of_types(resources, ASG):
        behind_lb = (is_set(group.props.get("targetGroupArns")) or is_set(group.props.get("loadBalancers"))
                     or is_set(group.props.get("trafficSources"))
                     or any(refers_to(a, "autoscalingGroupName", group) for a in attachments))
        if behind_lb and group.props.get("healthCheckType") != "ELB":
            yield group, (f"healthCheckType is {group.props.get('healthCheckType') or 'EC2 (default)'!r}; "
                          "a group behind the load balancer must replace hosts the load balancer finds unhealthy (ELB)")


def _is_application_lb(r: ResourceView) -> bool:
    return (r.props.get("loadBalancerType") or "application") == "application"


def check_alb_invalid_headers(r: ResourceView) -> Iterator[str]:
    if _is_application_lb(r) and as_bool(r.props.get("dropInvalidHeaderFields")) is not True:
        yield "dropInvalidHeaderFields is not true; malformed headers reach the application"


def check_alb_access_logs(r: ResourceView) -> Iterator[str]:
    logs = r.props.get("accessLogs")
    if not isinstance(logs, dict) or as_bool(logs.get("enabled")) is not True or _missing(logs.get("bucket")):
        yield "access logs are not enabled (accessLogs.enabled with a bucket)"


def check_alb_deletion_protection(r: ResourceView) -> Iterator[str]:
    if is_prod(r) and as_bool(r.props.get("enableDeletionProtection")) is not True:
        yield "enableDeletionProtection is not true in prod"


def check_alb_waf(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for balancer in of_types(resources, *LOAD_BALANCERS):
        if not _is_application_lb(balancer) or as_bool(balancer.props.get("internal")) is True or not is_prod(balancer):
            continue
        if not linked(resources, WAF_ASSOCIATIONS, "resourceArn", balancer):
            yield balancer, "the internet-facing load balancer has no WAFv2 web ACL (WebAclAssociation) in prod"


def _listener_protocol(listener: ResourceView) -> str:
    protocol = listener.props.get("protocol")
    if isinstance(protocol, str) and not is_unknown(protocol):
        return protocol.upper()
    return "HTTP" if as_int(listener.props.get("port")) == 80 else ""


def _redirects_to_https(listener: ResourceView) -> bool:
    actions = [a for a in as_list(listener.props.get("defaultActions")) if isinstance(a, dict)]
    return bool(actions) and all(
        a.get("type") == "redirect" and isinstance(a.get("redirect"), dict)
        and str(a["redirect"].get("protocol") or "").upper() == "HTTPS" for a in actions)


def check_http_redirect(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    listeners = of_types(resources, *LISTENERS)
    balancers = of_types(resources, *LOAD_BALANCERS)
    for listener in listeners:
        if _listener_protocol(listener) != "HTTP" or _redirects_to_https(listener):
            continue
        balancer = next((b for b in balancers if refers_to(listener, "loadBalancerArn", b)), None)
        siblings = [other for other in listeners
                    if balancer is not None and refers_to(other, "loadBalancerArn", balancer)]
        serves_https = any(_listener_protocol(other) == "HTTPS" for other in siblings)
        # Staging may run HTTP only (config allowHttpOnly, refused in prod); once HTTPS exists,
        # plain HTTP must only redirect to it.
        if balancer is not None and not serves_https and not is_prod(listener):
            continue
        yield listener, "the HTTP listener does not redirect every request to HTTPS"


def check_tls_policy(r: ResourceView) -> Iterator[str]:
    if _listener_protocol(r) not in ("HTTPS", "TLS"):
        return
    policy = r.props.get("sslPolicy")
    if is_unknown(policy):
        return
    if policy not in TLS12_POLICIES:
        yield (f"sslPolicy {policy or 'ELBSecurityPolicy-2016-08 (default)'!r} is not an allowed TLS 1.2+ policy "
               f"(allowed: {', '.join(TLS12_POLICIES[:2])}, ...)")


# --- RDS -------------------------------------------------------------------------------------

def check_rds_encryption(r: ResourceView) -> Iterator[str]:
    if as_bool(r.props.get("storageEncrypted")) is not True:
        yield "storageEncrypted is not true"
    if _missing(r.props.get("kmsKeyId")):
        yield "kmsKeyId is not set: storage would use the AWS-managed key, not the project's customer key"


def check_rds_private(r: ResourceView) -> Iterator[str]:
    if as_bool(r.props.get("publiclyAccessible")) is True:
        yield "publiclyAccessible is true"


def check_rds_multi_az(r: ResourceView) -> Iterator[str]:
    if is_prod(r) and as_bool(r.props.get("multiAz")) is not True:
        yield "multiAz is not true in prod"


def check_rds_deletion_protection(r: ResourceView) -> Iterator[str]:
    if is_prod(r) and as_bool(r.props.get("deletionProtection")) is not True:
        yield "deletionProtection is not true in prod"


def check_rds_backups(r: ResourceView) -> Iterator[str]:
    minimum = RDS_BACKUP_DAYS_PROD if is_prod(r) else RDS_BACKUP_DAYS
    value = r.props.get("backupRetentionPeriod")
    days = as_int(value)
    if not is_unknown(value) and (days is None or days < minimum):
        yield f"backupRetentionPeriod is {value!r}; at least {minimum} days {'in prod' if is_prod(r) else ''}".rstrip()


def check_rds_performance_insights(r: ResourceView) -> Iterator[str]:
    if as_bool(r.props.get("performanceInsightsEnabled")) is not True:
        yield "performanceInsightsEnabled is not true"


def check_rds_log_exports(r: ResourceView) -> Iterator[str]:
    exports = as_list(r.props.get("enabledCloudwatchLogsExports"))
    engine = str(r.props.get("engine") or "")
    if not exports:
        yield "enabledCloudwatchLogsExports is empty; database logs stay on the instance"
    elif engine.startswith("postgres") and "postgresql" not in exports:
        yield "enabledCloudwatchLogsExports lacks 'postgresql'"


def check_rds_minor_upgrades(r: ResourceView) -> Iterator[str]:
    if as_bool(r.props.get("autoMinorVersionUpgrade")) is False:
        yield "autoMinorVersionUpgrade is false; security patches would wait for a manual upgrade"


def _parameter(group: ResourceView, name: str) -> Any:
    for parameter in as_list(group.props.get("parameters")):
        if isinstance(parameter, dict) and parameter.get("name") == name:
            return parameter.get("value")
    return None


def check_rds_force_ssl(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    groups = of_types(resources, RDS_PARAMETER_GROUP)
    for instance in of_types(resources, RDS_INSTANCE):
        if not str(instance.props.get("engine") or "postgres").startswith("postgres"):
            continue
        if _missing(instance.props.get("parameterGroupName")):
            yield instance, "no parameterGroupName: the engine's default group cannot be checked for rds.force_ssl=1"
            continue
        group = next((g for g in groups if refers_to(instance, "parameterGroupName", g)), None)
        if group is None:
            if not is_unknown(instance.props.get("parameterGroupName")):
                yield instance, "its parameter group is not managed in this stack, so rds.force_ssl=1 cannot be verified"
            continue
        value = _parameter(group, "rds.force_ssl")
        if str(value) != "1" and not is_unknown(value):
            yield instance, f"parameter group {group.name!r} sets rds.force_ssl={value!r}; plain-text connections must be refused (1)"


# --- ElastiCache -----------------------------------------------------------------------------

def check_redis_at_rest(r: ResourceView) -> Iterator[str]:
    if as_bool(r.props.get("atRestEncryptionEnabled")) is not True:
        yield "atRestEncryptionEnabled is not true"


def check_redis_in_transit(r: ResourceView) -> Iterator[str]:
    if as_bool(r.props.get("transitEncryptionEnabled")) is not True:
        yield "transitEncryptionEnabled is not true"
    if _missing(r.props.get("authToken")) and _missing(r.props.get("authTokenWo")) and _missing(r.props.get("userGroupIds")):
        yield "no authToken (nor RBAC user groups): any client in the subnet could connect"


def check_redis_failover(r: ResourceView) -> Iterator[str]:
    if is_prod(r) and as_bool(r.props.get("automaticFailoverEnabled")) is not True:
        yield "automaticFailoverEnabled is not true in prod"


def check_redis_snapshots(r: ResourceView) -> Iterator[str]:
    value = r.props.get("snapshotRetentionLimit")
    days = as_int(value)
    if not is_unknown(value) and (days is None or days < 1):
        yield f"snapshotRetentionLimit is {value!r}; keep at least one daily snapshot"


# --- S3 --------------------------------------------------------------------------------------

def _bucket_parts(resources: Sequence[ResourceView], bucket: ResourceView, types: Sequence[str]) -> list[ResourceView]:
    return linked(resources, types, "bucket", bucket)


def check_s3_public_access(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for bucket in of_types(resources, *BUCKETS):
        blocks = _bucket_parts(resources, bucket, BUCKET_PUBLIC_ACCESS)
        if not blocks:
            yield bucket, "no BucketPublicAccessBlock"
            continue
        off = [f for f in flags if as_bool(blocks[0].props.get(f)) is not True]
        if off:
            yield bucket, f"public-access block leaves {', '.join(off)} off"


def check_s3_versioning(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for bucket in of_types(resources, *BUCKETS):
        parts = _bucket_parts(resources, bucket, BUCKET_VERSIONING)
        if not any(p.get("versioningConfiguration.status") == "Enabled" for p in parts):
            yield bucket, "versioning is not Enabled (BucketVersioning)"


def _sse_algorithms(parts: Sequence[ResourceView]) -> list[tuple[str, Any]]:
    found = []
    for part in parts:
        for rule in as_list(part.props.get("rules")):
            default = rule.get("applyServerSideEncryptionByDefault") if isinstance(rule, dict) else None
            if isinstance(default, dict):
                found.append((str(default.get("sseAlgorithm") or ""), default.get("kmsMasterKeyId")))
    return found


def check_s3_kms_encryption(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for bucket in of_types(resources, *BUCKETS):
        algorithms = _sse_algorithms(_bucket_parts(resources, bucket, BUCKET_ENCRYPTION))
        if tags_of(bucket).get(ACCESS_LOG_BUCKET_TAG[0]) == ACCESS_LOG_BUCKET_TAG[1]:
            # Exempt from KMS: ALB access-log delivery writes only to SSE-S3 buckets.
            if not any(a in ("AES256", "aws:kms", "aws:kms:dsse") for a, _ in algorithms):
                yield bucket, "the access-log bucket has no default encryption (SSE-S3 at least)"
            continue
        if not any(a.startswith("aws:kms") and is_set(key) for a, key in algorithms):
            yield bucket, "default encryption is not SSE-KMS with the project's key (kmsMasterKeyId)"


def _denies_plain_http(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    for statement in as_list(document.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
            continue
        principal = statement.get("Principal")
        if principal not in ("*", {"AWS": "*"}):
            continue
        actions = statement.get("Action")
        if "s3:*" not in (actions if isinstance(actions, list) else [actions]):
            continue
        condition = statement.get("Condition") or {}
        secure = (condition.get("Bool") or {}).get("aws:SecureTransport") if isinstance(condition, dict) else None
        if str(secure).lower() != "false":
            continue
        resources = statement.get("Resource")
        resources = resources if isinstance(resources, list) else [resources]
        if any(isinstance(x, str) and x.endswith("/*") for x in resources) and any(
                isinstance(x, str) and not x.endswith("/*") for x in resources):
            return True
    return False


def check_s3_tls_only(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for bucket in of_types(resources, *BUCKETS):
        policies = [p.props.get("policy") for p in _bucket_parts(resources, bucket, BUCKET_POLICY)]
        if any(is_unknown(p) for p in policies):
            continue  # known after the update; the CLI runs stack policies again then
        documents = []
        for policy in policies:
            try:
                documents.append(json.loads(policy) if isinstance(policy, str) else policy)
            except ValueError:
                continue
        if not any(_denies_plain_http(d) for d in documents):
            yield bucket, "no bucket policy denies requests without TLS (aws:SecureTransport=false) on the bucket and its objects"


def check_s3_access_logging(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for bucket in of_types(resources, *BUCKETS):
        if tags_of(bucket).get(ACCESS_LOG_BUCKET_TAG[0]) == ACCESS_LOG_BUCKET_TAG[1]:
            continue  # the logs' own destination: logging it would log its own deliveries
        inline = bucket.props.get("logging")
        if isinstance(inline, dict) and is_set(inline.get("targetBucket")):
            continue
        if not _bucket_parts(resources, bucket, BUCKET_LOGGING):
            yield bucket, "no S3 server access logging (BucketLogging) into the access-log bucket"


def check_s3_lifecycle(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    for bucket in of_types(resources, *BUCKETS):
        parts = _bucket_parts(resources, bucket, BUCKET_LIFECYCLE)
        rules = [rule for p in parts for rule in as_list(p.props.get("rules")) if isinstance(rule, dict)]
        if not any(rule.get("status") == "Enabled" for rule in rules):
            yield bucket, "no enabled lifecycle rule (BucketLifecycleConfiguration)"


# --- Secrets Manager, KMS, SNS ---------------------------------------------------------------

def check_secret_kms(r: ResourceView) -> Iterator[str]:
    key = r.props.get("kmsKeyId")
    if _missing(key) or key == "alias/aws/secretsmanager":
        yield "kmsKeyId is not the project's customer key (the AWS-managed key cannot be restricted by key policy)"


_RATE = re.compile(r"^rate\((\d+) days?\)$")


def _rotation_days(rotation: ResourceView) -> Optional[int]:
    """Days between rotations, or None when unknown or not expressible (a cron schedule that is
    not at least monthly)."""
    days = as_int(rotation.get("rotationRules.automaticallyAfterDays"))
    if days is not None:
        return days
    schedule = rotation.get("rotationRules.scheduleExpression")
    if isinstance(schedule, str):
        match = _RATE.match(schedule.strip())
        if match:
            return int(match.group(1))
        fields = schedule.strip()[len("cron("):-1].split() if schedule.startswith("cron(") else []
        if len(fields) == 6 and fields[3] in ("*", "?"):
            return 31  # a cron schedule that runs every month
    return None


def check_secret_rotation(resources: Sequence[ResourceView]) -> Iterator[tuple[ResourceView, str]]:
    rotations = of_types(resources, SECRET_ROTATION)
    for rotation in rotations:
        days = _rotation_days(rotation)
        if days is not None and days > MAX_ROTATION_DAYS:
            yield rotation, f"rotates every {days} days; at most {MAX_ROTATION_DAYS}"
        elif days is None and not is_unknown(rotation.get("rotationRules.automaticallyAfterDays")):
            yield rotation, f"no rotation interval of at most {MAX_ROTATION_DAYS} days (automaticallyAfterDays or a rate/monthly schedule)"
    for secret in of_types(resources, SECRET):
        kind = tags_of(secret).get(SECRET_KIND_TAG)
        if kind in ROTATION_EXEMPT_SECRET_KINDS:
            continue
        if not any(refers_to(r, "secretId", secret) for r in rotations):
            yield secret, (f"no SecretRotation; only secrets tagged {SECRET_KIND_TAG}="
                           f"{'/'.join(ROTATION_EXEMPT_SECRET_KINDS)} may go without automatic rotation")


def check_kms_rotation(r: ResourceView) -> Iterator[str]:
    spec = r.props.get("customerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    if spec == "SYMMETRIC_DEFAULT" and as_bool(r.props.get("enableKeyRotation")) is not True:
        yield "enableKeyRotation is not true"


def check_sns_encryption(r: ResourceView) -> Iterator[str]:
    if _missing(r.props.get("kmsMasterKeyId")):
        yield "kmsMasterKeyId is not set; alert messages would be stored unencrypted"


# --- the registry ----------------------------------------------------------------------------

RULES: tuple[Rule, ...] = (
    ResourceRule("aws-provider-default-tags", "Every AWS resource is created through the explicit aws provider whose "
                 "default tags carry project, stack and managed-by", "CKV_AWS_153 (tagging) / project tag standard",
                 ("aws:",), check_provider_default_tags),
    ResourceRule("explicit-tags-where-default-tags-do-not-reach", "Auto Scaling groups propagate project, stack and "
                 "managed-by at launch; launch templates tag instances and volumes with them", "CKV_AWS_153",
                 TYPES_WITHOUT_DEFAULT_TAGS, check_explicit_tags),
    StackRule("vpc-flow-logs", "Every VPC has a flow log", "FSBP EC2.6 / CKV2_AWS_11", (VPC,), check_flow_logs),
    StackRule("default-security-group-closed", "Every VPC's default security group is adopted and has no rules",
              "FSBP EC2.2 / CKV2_AWS_12", (VPC, DEFAULT_SG), check_default_security_group),
    StackRule("no-open-ingress-except-lb-web", "No ingress from 0.0.0.0/0 or ::/0 except tcp 80/443 on the load "
              "balancer's group (tag role=alb)", "FSBP EC2.18, EC2.19 / CKV_AWS_24, CKV_AWS_25, CKV_AWS_277",
              (SECURITY_GROUP, DEFAULT_SG, SG_INGRESS, SG_RULE), check_open_ingress),
    ResourceRule("security-groups-described", "Every security group and rule has a description", "CKV_AWS_23",
                 (SECURITY_GROUP, SG_INGRESS, SG_EGRESS, SG_RULE), check_descriptions),
    ResourceRule("no-public-ip", "Instances, launch templates and subnets assign no public IPv4 addresses",
                 "FSBP EC2.9, EC2.15, EC2.25 / CKV_AWS_88, CKV_AWS_130", (INSTANCE, LAUNCH_TEMPLATE, SUBNET), check_public_ips),
    ResourceRule("imdsv2-required", "Instances and launch templates require IMDSv2 tokens with a hop limit of 1",
                 "FSBP EC2.8, EC2.170 / CKV_AWS_79, CKV_AWS_341", (INSTANCE, LAUNCH_TEMPLATE), check_imdsv2),
    ResourceRule("ebs-encrypted", "Root and data EBS volumes are encrypted", "FSBP EC2.3 / CKV_AWS_3, CKV_AWS_8",
                 (INSTANCE, LAUNCH_TEMPLATE, EBS_VOLUME), check_ebs_encryption),
    ResourceRule("user-data-without-secrets", "User data holds no secret-looking values (base64, gzip and MIME "
                 "layers decoded)", "CKV_AWS_46", (INSTANCE, LAUNCH_TEMPLATE), check_user_data),
    StackRule("asg-elb-health-check", "An Auto Scaling group behind a load balancer uses ELB health checks",
              "FSBP AutoScaling.1", (ASG,), check_asg_health_check),
    ResourceRule("alb-drops-invalid-headers", "The application load balancer drops invalid header fields",
                 "FSBP ELB.4 / CKV_AWS_131", LOAD_BALANCERS, check_alb_invalid_headers),
    ResourceRule("alb-access-logs", "The load balancer writes access logs to S3", "FSBP ELB.5 / CKV_AWS_91",
                 LOAD_BALANCERS, check_alb_access_logs),
    ResourceRule("alb-deletion-protection-prod", "The load balancer is deletion-protected in prod",
                 "FSBP ELB.6 / CKV_AWS_150", LOAD_BALANCERS, check_alb_deletion_protection),
    StackRule("alb-waf-prod", "The internet-facing application load balancer is associated with a WAFv2 web ACL "
              "in prod", "FSBP ELB.16 / CKV2_AWS_28", LOAD_BALANCERS, check_alb_waf),
    StackRule("http-redirects-to-https", "HTTP listeners redirect to HTTPS (a staging load balancer without any "
              "HTTPS listener is exempt; prod never is)", "FSBP ELB.1 / CKV2_AWS_20", LISTENERS, check_http_redirect),
    ResourceRule("https-listener-tls12-policy", "HTTPS listeners use an allowed TLS 1.2+ security policy",
                 "FSBP ELB.17 / CKV_AWS_103", LISTENERS, check_tls_policy),
    ResourceRule("rds-encrypted-customer-key", "RDS storage is encrypted with the customer key (kmsKeyId)",
                 "FSBP RDS.3 / CKV_AWS_16", (RDS_INSTANCE,), check_rds_encryption),
    ResourceRule("rds-not-public", "RDS instances are not publicly accessible", "FSBP RDS.2 / CKV_AWS_17",
                 (RDS_INSTANCE,), check_rds_private),
    ResourceRule("rds-multi-az-prod", "RDS is Multi-AZ in prod", "FSBP RDS.5 / CKV_AWS_157", (RDS_INSTANCE,), check_rds_multi_az),
    ResourceRule("rds-deletion-protection-prod", "RDS is deletion-protected in prod", "FSBP RDS.8 / CKV_AWS_293",
                 (RDS_INSTANCE,), check_rds_deletion_protection),
    ResourceRule("rds-backup-retention", f"RDS keeps automated backups at least {RDS_BACKUP_DAYS} days "
                 f"({RDS_BACKUP_DAYS_PROD} in prod)", "FSBP RDS.11 / CKV_AWS_133", (RDS_INSTANCE,), check_rds_backups),
    StackRule("rds-force-ssl", "The instance's parameter group sets rds.force_ssl=1", "CKV2_AWS_69",
              (RDS_INSTANCE,), check_rds_force_ssl),
    ResourceRule("rds-performance-insights", "RDS Performance Insights is on", "CKV_AWS_353", (RDS_INSTANCE,),
                 check_rds_performance_insights),
    ResourceRule("rds-log-exports", "RDS exports its logs to CloudWatch Logs", "FSBP RDS.9 / CKV_AWS_129",
                 (RDS_INSTANCE,), check_rds_log_exports),
    ResourceRule("rds-auto-minor-upgrades", "RDS applies minor engine upgrades automatically",
                 "FSBP RDS.13 / CKV_AWS_226", (RDS_INSTANCE,), check_rds_minor_upgrades),
    ResourceRule("elasticache-encrypted-at-rest", "Redis is encrypted at rest", "FSBP ElastiCache.4 / CKV_AWS_29",
                 (REDIS_GROUP,), check_redis_at_rest),
    ResourceRule("elasticache-tls-and-auth", "Redis encrypts in transit and requires AUTH",
                 "FSBP ElastiCache.5, ElastiCache.6 / CKV_AWS_30, CKV_AWS_31", (REDIS_GROUP,), check_redis_in_transit),
    ResourceRule("elasticache-failover-prod", "Redis fails over automatically in prod", "FSBP ElastiCache.3",
                 (REDIS_GROUP,), check_redis_failover),
    ResourceRule("elasticache-snapshots", "Redis keeps automatic snapshots", "FSBP ElastiCache.1 / CKV_AWS_134",
                 (REDIS_GROUP,), check_redis_snapshots),
    StackRule("s3-public-access-blocked", "Every bucket has all four public-access blocks on",
              "FSBP S3.8 / CKV_AWS_53, CKV_AWS_54, CKV_AWS_55, CKV_AWS_56", BUCKETS, check_s3_public_access),
    StackRule("s3-versioning", "Every bucket is versioned", "FSBP S3.14 / CKV_AWS_21", BUCKETS, check_s3_versioning),
    StackRule("s3-kms-encryption", "Every bucket is encrypted with the customer key (SSE-KMS); the ALB access-log "
              "bucket (tag purpose=load-balancer-access-logs) is exempt and uses SSE-S3, the only encryption ALB "
              "log delivery supports", "FSBP S3.17 / CKV_AWS_145", BUCKETS, check_s3_kms_encryption),
    StackRule("s3-tls-only", "Every bucket policy denies requests without TLS", "FSBP S3.5", BUCKETS, check_s3_tls_only),
    StackRule("s3-access-logging", "Every bucket has S3 server access logging, except the access-log bucket itself "
              "(tag purpose=load-balancer-access-logs), which receives it", "FSBP S3.9 / CKV_AWS_18", BUCKETS,
              check_s3_access_logging),
    StackRule("s3-lifecycle", "Every bucket has an enabled lifecycle rule", "FSBP S3.13 / CKV2_AWS_61", BUCKETS,
              check_s3_lifecycle),
    ResourceRule("secrets-customer-key", "Secrets are encrypted with the customer key", "CKV_AWS_149", (SECRET,),
                 check_secret_kms),
    StackRule("secrets-rotation", f"Secrets rotate automatically at least every {MAX_ROTATION_DAYS} days "
              f"(secrets tagged {SECRET_KIND_TAG}={'/'.join(ROTATION_EXEMPT_SECRET_KINDS)} are exempt)",
              "FSBP SecretsManager.1, SecretsManager.4 / CKV2_AWS_57", (SECRET, SECRET_ROTATION), check_secret_rotation),
    ResourceRule("kms-key-rotation", "Symmetric KMS keys rotate yearly", "FSBP KMS.4 / CKV_AWS_7", (KMS_KEY,),
                 check_kms_rotation),
    ResourceRule("sns-topic-encrypted", "SNS topics are encrypted with KMS", "FSBP SNS.1 / CKV_AWS_26", (SNS_TOPIC,),
                 check_sns_encryption),
)


def rule_named(name: str) -> Rule:
    return next(rule for rule in RULES if rule.name == name)


def _sdk_name(type_token: str) -> str:
    """aws:autoscaling/group:Group -> aws.autoscaling.Group, the class that declares it."""
    provider, module, type_name = type_token.split(":")
    return f"{provider}.{module.split('/')[0]}.{type_name}"


def rules_markdown() -> str:
    """The rule table of docs/policy.md, generated from RULES (python -m scripts.docs)."""
    lines = ["| rule | kind | applies to | control | requirement |", "|---|---|---|---|---|"]
    for rule in RULES:
        kind = "resource" if isinstance(rule, ResourceRule) else "stack"
        types = ", ".join("every aws: resource" if t == "aws:" else _sdk_name(t) for t in rule.types)
        lines.append(f"| `{rule.name}` | {kind} | {types} | {rule.control} | {rule.description} |")
    return "\n".join(lines)
