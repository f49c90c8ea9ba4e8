"""Run the real program under Pulumi's mock engine.

One harness for the offline plan (`python -m scripts.plan`) and the unit tests: it loads the
project defaults from Pulumi.yaml and a stack file exactly as the CLI would, runs
`infra.program.main()` with `pulumi.runtime.set_mocks`, and records every resource the program
registers: type token, logical name, mock id, parent, dependencies and the inputs the engine
receives (camelCase, secrets replaced by "[secret]"). Invokes (availability zones, AMI lookup,
caller identity...) are answered with realistic values for the stack's region.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.sync_await import _sync_await

from infra.config import PROJECT, ConfigError

ROOT_DIR = Path(__file__).resolve().parent.parent
MOCK_ACCOUNT_ID = "123456789012"
SECRET_MASK = "[secret]"  # noqa: S105 - the mask, not a secret
UNKNOWN_MASK = "[unknown]"

_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 - Pulumi wire signature
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
_ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"
_ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"
_OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"
_SIG_KEY = "4dabf18193072939515e22adb298388d"
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# The AWS load-balancer log-delivery account of each region (used by the ALB log bucket policy).
ELB_ACCOUNTS = {
    "eu-central-1": "054676820928", "eu-west-1": "156460612806", "eu-west-2": "652711504416",
    "eu-west-3": "009996457667", "eu-north-1": "897822967062", "us-east-1": "127311923021",
    "us-east-2": "033677994240", "us-west-2": "797873946194",
}


@dataclass
class PlannedResource:
    type: str
    name: str
    urn: str
    id: str
    parent: Optional[str]
    inputs: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    custom: bool = True
    provider: Optional[str] = None
    outputs: dict[str, Any] = field(default_factory=dict)
    # Resource options the engine receives: ignoreChanges, additionalSecretOutputs, protect,
    # deleteBeforeReplace, replaceOnChanges, retainOnDelete (only those that are set).
    options: dict[str, Any] = field(default_factory=dict)
    # The inputs with secrets unmasked (mock values only: generated passwords, config
    # placeholders); for the provider check, never printed by the plan.
    revealed_inputs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ignore_changes(self) -> list[str]:
        """Property names (camelCase, as the engine receives them) that updates leave alone."""
        return list(self.options.get("ignoreChanges", []))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "id": self.id, "parent": self.parent,
                "inputs": self.inputs, "depends_on": self.depends_on}


@dataclass
class Plan:
    stack: str
    resources: list[PlannedResource]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    # What the program logged as warnings (pulumi.log.warn), e.g. placeholder values.
    warnings: list[str] = field(default_factory=list)

    def of_type(self, type_token: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str, name: Optional[str] = None) -> PlannedResource:
        found = [r for r in self.of_type(type_token) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {type_token} {name or ''}, found {[r.name for r in found]}")
        return found[0]

    def named(self, name: str) -> PlannedResource:
        return next(r for r in self.resources if r.name == name)

    def by_id(self, resource_id: str) -> Optional[PlannedResource]:
        return next((r for r in self.resources if r.id == resource_id), None)

    def by_urn(self, urn: str) -> Optional[PlannedResource]:
        return next((r for r in self.resources if r.urn == urn), None)

    def children_of(self, name: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.parent == name]

    def ordered(self) -> list[PlannedResource]:
        """Resources as a tree walk (parents before children, siblings by name): registration
        order is asynchronous, this order is stable from run to run."""
        children: dict[Optional[str], list[PlannedResource]] = {}
        for r in self.resources:
            children.setdefault(r.parent, []).append(r)
        out: list[PlannedResource] = []

        def walk(parent: Optional[str]) -> None:
            for r in sorted(children.get(parent, []), key=lambda r: (r.custom, r.name, r.type)):
                out.append(r)
                if not r.custom:
                    walk(r.name)

        walk(None)
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.resources:
            out[r.type] = out.get(r.type, 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "resources": [r.to_json() for r in self.ordered()],
                "outputs": self.outputs, "counts": self.counts(), "warnings": self.warnings}


# --- stack configuration, loaded as the CLI would ---------------------------------------

def _config_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


class StackFileError(ConfigError):
    """A project or stack file that is not YAML, or not the shape Pulumi reads."""

    def __init__(self, message: str):
        self.problems = []
        Exception.__init__(self, message)


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as the Pulumi CLI reads it (YAML 1.2 core schema): only true/false are booleans;
    yes/no/on/off stay strings, so the program judges them as the CLI would hand them over."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def read_yaml_mapping(path: Path, section: Optional[str] = None) -> dict[str, Any]:
    """A YAML file's top-level mapping (or its `section` mapping), or StackFileError naming
    the file and, for a syntax error, the line and column."""
    try:
        document = yaml.load(path.read_text(), Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
        raise StackFileError(f"{where}: not valid YAML: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise StackFileError(f"{path.name}: not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StackFileError(f"{path}: cannot be read: {err}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise StackFileError(f"{path.name}: expected a YAML mapping at the top, found {type(document).__name__}")
    if section is None:
        return document
    part = document.get(section) or {}
    if not isinstance(part, dict):
        raise StackFileError(f"{path.name}: expected '{section}:' to be a mapping of keys to values, "
                             f"found {type(part).__name__}")
    return part


def load_stack_config_file(stack: str, config_file: Optional[Path] = None) -> tuple[dict[str, str], list[str]]:
    """Pulumi.yaml defaults overlaid with the stack file, as flat `namespace:key` strings.

    Values stored encrypted (`secure: ...`) cannot be decrypted without the CLI; they are
    kept as a placeholder and marked secret, which is all the program needs to plan."""
    values: dict[str, str] = {}
    for key, decl in read_yaml_mapping(ROOT_DIR / "Pulumi.yaml", "config").items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(decl, dict):
            if "value" in decl:
                values[full] = _config_string(decl["value"])
            elif "default" in decl:
                values[full] = _config_string(decl["default"])
        else:
            values[full] = _config_string(decl)
    path = Path(config_file or ROOT_DIR / f"Pulumi.{stack}.yaml")
    secret_keys: list[str] = []
    for key, value in read_yaml_mapping(path, "config").items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[full] = "encrypted-secret-placeholder"
            secret_keys.append(full)
        else:
            values[full] = _config_string(value)
    return values, secret_keys


# --- mock provider -------------------------------------------------------------------

def _short_hash(*parts: str, length: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


_ID_PREFIX = {
    "aws:ec2/vpc:Vpc": "vpc-", "aws:ec2/subnet:Subnet": "subnet-",
    "aws:ec2/securityGroup:SecurityGroup": "sg-", "aws:ec2/internetGateway:InternetGateway": "igw-",
    "aws:ec2/natGateway:NatGateway": "nat-", "aws:ec2/routeTable:RouteTable": "rtb-",
    "aws:ec2/eip:Eip": "eipalloc-", "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce-",
    "aws:ec2/flowLog:FlowLog": "fl-", "aws:ec2/launchTemplate:LaunchTemplate": "lt-",
    "aws:ec2/instance:Instance": "i-", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr-",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr-",
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": "sg-",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "rtbassoc-",
    "aws:ec2/route:Route": "r-",
    "aws:ebs/volume:Volume": "vol-",
}
_ARN_SERVICE = {
    "ec2": "ec2", "vpc": "ec2", "s3": "s3", "kms": "kms", "iam": "iam", "lb": "elasticloadbalancing",
    "alb": "elasticloadbalancing", "rds": "rds", "elasticache": "elasticache",
    "secretsmanager": "secretsmanager", "lambda": "lambda", "sns": "sns",
    "cloudwatch": "logs", "autoscaling": "autoscaling", "acm": "acm", "route53": "route53",
}


class PlanMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes with deterministic, realistic values."""

    def __init__(self, region: str, stack: str):
        self.region = region
        self.stack = stack

    def _id(self, args: pulumi.runtime.MockResourceArgs) -> str:
        prefix = _ID_PREFIX.get(args.typ)
        digest = _short_hash(self.stack, args.typ, args.name)
        return f"{prefix}{digest}" if prefix else f"{args.name}-{digest[:8]}"

    def _arn(self, typ: str, resource_id: str, name: str) -> str:
        module = typ.split(":")[1].split("/")[0]
        service = _ARN_SERVICE.get(module, module)
        kind = typ.rsplit(":", 1)[1].lower()
        region = "" if service in ("iam", "s3", "route53") else self.region
        account = "" if service == "s3" else MOCK_ACCOUNT_ID
        if service == "s3":
            return f"arn:aws:s3:::{name}"
        if service == "secretsmanager":
            return f"arn:aws:secretsmanager:{region}:{account}:secret:{name}-AbCdEf"
        return f"arn:aws:{service}:{region}:{account}:{kind}/{resource_id}"

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[Optional[str], dict]:
        resource_id = self._id(args)
        state = dict(args.inputs)
        typ = args.typ
        physical = state.get("name") or state.get("bucket") or f"{args.name}-{_short_hash(self.stack, args.name)[:7]}"
        if "name" not in state and not typ.startswith(("random:", "command:")):
            state["name"] = physical
        state.setdefault("arn", self._arn(typ, resource_id, str(physical)))
        extra = _COMPUTED.get(typ)
        if extra is not None:
            state.update(extra(self, args, resource_id, state))
        if typ == "aws:s3/bucket:Bucket":
            resource_id = state["bucket"]  # a bucket's id is its name
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, Optional[list[tuple[str, str]]]]:
        handler = _INVOKES.get(args.token)
        if handler is None:
            raise NotImplementedError(f"the mock engine has no answer for invoke {args.token}; add one to harness/mock_engine.py")
        return handler(self, args.args), []


def _azs(mocks: PlanMocks, _: dict) -> dict:
    names = [f"{mocks.region}{s}" for s in "abc"]
    return {"names": names, "zoneIds": [f"euc1-az{i}" for i in (2, 3, 1)], "id": mocks.region,
            "groupNames": [mocks.region], "state": "available"}


def _ami(mocks: PlanMocks, args: dict) -> dict:
    return {"id": "ami-0c1f2e3d4b5a69788", "imageId": "ami-0c1f2e3d4b5a69788", "architecture": "x86_64",
            "name": "al2023-ami-2023.9.20261104.0-kernel-6.12-x86_64", "ownerId": "137112412989",
            "rootDeviceName": "/dev/xvda", "mostRecent": True, "virtualizationType": "hvm"}


_INVOKES: dict[str, Callable[[PlanMocks, dict], dict]] = {
    "aws:index/getAvailabilityZones:getAvailabilityZones": _azs,
    "aws:index/getCallerIdentity:getCallerIdentity": lambda m, a: {
        "accountId": MOCK_ACCOUNT_ID, "arn": f"arn:aws:iam::{MOCK_ACCOUNT_ID}:user/plan", "userId": "AIDAPLAN", "id": MOCK_ACCOUNT_ID},
    "aws:index/getRegion:getRegion": lambda m, a: {"region": m.region, "name": m.region, "id": m.region,
                                                     "endpoint": f"ec2.{m.region}.amazonaws.com"},
    "aws:index/getPartition:getPartition": lambda m, a: {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"},
    "aws:ec2/getAmi:getAmi": _ami,
    "aws:elb/getServiceAccount:getServiceAccount": lambda m, a: {
        "id": ELB_ACCOUNTS.get(m.region, "054676820928"),
        "arn": f"arn:aws:iam::{ELB_ACCOUNTS.get(m.region, '054676820928')}:root"},
}


def _computed_bucket(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    name = state.get("bucket") or f"{args.name}-{_short_hash(m.stack, args.name)[:12]}"
    return {"bucket": name, "arn": f"arn:aws:s3:::{name}",
            "bucketDomainName": f"{name}.s3.amazonaws.com",
            "bucketRegionalDomainName": f"{name}.s3.{m.region}.amazonaws.com"}


def _computed_vpc(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"ipv6CidrBlock": "2a05:d014:a1b:7c00::/56", "defaultSecurityGroupId": f"sg-{_short_hash(rid)}",
            "mainRouteTableId": f"rtb-{_short_hash(rid, 'main')}"}


def _computed_eip(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    octet = int(_short_hash(m.stack, args.name, length=2), 16)
    return {"allocationId": rid, "publicIp": f"203.0.113.{octet % 250 + 1}"}


def _computed_kms(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    key_id = f"{_short_hash(args.name, length=8)}-0000-4000-8000-{_short_hash(m.stack, args.name, length=12)}"
    return {"keyId": key_id, "arn": f"arn:aws:kms:{m.region}:{MOCK_ACCOUNT_ID}:key/{key_id}"}


def _computed_log_group(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"arn": f"arn:aws:logs:{m.region}:{MOCK_ACCOUNT_ID}:log-group:{state['name']}"}


def _computed_lb(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    suffix = f"app/{state['name']}/{_short_hash(m.stack, args.name, length=16)}"
    return {"dnsName": f"{state['name']}-1234567890.{m.region}.elb.amazonaws.com",
            "zoneId": "Z215JYRZR1TBD5", "arnSuffix": suffix,
            "arn": f"arn:aws:elasticloadbalancing:{m.region}:{MOCK_ACCOUNT_ID}:loadbalancer/{suffix}"}


def _computed_tg(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    suffix = f"targetgroup/{state['name']}/{_short_hash(m.stack, args.name, length=16)}"
    return {"arnSuffix": suffix,
            "arn": f"arn:aws:elasticloadbalancing:{m.region}:{MOCK_ACCOUNT_ID}:{suffix}"}


def _computed_rds(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    ident = state.get("identifier") or f"{args.name}-{_short_hash(m.stack, args.name)[:8]}"
    address = f"{ident}.c0abcdefghij.{m.region}.rds.amazonaws.com"
    out = {"identifier": ident, "address": address, "endpoint": f"{address}:5432", "port": 5432,
           "resourceId": f"db-{_short_hash(m.stack, ident, length=26).upper()}",
           "arn": f"arn:aws:rds:{m.region}:{MOCK_ACCOUNT_ID}:db:{ident}"}
    if state.get("manageMasterUserPassword"):
        out["masterUserSecrets"] = [{
            "secretArn": f"arn:aws:secretsmanager:{m.region}:{MOCK_ACCOUNT_ID}:secret:rds!db-{rid}-AbCdEf",
            "kmsKeyId": state.get("masterUserSecretKmsKeyId", ""), "secretStatus": "active"}]
    return out


def _computed_name_prefix(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    """Resources named by `namePrefix` get the provider's 26-character unique suffix."""
    prefix = state.get("namePrefix")
    if not prefix or args.inputs.get("name"):
        return {}
    return {"name": f"{prefix}{_short_hash(m.stack, args.name, length=26)}"}


def _computed_redis(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    gid = state.get("replicationGroupId") or args.name
    return {"primaryEndpointAddress": f"master.{gid}.abcdef.euc1.cache.amazonaws.com",
            "readerEndpointAddress": f"replica.{gid}.abcdef.euc1.cache.amazonaws.com",
            "port": state.get("port", 6379),
            "arn": f"arn:aws:elasticache:{m.region}:{MOCK_ACCOUNT_ID}:replicationgroup:{gid}"}


def _computed_instance(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"privateIp": "10.0.16.10", "privateDns": f"ip-10-0-16-10.{m.region}.compute.internal",
            "arn": f"arn:aws:ec2:{m.region}:{MOCK_ACCOUNT_ID}:instance/{rid}"}


def _computed_role(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"arn": f"arn:aws:iam::{MOCK_ACCOUNT_ID}:role/{state['name']}", "uniqueId": "AROAPLAN"}


def _computed_lambda(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    arn = f"arn:aws:lambda:{m.region}:{MOCK_ACCOUNT_ID}:function:{state['name']}"
    return {"arn": arn, "qualifiedArn": f"{arn}:1", "version": "1",
            "invokeArn": f"arn:aws:apigateway:{m.region}:lambda:path/2015-03-31/functions/{arn}/invocations"}


def _computed_random(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    length = int(state.get("length", 32))
    return {"result": ("P" + _short_hash(m.stack, args.name, length=64))[:length]}


def _computed_secret(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    name = state.get("name") or args.name
    return {"arn": f"arn:aws:secretsmanager:{m.region}:{MOCK_ACCOUNT_ID}:secret:{name}-AbCdEf"}


def _computed_certificate(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    domain = state.get("domainName", "example.com")
    token = _short_hash(m.stack, domain, length=32)
    return {"arn": f"arn:aws:acm:{m.region}:{MOCK_ACCOUNT_ID}:certificate/{token[:8]}-{token[8:12]}-4{token[13:16]}-8{token[17:20]}-{token[20:32]}",
            "status": "PENDING_VALIDATION",
            "domainValidationOptions": [{
                "domainName": domain, "resourceRecordType": "CNAME",
                "resourceRecordName": f"_{token[:16]}.{domain}.",
                "resourceRecordValue": f"_{token[16:]}.validations.aws."}]}


def _computed_record(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"fqdn": str(state.get("name", "")).rstrip(".")}


def _computed_launch_template(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"latestVersion": 1, "defaultVersion": 1,
            "arn": f"arn:aws:ec2:{m.region}:{MOCK_ACCOUNT_ID}:launch-template/{rid}"}


def _computed_asg(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    name = state["name"]
    return {"arn": f"arn:aws:autoscaling:{m.region}:{MOCK_ACCOUNT_ID}:autoScalingGroup:"
                   f"{_short_hash(m.stack, name, length=8)}-0000-4000-8000-{_short_hash(name, length=12)}:autoScalingGroupName/{name}"}


def _computed_instance_profile(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"arn": f"arn:aws:iam::{MOCK_ACCOUNT_ID}:instance-profile/{state['name']}", "uniqueId": "AIPAPLAN"}


def _computed_topic(m: PlanMocks, args: Any, rid: str, state: dict) -> dict:
    return {"arn": f"arn:aws:sns:{m.region}:{MOCK_ACCOUNT_ID}:{state['name']}"}


_COMPUTED: dict[str, Callable[[PlanMocks, Any, str, dict], dict]] = {
    "aws:s3/bucket:Bucket": _computed_bucket,
    "aws:ec2/vpc:Vpc": _computed_vpc,
    "aws:ec2/eip:Eip": _computed_eip,
    "aws:kms/key:Key": _computed_kms,
    "aws:cloudwatch/logGroup:LogGroup": _computed_log_group,
    "aws:lb/loadBalancer:LoadBalancer": _computed_lb,
    "aws:lb/targetGroup:TargetGroup": _computed_tg,
    "aws:rds/instance:Instance": _computed_rds,
    "aws:rds/parameterGroup:ParameterGroup": _computed_name_prefix,
    "aws:ec2/securityGroup:SecurityGroup": _computed_name_prefix,
    "aws:elasticache/replicationGroup:ReplicationGroup": _computed_redis,
    "aws:ec2/instance:Instance": _computed_instance,
    "aws:iam/role:Role": _computed_role,
    "aws:lambda/function:Function": _computed_lambda,
    "random:index/randomPassword:RandomPassword": _computed_random,
    "random:index/randomString:RandomString": _computed_random,
    "aws:secretsmanager/secret:Secret": _computed_secret,
    "aws:acm/certificate:Certificate": _computed_certificate,
    "aws:route53/record:Record": _computed_record,
    "aws:ec2/launchTemplate:LaunchTemplate": _computed_launch_template,
    "aws:autoscaling/group:Group": _computed_asg,
    "aws:iam/instanceProfile:InstanceProfile": _computed_instance_profile,
    "aws:sns/topic:Topic": _computed_topic,
}


# --- recording monitor ---------------------------------------------------------------

def _plain(value: Any, urn_to_id: dict[str, str], reveal: bool = False) -> Any:
    """Turn a deserialised protobuf value into plain JSON, masking secrets and unknowns.

    With `reveal`, secrets keep their (mock) values and assets keep their text: the provider
    check hands the real inputs to the provider's validators, which judge values, not masks."""
    if isinstance(value, dict):
        sig = value.get(_SIG_KEY)
        if sig == _SECRET_SIG:
            return _plain(value.get("value"), urn_to_id, reveal) if reveal else SECRET_MASK
        if sig == _RESOURCE_SIG:
            return value.get("id") or urn_to_id.get(value.get("urn", ""), value.get("urn"))
        if sig == _ASSET_SIG:
            if reveal and value.get("text") is not None:
                return {"asset": "<text>", "text": value["text"]}
            return {"asset": value.get("path") or value.get("uri") or "<text>"}
        if sig == _ARCHIVE_SIG:
            return {"archive": value.get("path") or value.get("uri") or sorted((value.get("assets") or {}).keys())}
        if sig == _OUTPUT_SIG:
            if value.get("secret") and not reveal:
                return SECRET_MASK
            return _plain(value.get("value"), urn_to_id, reveal) if "value" in value else UNKNOWN_MASK
        return {k: _plain(v, urn_to_id, reveal) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, urn_to_id, reveal) for v in value]
    if value == _UNKNOWN:
        return UNKNOWN_MASK
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _plain_state(value: Any) -> Any:
    """A resource's recorded state with assets and archives in the form `_plain` gives inputs
    (the mocks hand back the Python objects; consumers such as the policy analyzer need JSON)."""
    if isinstance(value, pulumi.asset.Archive):
        if isinstance(value, pulumi.asset.AssetArchive):
            return {"archive": sorted(value.assets)}
        return {"archive": getattr(value, "path", None) or getattr(value, "uri", None)}
    if isinstance(value, pulumi.asset.Asset):
        return {"asset": getattr(value, "path", None) or getattr(value, "uri", None) or "<text>"}
    if isinstance(value, dict):
        return {k: _plain_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_state(v) for v in value]
    return value


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _type_of(urn: str) -> str:
    return urn.split("::")[2].split("$")[-1]


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The stock mock monitor, plus a record of parent, dependencies and masked inputs."""

    def __init__(self, mocks: PlanMocks):
        super().__init__(mocks)
        self.planned: list[PlannedResource] = []
        self._urn_to_id: dict[str, str] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        wire_inputs = json_format.MessageToDict(request.object)
        inputs = _plain(wire_inputs, self._urn_to_id)
        registered = self.resources.get(response.urn)
        resource_id = registered.id if registered is not None else ""
        if not request.custom:
            resource_id = ""
        self._urn_to_id[response.urn] = resource_id
        parent = None
        if request.parent and _type_of(request.parent) != "pulumi:pulumi:Stack":
            parent = _name_of(request.parent)
        state = registered.state if registered is not None else {}
        options = {
            "ignoreChanges": list(request.ignoreChanges),
            "additionalSecretOutputs": list(request.additionalSecretOutputs),
            "replaceOnChanges": list(request.replaceOnChanges),
            "protect": bool(request.protect),
            "deleteBeforeReplace": bool(request.deleteBeforeReplace),
            "retainOnDelete": bool(request.retainOnDelete),
        }
        self.planned.append(PlannedResource(
            type=request.type, name=request.name, urn=response.urn, id=resource_id, parent=parent,
            inputs=inputs, depends_on=sorted({_name_of(u) for u in request.dependencies}),
            custom=bool(request.custom), provider=request.provider or None,
            outputs=_plain_state(state) if isinstance(state, dict) else {},
            revealed_inputs=_plain(wire_inputs, self._urn_to_id, reveal=True),
            options={k: v for k, v in options.items() if v}))
        return response


# --- running the program -------------------------------------------------------------

async def _resolve_exports(value: Any) -> tuple[Any, bool]:
    """Resolve a stack export; returns (plain value with secret parts masked, any secret)."""
    if isinstance(value, pulumi.Output):
        secret = await value.is_secret()
        resolved = await value.future()
        if secret:
            return SECRET_MASK, True
        return await _resolve_exports(resolved)
    if isinstance(value, dict):
        out, any_secret = {}, False
        for k, v in value.items():
            out[k], s = await _resolve_exports(v)
            any_secret = any_secret or s
        return out, any_secret
    if isinstance(value, (list, tuple)):
        items, any_secret = [], False
        for v in value:
            item, s = await _resolve_exports(v)
            items.append(item)
            any_secret = any_secret or s
        return items, any_secret
    if isinstance(value, pulumi.Resource):
        return await _resolve_exports(value.urn)
    return value, False


class _WarningRecorder(logging.Handler):
    """Keeps the program's warnings (the mock engine logs them through a logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.logger = logging.getLogger(f"{__name__}.plan.{id(self)}")
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_program(stack: str, config_file: Optional[Path] = None,
                overrides: Optional[dict[str, Any]] = None,
                secret_overrides: Optional[dict[str, str]] = None,
                program: Optional[Callable[[], None]] = None) -> Plan:
    """Run the program for `stack` under mocks and return what it registered.

    `overrides` replace config values (keys without a namespace belong to the project);
    `secret_overrides` set secret config. Raises infra.config.ConfigError on bad config."""
    values, secret_keys = load_stack_config_file(stack, config_file)
    for key, value in (overrides or {}).items():
        values[key if ":" in key else f"{PROJECT}:{key}"] = _config_string(value)
    for key, value in (secret_overrides or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        values[full] = value
        secret_keys.append(full)
    region = values.get("aws:region", "eu-central-1")
    if program is None:
        from infra.program import main
        # The offline plan reviews the program: placeholder values are warnings here, while
        # `pulumi preview/up` of prod refuses them.
        program = functools.partial(main, placeholders="warn")

    def run() -> Plan:
        mocks = PlanMocks(region=region, stack=stack)
        monitor = RecordingMonitor(mocks)
        warnings = _WarningRecorder()
        pulumi.runtime.set_all_config(values, secret_keys)
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor,
                                 logger=warnings.logger)
        from pulumi.runtime.settings import get_root_resource
        from pulumi.runtime.stack import run_pulumi_func

        assert program is not None
        _sync_await(run_pulumi_func(program))
        root = get_root_resource()
        exported = dict(getattr(root, "outputs", {}) or {})
        outputs: dict[str, Any] = {}
        secret_names: set[str] = set()

        async def resolve_all() -> None:
            for name in sorted(exported):
                outputs[name], secret = await _resolve_exports(exported[name])
                if secret:
                    secret_names.add(name)

        _sync_await(run_pulumi_func(resolve_all))
        return Plan(stack=stack, resources=monitor.planned, outputs=outputs, secret_outputs=secret_names,
                    warnings=warnings.messages)

    # A fresh context per run: Pulumi keeps its settings, config and root stack in context
    # variables, so plans of several stacks in one process never see each other.
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return contextvars.Context().run(run)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
