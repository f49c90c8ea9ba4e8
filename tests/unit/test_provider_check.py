"""The provider check: both stacks pass the real hashicorp/aws provider's validators, and planted
mistakes are refused with the resource and property named.

Needs `terraform` and the mirrored provider (part of this machine kind): without them these
tests fail with the one line the check itself prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest

from harness.mock_engine import Plan, run_program
from scripts import plan as plan_cli
from scripts.provider_check.check import EXIT_CANNOT_RUN, EXIT_CLEAN, EXIT_REFUSED, Report, locate, run_check
from scripts.provider_check.located_json import dump_located, path_at
from scripts.provider_check.schema import ProviderSchema
from scripts.provider_check.terraform import CheckUnavailable, Toolchain, Workspace, find_toolchain
from scripts.provider_check.translate import AutoName, auto_name, terraform_type, translate

pytestmark = pytest.mark.tools


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    try:
        return find_toolchain()
    except CheckUnavailable as err:
        pytest.fail(f"provider check cannot run: {err}")


@pytest.fixture(scope="session")
def schema(toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> ProviderSchema:
    workspace = Workspace(toolchain, tmp_path_factory.mktemp("schema"))
    workspace.init()
    return ProviderSchema.from_json(workspace.provider_schema(), toolchain.provider_version)


@pytest.fixture
def check(toolchain: Toolchain, schema: ProviderSchema, tmp_path: Path) -> Any:
    def run(plan: Plan) -> Report:
        report, _, _ = run_check(plan, toolchain, tmp_path, schema)
        return report
    return run


# --- both stacks ------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_stack_is_accepted_by_the_provider(stack: str, plans: dict[str, Plan], check: Any) -> None:
    report = check(plans[stack])
    assert [f.line() for f in report.errors] == []
    assert report.planned and report.exit_code == EXIT_CLEAN
    # Every AWS resource of the program reached the provider.
    aws_resources = [r for r in plans[stack].resources if r.custom and r.type.startswith("aws:")]
    assert report.resources == len(aws_resources)


def test_security_groups_get_names_aws_accepts(plan: Plan, schema: ProviderSchema) -> None:
    translation = translate(plan, schema)
    groups = translation.config["resource"]["aws_security_group"]
    for label, group in groups.items():
        name = group.get("name") or group.get("name_prefix")
        assert name and not name.startswith("sg-"), label


def test_the_v5_v6_difference_is_reported_not_hidden(prod: Plan, schema: ProviderSchema) -> None:
    translation = translate(prod, schema)
    assert any("aws_lambda_function.code_sha256" in note for note in translation.notes)
    assert not translation.problems


# --- planted mistakes ----------------------------------------------------------------------

def _planted(check: Any, build: Any) -> Report:
    def program() -> None:
        vpc = aws.ec2.Vpc("planted-vpc", aws.ec2.VpcArgs(cidr_block="10.9.0.0/16"))
        build(vpc)
        pulumi.export("vpc_id", vpc.id)

    return check(run_program("staging", program=program))


def _refusal(report: Report, resource_name: str) -> str:
    assert report.exit_code == EXIT_REFUSED, [f.line() for f in report.findings]
    lines = [f.line() for f in report.errors if f.resource_name == resource_name]
    assert lines, [f.line() for f in report.errors]
    return lines[0]


def test_a_group_auto_named_sg_is_refused(check: Any) -> None:
    report = _planted(check, lambda vpc: aws.ec2.SecurityGroup(
        "sg-planted", aws.ec2.SecurityGroupArgs(vpc_id=vpc.id, description="planted")))
    line = _refusal(report, "sg-planted")
    assert line.startswith("aws:ec2/securityGroup:SecurityGroup sg-planted.name:")
    assert "cannot begin with sg-" in line


def test_a_too_long_name_is_refused(check: Any) -> None:
    report = _planted(check, lambda vpc: aws.iam.Role("planted-role", aws.iam.RoleArgs(
        name="r" * 70, assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": []}))))
    line = _refusal(report, "planted-role")
    assert "planted-role.name:" in line and "64" in line


def test_an_invalid_cidr_in_a_rule_is_refused(check: Any) -> None:
    def build(vpc: aws.ec2.Vpc) -> None:
        group = aws.ec2.SecurityGroup("planted-group", aws.ec2.SecurityGroupArgs(
            name_prefix="planted-", vpc_id=vpc.id, description="planted"))
        aws.vpc.SecurityGroupIngressRule("planted-rule", aws.vpc.SecurityGroupIngressRuleArgs(
            security_group_id=group.id, ip_protocol="tcp", from_port=443, to_port=443, cidr_ipv4="10.0.0.0/33"))

    line = _refusal(_planted(check, build), "planted-rule")
    assert "planted-rule.cidrIpv4:" in line


def test_an_unknown_enum_value_is_refused(check: Any) -> None:
    report = _planted(check, lambda vpc: aws.cloudwatch.LogGroup(
        "planted-logs", aws.cloudwatch.LogGroupArgs(retention_in_days=42)))
    line = _refusal(report, "planted-logs")
    assert "planted-logs.retentionInDays:" in line and "one of" in line


def test_an_auto_name_over_pulumi_aws_limit_is_refused(check: Any) -> None:
    report = _planted(check, lambda vpc: aws.lb.TargetGroup(
        "planted-target-group-with-a-long-name", aws.lb.TargetGroupArgs(port=80, protocol="HTTP", vpc_id=vpc.id)))
    line = _refusal(report, "planted-target-group-with-a-long-name")
    assert ".name:" in line and "32" in line


def test_a_property_the_schema_does_not_know_fails_the_check(staging: Plan, check: Any) -> None:
    vpc = staging.one("aws:ec2/vpc:Vpc")
    tampered = Plan(stack=staging.stack, resources=[
        r if r is not vpc else type(r)(**{**r.__dict__, "revealed_inputs": {**r.revealed_inputs, "cidrBlok": "10.0.0.0/16"}})
        for r in staging.resources], outputs=staging.outputs, secret_outputs=staging.secret_outputs)
    report = check(tampered)
    assert report.exit_code == EXIT_CANNOT_RUN
    gaps = [f.line() for f in report.errors if f.check_gap]
    assert gaps == [f"aws:ec2/vpc:Vpc {vpc.name}.cidrBlok: no attribute or block 'cidr_blok' in the provider schema "
                    f"for aws_vpc [translation]"]


# --- the translation's rules, on the real schema ---------------------------------------------

def test_type_tokens_map_to_terraform_types(schema: ProviderSchema) -> None:
    assert terraform_type("aws:rds/instance:Instance", schema) == "aws_db_instance"
    assert terraform_type("aws:ec2/instance:Instance", schema) == "aws_instance"
    assert terraform_type("aws:lb/loadBalancer:LoadBalancer", schema) == "aws_lb"
    assert terraform_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", schema) == \
        "aws_vpc_security_group_ingress_rule"
    with pytest.raises(LookupError, match="no single Terraform type"):
        terraform_type("aws:ec2/noSuchThing:NoSuchThing", schema)


def test_blocks_get_singular_names_and_one_element_lists(prod: Plan, schema: ProviderSchema) -> None:
    translation = translate(prod, schema)
    listeners = translation.config["resource"]["aws_lb_listener"]
    https = next(v for v in listeners.values() if v["port"] == 443)
    assert isinstance(https["default_action"], list) and https["default_action"][0]["type"] == "forward"
    asg = next(iter(translation.config["resource"]["aws_autoscaling_group"].values()))
    assert isinstance(asg["instance_refresh"], list) and isinstance(asg["instance_refresh"][0]["preferences"], list)
    assert "vpc_zone_identifier" in asg and "tag" in asg


def test_inputs_from_other_resources_become_references(prod: Plan, schema: ProviderSchema) -> None:
    translation = translate(prod, schema)
    subnets = translation.config["resource"]["aws_subnet"]
    assert {s["vpc_id"] for s in subnets.values()} == {"${aws_vpc.network-vpc.id}"}
    functions = translation.config["resource"]["aws_lambda_function"]
    assert all(f["role"].startswith("${aws_iam_role.") and f["role"].endswith(".arn}") for f in functions.values())


def test_auto_names_follow_pulumi_aws() -> None:
    name, problem = auto_name("prod", "alb-tg", AutoName("name", 32))
    assert len(name) == len("alb-tg-") + 7 and problem is None
    name, problem = auto_name("prod", "Backups", AutoName("bucket", 63, lowercase=True))
    assert name == name.lower() and problem is None
    _, problem = auto_name("prod", "x" * 30, AutoName("name", 32))
    assert problem and "over the 32" in problem


def test_diagnostics_map_back_to_the_pulumi_property(prod: Plan, schema: ProviderSchema) -> None:
    translation = translate(prod, schema)
    text, index = dump_located(translation.config)
    lines = text.splitlines()
    number = next(i for i, line in enumerate(lines, 1) if '"retention_in_days"' in line)
    path = path_at(index, number)
    diagnostic = {"severity": "error", "summary": "planted", "range": {"filename": "main.tf.json", "start": {"line": number}}}
    finding = locate(diagnostic, "validate", index, translation)
    assert finding.resource_type == "aws:cloudwatch/logGroup:LogGroup"
    assert finding.resource_name == path[2] and finding.property == "retentionInDays"
    assert json.loads(text) == translation.config


# --- the CLI ---------------------------------------------------------------------------------

def test_cli_without_terraform_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("PSYCHOLOGY_API_TERRAFORM", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.cli.run(plan_cli.main, ["--stack", "staging", "--provider-check"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: provider check cannot run: terraform is not on PATH (set PSYCHOLOGY_API_TERRAFORM to its path)"


def test_cli_with_a_mirror_without_the_provider_names_it(tmp_path: Path) -> None:
    with pytest.raises(CheckUnavailable, match="no hashicorp/aws provider in a Terraform plugin mirror"):
        find_toolchain({"PATH": "/usr/local/bin:/usr/bin", "PSYCHOLOGY_API_TF_PLUGIN_MIRROR": str(tmp_path)})


def test_cli_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_cli.main(["--stack", "staging", "--provider-check", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    report = document["provider_check"]
    assert report["ok"] is True and report["exit_code"] == 0 and report["findings"] == []
    assert report["provider_version"] and report["planned"] is True


def test_an_object_attribute_key_its_type_lacks_is_a_problem_not_dropped(staging: Plan, schema: ProviderSchema) -> None:
    """Terraform's type conversion would drop such a key without a word."""
    from scripts.provider_check.translate import Translator, _Context

    translator = Translator(staging, schema)
    vpc = staging.one("aws:ec2/vpc:Vpc")
    out = translator._object({"known_key": "string"}, {"knownKey": "a", "extraKey": "b"},
                             _Context(vpc, "aws_vpc.x", {}), "settings")
    assert out == {"known_key": "a"}
    assert [p.line() for p in translator.translation.problems] == [
        f"aws:ec2/vpc:Vpc {vpc.name}.settings.extraKey: no attribute 'extra_key' in the object type of settings for aws_vpc"]
    assert not translator.translation.problems[0].refused  # a gap of the check: exit 1
