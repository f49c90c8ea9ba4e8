"""The account scan's pure parts: reading stack exports (secrets never in the clear), the type
table, value normalization and comparison, and what counts as ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.drift import catalog, state
from scripts.drift.live import Live
from scripts.drift.model import Context
from scripts.drift.scan import compare
from scripts.lib import cli

SIG = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}


def export(resources: list[dict]) -> dict:
    provider = {"urn": "urn:pulumi:prod::psychology-api::pulumi:providers:aws::aws", "custom": True, "id": "p-1",
                "type": "pulumi:providers:aws",
                "inputs": {"region": "eu-west-1", "defaultTags": json.dumps({"tags": {
                    "project": "psychology-api", "stack": "prod", "managed-by": "pulumi", "environment": "prod"}})},
                "outputs": {}}
    stack = {"urn": "urn:pulumi:prod::psychology-api::pulumi:pulumi:Stack::psychology-api-prod", "custom": False,
             "type": "pulumi:pulumi:Stack"}
    return {"version": 3, "deployment": {"manifest": {}, "resources": [stack, provider, *resources]}}


def resource(token: str, name: str, rid: str, outputs: dict, **extra: object) -> dict:
    return {"urn": f"urn:pulumi:prod::psychology-api::{token}::{name}", "custom": True, "id": rid, "type": token,
            "inputs": {}, "outputs": outputs, **extra}


def test_export_parsing_keeps_secrets_out() -> None:
    parsed = state.parse_stack(export([
        resource("aws:rds/instance:Instance", "db", "db-1", {
            "password": SIG | {"ciphertext": "v1:AAAA"}, "publiclyAccessible": False}),
        resource("aws:elasticache/replicationGroup:ReplicationGroup", "redis", "r-1", {
            "authToken": "plain-token-in-export-1234", "atRestEncryptionEnabled": True},
            additionalSecretOutputs=["authToken"]),
        resource("aws:secretsmanager/secretVersion:SecretVersion", "v", "v-1", {
            "secretString": SIG | {"plaintext": json.dumps(json.dumps({"SECRET_KEY": "django-key-5678"}))}}),
        resource("aws:ec2/instance:Instance", "old", "i-old", {}, delete=True),
    ]), source="prod.json")
    assert (parsed.stack, parsed.project, parsed.region) == ("prod", "psychology-api", "eu-west-1")
    assert parsed.our_tags == {"project": "psychology-api", "stack": "prod"}
    assert [r.type for r in parsed.resources] == [
        "aws:rds/instance:Instance", "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:secretsmanager/secretVersion:SecretVersion"]  # no provider, no component, no pending delete
    db, redis, version = parsed.resources
    assert db.outputs == {"password": "[secret]", "publiclyAccessible": False}
    assert db.secret_properties == {"password"}
    assert redis.outputs["authToken"] == "[secret]" and redis.outputs["atRestEncryptionEnabled"] is True
    assert version.outputs["secretString"] == "[secret]"
    # Plain text found on the way is masked wherever it might be printed.
    assert cli.masker("plain-token-in-export-1234 django-key-5678") == "*** ***"
    assert state.secret_paths(export([resource("aws:rds/instance:Instance", "db", "db-1", {
        "password": SIG | {"ciphertext": "x"}})]))["urn:pulumi:prod::psychology-api::aws:rds/instance:Instance::db"] == {"password"}


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(cli.ScriptError, match="no such file"):
        state.load_exports([tmp_path / "missing.json"])
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(cli.ScriptError, match="not readable JSON"):
        state.load_exports([tmp_path / "text.json"])
    (tmp_path / "odd.json").write_text(json.dumps({"version": 3, "deployment": {"resources": {}}}))
    with pytest.raises(cli.ScriptError, match="no deployment.resources list"):
        state.load_exports([tmp_path / "odd.json"])
    (tmp_path / "bare.json").write_text(json.dumps({"resources": []}))  # export_stack().deployment is accepted too
    assert state.load_exports([tmp_path / "bare.json"])[0].resources == []


@pytest.mark.parametrize(("content", "says"), [
    ("not json", "not readable JSON (JSONDecodeError); expected the output of `pulumi stack export`"),
    (json.dumps({"foo": 1}), "not a Pulumi stack export: no deployment or resources key (found foo)"),
    (json.dumps([1, 2]), "not a Pulumi stack export but a JSON list"),
    (json.dumps({"version": 3, "deployment": {}}), "the deployment has no resources list"),
    (json.dumps({"version": 3, "deployment": {"manifest": {}}}), "the deployment has no resources list"),
    (json.dumps({"version": 3, "deployment": []}), "the deployment is not an object"),
    (json.dumps({"version": 9, "deployment": {"resources": []}}), "unsupported stack export version 9"),
    (json.dumps({"deployment": {"resources": []}}), "unsupported stack export version None"),
    (json.dumps({"version": 3, "deployment": {"resources": [{"id": "x"}]}}), "resource 1 has no urn and type"),
])
def test_a_file_that_is_not_a_stack_export_is_a_usage_error(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(cli.ScriptError) as err:
        state.load_exports([path])
    assert err.value.exit_code == cli.EXIT_USAGE
    assert str(err.value).startswith(f"--state {path}: ") and says in str(err.value)


def test_the_engine_reads_an_empty_stacks_deployment() -> None:
    """The Automation API's deployment of a stack never deployed has no resources: nothing is secret."""
    assert state.secret_paths({"manifest": {}}) == {}


def test_table_covers_the_types_the_platform_uses() -> None:
    required = {
        "aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/securityGroup:SecurityGroup",
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
        "aws:ec2/internetGateway:InternetGateway", "aws:ec2/natGateway:NatGateway", "aws:ec2/routeTable:RouteTable",
        "aws:ec2/vpcEndpoint:VpcEndpoint", "aws:ec2/instance:Instance", "aws:ec2/launchTemplate:LaunchTemplate",
        "aws:autoscaling/group:Group", "aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup",
        "aws:lb/listener:Listener", "aws:rds/instance:Instance", "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:s3/bucket:Bucket", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "aws:s3/bucketPolicy:BucketPolicy", "aws:kms/key:Key", "aws:secretsmanager/secret:Secret",
        "aws:secretsmanager/secretRotation:SecretRotation", "aws:lambda/function:Function", "aws:sns/topic:Topic",
        "aws:cloudwatch/logGroup:LogGroup"}
    covered = {token for spec in catalog.SPECS for token in spec.tokens}
    assert required <= covered
    assert len(covered) == sum(len(spec.tokens) for spec in catalog.SPECS)  # one row per type


def test_policies_compare_by_meaning() -> None:
    ours = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": ["s3:*"],
                                                    "Resource": ["arn:aws:s3:::b/*", "arn:aws:s3:::b"]}]}
    aws_form = {"Statement": {"Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"], "Action": "s3:*", "Principal": "*",
                              "Effect": "Deny"}, "Version": "2012-10-17"}
    assert catalog.canonical_policy(json.dumps(ours)) == catalog.canonical_policy(json.dumps(aws_form))
    opened = json.loads(json.dumps(ours))
    opened["Statement"][0]["Effect"] = "Allow"
    assert catalog.canonical_policy(opened) != catalog.canonical_policy(ours)
    assert catalog.canonical_policy(None) is None


def test_value_normalization() -> None:
    assert catalog.kms_key("arn:aws:kms:eu-central-1:123456789012:key/1234abcd") == "1234abcd"
    assert catalog.kms_key("1234abcd") == "1234abcd"
    assert catalog.kms_key("arn:aws:kms:eu-central-1:123456789012:alias/data") == "alias/data"
    assert catalog.rule_tuple("6", "443", 443, "0.0.0.0/0") == ("tcp", 443, 443, "0.0.0.0/0")
    assert catalog.rule_tuple("-1", -1, -1, "sg-1") == catalog.rule_tuple("all", None, None, "sg-1") == ("-1", None, None, "sg-1")
    assert catalog.route_id("rtb-0abc", "0.0.0.0/0").startswith("r-rtb-0abc") and catalog.route_id(
        "rtb-0abc", "0.0.0.0/0")[len("r-rtb-0abc"):].isdigit()
    assert catalog.path({"rules": [{"apply": {"sse": "aws:kms"}}]}, "rules.apply.sse") == "aws:kms"
    assert catalog.as_bool("enabled") is True and catalog.as_bool("disabled") is False and catalog.as_bool(None) is None


def test_compare_skips_secrets_and_unrecorded_values() -> None:
    changes = compare({"publiclyAccessible": False, "password": "[secret]", "kmsKeyId": None, "multiAz": True},
                      {"publiclyAccessible": True, "password": "whatever", "kmsKeyId": "k", "multiAz": True})
    assert [(c.property, c.state, c.live) for c in changes] == [("publiclyAccessible", False, True)]


def test_what_counts_as_ours() -> None:
    parsed = state.parse_stack(export([]))
    ctx = Context(Live("eu-central-1"), [parsed], [])
    assert ctx.ours_by_tags({"project": "psychology-api", "stack": "prod"})
    assert ctx.ours_by_tags({"project": "psychology-api"}) == "tagged project=psychology-api (no stack tag)"
    assert ctx.ours_by_tags({"project": "psychology-api", "stack": "staging"}) is None
    assert ctx.ours_by_tags({"project": "other", "stack": "prod"}) is None
