"""The security-baseline policy: the same rule functions in the pack, the offline plan and here.

* The staging and prod plans have no violation.
* Every rule catches its deliberately bad synthetic resources (declared with the real SDK
  classes in policy_cases.py) and passes the good ones, and no other rule fires on them.
* The pack builds its policies without starting a server, and the Pulumi policy SDK's own
  analyzer (the code the CLI talks to) reports exactly what the rules report.
* `python -m scripts.plan --policy` exits 0 on the real stacks and 1 on a violation.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import pytest
from google.protobuf import json_format
from pulumi.runtime.proto import analyzer_pb2
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

import scripts.plan
from harness.mock_engine import Plan, PlannedResource, run_program
from infra.config import TLS13_POLICIES
from policy.model import UNKNOWN, ProviderView, ResourceRule, ResourceView, StackRule, Violation, evaluate, is_prod
from policy.pack import PACK_NAME, build_policies, plain
from policy.plan import check_plan, views_from_plan
from policy.rules import (
    RULES,
    TLS12_POLICIES,
    check_rds_encryption,
    check_s3_tls_only,
    find_secrets,
    rule_named,
    rules_markdown,
    user_data_texts,
)
from tests.unit.policy_cases import (
    BENIGN_CLOUD_CONFIG,
    BENIGN_SCRIPT,
    EXPECTED,
    EXPECTED_PROD_ONLY,
    expected_rules,
    synthetic_program,
)

ROOT = Path(__file__).resolve().parents[2]
RULE_NAMES = [rule.name for rule in RULES]
STACKS = ("staging", "prod")


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Plan]:
    return {stack: run_program(stack, program=synthetic_program(stack)) for stack in STACKS}


@pytest.fixture(scope="module")
def synthetic_violations(synthetic: dict[str, Plan]) -> dict[str, list[Violation]]:
    return {stack: check_plan(plan) for stack, plan in synthetic.items()}


def _reported(violations: list[Violation]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for v in violations:
        out[v.resource_name].add(v.rule)
    return out


# --- the stacks as they are --------------------------------------------------------------

def test_stack_plan_has_no_violation(plan: Plan) -> None:
    violations = check_plan(plan)
    assert violations == [], "\n".join(f"{v.rule} {v.resource_name}: {v.message}" for v in violations)


def test_every_aws_resource_of_the_stacks_is_judged_for_tags(plan: Plan) -> None:
    """The tag rule covers every AWS resource: each uses the explicit provider, whose default
    tags carry project, stack and managed-by (point 1 of the issue)."""
    views = views_from_plan(plan)
    aws_views = [v for v in views if v.type.startswith("aws:")]
    assert len(aws_views) > 50
    tag_rule = rule_named("aws-provider-default-tags")
    assert isinstance(tag_rule, ResourceRule)
    for view in aws_views:
        assert tag_rule.applies_to(view.type)
        assert view.provider is not None and view.provider.name == "aws"
        assert list(tag_rule.check(view)) == []
    tags = json.loads(plan.one("pulumi:providers:aws").inputs["defaultTags"])["tags"]
    assert {k: tags[k] for k in ("project", "stack", "managed-by")} == {
        "project": "psychology-api", "stack": plan.stack, "managed-by": "pulumi"}


# --- every rule against bad and good synthetic resources -----------------------------------

def test_every_rule_has_a_bad_case() -> None:
    covered = set().union(*EXPECTED.values(), *EXPECTED_PROD_ONLY.values())
    assert covered == set(RULE_NAMES)
    assert len(RULE_NAMES) == len(set(RULE_NAMES)), "rule names must be unique (they are policy names)"


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_rule_catches_bad_and_passes_good(rule_name: str, stack: str, synthetic: dict[str, Plan],
                                          synthetic_violations: dict[str, list[Violation]]) -> None:
    plan = synthetic[stack]
    reported = {v.resource_name for v in synthetic_violations[stack] if v.rule == rule_name}
    names = {r.name for r in plan.resources}
    expected = {name for name in names if rule_name in expected_rules(stack, name)}
    if stack == "prod":
        assert expected, f"{rule_name} has no bad case"
    assert reported == expected

    rule = rule_named(rule_name)
    good = [r for r in plan.resources if r.name.startswith("good-") and r.custom
            and any(r.type == t or (t.endswith(":") and r.type.startswith(t)) for t in rule.types)]
    assert good, f"{rule_name} has no good resource of its types to pass"
    assert not {r.name for r in good} & reported


@pytest.mark.parametrize("stack", STACKS)
def test_each_bad_resource_breaks_only_its_rule(stack: str, synthetic: dict[str, Plan],
                                                 synthetic_violations: dict[str, list[Violation]]) -> None:
    reported = _reported(synthetic_violations[stack])
    for resource in synthetic[stack].resources:
        assert reported.get(resource.name, set()) == expected_rules(stack, resource.name), resource.name


def test_prod_only_rules_spare_staging(synthetic_violations: dict[str, list[Violation]]) -> None:
    staging = _reported(synthetic_violations["staging"])
    prod = _reported(synthetic_violations["prod"])
    for name, rules in EXPECTED_PROD_ONLY.items():
        assert rules <= prod[name]
        assert not rules & staging.get(name, set())


def test_violations_name_rule_resource_message_and_control(synthetic_violations: dict[str, list[Violation]]) -> None:
    violation = next(v for v in synthetic_violations["prod"] if v.resource_name == "bad-db-force-ssl-off")
    assert violation.to_json() == {
        "rule": "rds-force-ssl", "control": "CKV2_AWS_69", "resource_type": "aws:rds/instance:Instance",
        "resource": "bad-db-force-ssl-off", "urn": violation.urn, "enforcement": "mandatory",
        "message": "parameter group 'lax-pg' sets rds.force_ssl='0'; plain-text connections must be refused (1)"}
    assert violation.urn.startswith("urn:pulumi:prod::psychology-api::")


def test_every_rule_names_a_control() -> None:
    for rule in RULES:
        assert rule.control.startswith(("FSBP ", "CKV")), rule.name
        assert rule.description


# --- rule details ---------------------------------------------------------------------------

def test_user_data_layers_are_decoded() -> None:
    script = "#!/bin/sh\nAPI_TOKEN=abcdefghijklmnop0123\n"
    gzipped = base64.b64encode(gzip.compress(script.encode())).decode()
    assert script in user_data_texts(gzipped)
    assert find_secrets(gzipped) == ["a token, secret or API key assignment on line 2 of decoded layer 1"]


@pytest.mark.parametrize("text", [BENIGN_SCRIPT, BENIGN_CLOUD_CONFIG, "SECRET_ARN=arn:aws:secretsmanager:eu-central-1:1:secret:x\n",
                                  "DB=arn:aws:secretsmanager:eu-central-1:123456789012:secret:psychology-api/prod/db-AbCdEf\n",
                                  "password: ${DB_PASSWORD}\nPASSWORD=$(cat /run/pw)\nlock_passwd: true\n"])
def test_user_data_references_are_not_secrets(text: str) -> None:
    assert find_secrets(text) == []
    assert find_secrets(base64.b64encode(text.encode()).decode()) == []


@pytest.mark.parametrize(("text", "kind"), [
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "an AWS secret access key"),
    ("GITHUB=ghp_" + "a" * 36, "a GitHub token"),
    ("url: postgres://app:s3cr3t-value@db.internal:5432/app", "credentials in a URL"),
    ("bot 123456789:AA" + "b" * 33, "a Telegram bot token"),
])
def test_secret_patterns(text: str, kind: str) -> None:
    findings = find_secrets(text)
    assert any(f.startswith(kind) for f in findings), findings
    assert all("s3cr3t" not in f and "EXAMPLEKEY" not in f for f in findings)  # never the value


def test_tls_allow_list_accepts_every_policy_the_config_allows() -> None:
    assert set(TLS13_POLICIES) <= set(TLS12_POLICIES)
    assert not [p for p in TLS12_POLICIES if "2016-08" in p or "TLS-1-1" in p or "TLS-1-0" in p]


def test_prod_is_known_from_the_environment_tag_too() -> None:
    tagged = ProviderView("pulumi:providers:aws", "aws", {"defaultTags": json.dumps({"tags": {"environment": "prod"}})})
    assert is_prod(ResourceView("aws:lb/loadBalancer:LoadBalancer", "lb", {}, urn="urn:pulumi:blue::p::t::lb",
                                provider=tagged))
    assert is_prod(ResourceView("aws:lb/loadBalancer:LoadBalancer", "lb", {}, urn="urn:pulumi:prod::p::t::lb"))
    assert not is_prod(ResourceView("aws:lb/loadBalancer:LoadBalancer", "lb", {}, urn="urn:pulumi:staging::p::t::lb"))


def test_unknown_values_are_not_violations() -> None:
    """During preview a computed value is unknown; the rules wait for it instead of failing."""
    db = ResourceView("aws:rds/instance:Instance", "db", {"storageEncrypted": True, "kmsKeyId": UNKNOWN})
    assert list(check_rds_encryption(db)) == []
    bucket = ResourceView("aws:s3/bucket:Bucket", "b", {}, urn="urn:b")
    policy = ResourceView("aws:s3/bucketPolicy:BucketPolicy", "p", {"bucket": UNKNOWN, "policy": UNKNOWN},
                          property_dependencies={"bucket": frozenset({"urn:b"})})
    assert list(check_s3_tls_only([bucket, policy])) == []
    assert [m for _, m in check_s3_tls_only([bucket])]  # without any policy it is reported


# --- the pack -------------------------------------------------------------------------------

def test_pack_builds_its_policies_without_the_cli() -> None:
    import policy.__main__ as entry  # importing must not start the analyzer server

    assert [p.name for p in entry.POLICIES] == RULE_NAMES
    for rule, built in zip(RULES, entry.POLICIES, strict=True):
        assert isinstance(built, ResourceValidationPolicy if isinstance(rule, ResourceRule) else StackValidationPolicy)
        assert built.enforcement_level == EnforcementLevel.MANDATORY
        assert rule.control in built.description
    project = (ROOT / "policy" / "PulumiPolicy.yaml").read_text()
    assert "name: python" in project and "virtualenv: ../venv" in project
    assert "PolicyPack(" in (ROOT / "policy" / "__main__.py").read_text()
    assert PACK_NAME.replace("-", "").isalnum()


def _analyzer() -> _PolicyAnalyzerServicer:
    return _PolicyAnalyzerServicer(PACK_NAME, "1.0.0", build_policies(), EnforcementLevel.MANDATORY)


def _provider_message(plan: Plan, resource: PlannedResource) -> Optional[analyzer_pb2.AnalyzerProviderResource]:
    """The resource's provider as the CLI sends it (None for default providers, e.g. random's)."""
    provider = plan.by_urn(str(resource.provider).rsplit("::", 1)[0])
    if provider is None:
        return None
    message = analyzer_pb2.AnalyzerProviderResource(type=provider.type, urn=provider.urn, name=provider.name)
    json_format.ParseDict(provider.inputs, message.properties)
    return message


def test_pack_serves_the_analyzer_protocol_as_the_cli_starts_it() -> None:
    """Start the pack the way the Pulumi CLI's python analyzer plugin does (`python -u -m
    pulumi.policy <engine> <pack dir>` from the pack directory), then talk gRPC to it."""
    import grpc
    from google.protobuf import empty_pb2
    from pulumi.runtime.proto import analyzer_pb2_grpc

    process = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."],
                               cwd=ROOT / "policy", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), process.stderr.read() if process.stderr else ""
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == PACK_NAME
            assert [p.name for p in info.policies] == RULE_NAMES
            assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}
            request = analyzer_pb2.AnalyzeRequest(type="aws:kms/key:Key", name="k",
                                                  urn="urn:pulumi:prod::psychology-api::aws:kms/key:Key::k")
            json_format.ParseDict({"enableKeyRotation": False}, request.properties)
            names = {d.policyName for d in stub.Analyze(request, timeout=30).diagnostics}
            assert names == {"kms-key-rotation", "aws-provider-default-tags"}
    finally:
        process.terminate()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _stack_props(resource: PlannedResource) -> dict:
    """What AnalyzeStack receives: the resource's state (inputs plus computed outputs)."""
    return {**resource.outputs, "id": resource.id}


@pytest.mark.parametrize("stack", STACKS)
def test_policy_sdk_analyzer_reports_what_the_rules_report(stack: str, synthetic: dict[str, Plan],
                                                           synthetic_violations: dict[str, list[Violation]]) -> None:
    """Drive the policy SDK's analyzer servicer (what `pulumi preview --policy-pack` calls over
    gRPC) with the synthetic resources; it must report the same (rule, resource) pairs."""
    plan = synthetic[stack]
    analyzer = _analyzer()
    got: set[tuple[str, str]] = set()
    by_urn = {r.urn: r for r in plan.resources}
    stack_request = analyzer_pb2.AnalyzeStackRequest()
    for resource in plan.resources:
        if not resource.custom or resource.type.startswith("pulumi:providers:"):
            continue
        request = analyzer_pb2.AnalyzeRequest(type=resource.type, urn=resource.urn, name=resource.name,
                                              provider=_provider_message(plan, resource))
        json_format.ParseDict(resource.inputs, request.properties)
        for diagnostic in analyzer.Analyze(request, None).diagnostics:
            assert diagnostic.enforcementLevel == analyzer_pb2.MANDATORY
            got.add((diagnostic.policyName, resource.name))
        item = stack_request.resources.add(type=resource.type, urn=resource.urn, name=resource.name,
                                           provider=_provider_message(plan, resource))
        json_format.ParseDict(_stack_props(resource), item.properties)
    for diagnostic in analyzer.AnalyzeStack(stack_request, None).diagnostics:
        got.add((diagnostic.policyName, by_urn[diagnostic.urn].name))
    assert got == {(v.rule, v.resource_name) for v in synthetic_violations[stack]}


def test_policy_sdk_analyzer_on_the_real_stack_is_clean(prod: Plan) -> None:
    analyzer = _analyzer()
    stack_request = analyzer_pb2.AnalyzeStackRequest()
    for resource in prod.resources:
        if not resource.custom or resource.type.startswith("pulumi:providers:"):
            continue
        request = analyzer_pb2.AnalyzeRequest(type=resource.type, urn=resource.urn, name=resource.name,
                                              provider=_provider_message(prod, resource))
        json_format.ParseDict(resource.inputs, request.properties)
        assert list(analyzer.Analyze(request, None).diagnostics) == [], resource.name
        item = stack_request.resources.add(type=resource.type, urn=resource.urn, name=resource.name,
                                           provider=_provider_message(prod, resource))
        json_format.ParseDict(_stack_props(resource), item.properties)
    assert list(analyzer.AnalyzeStack(stack_request, None).diagnostics) == []


def test_pack_links_resources_by_property_dependency_while_values_are_unknown() -> None:
    """First preview: the VPC id a flow log points at is unknown; the engine's property
    dependencies still tell the pack which VPC it covers."""
    analyzer = _analyzer()
    vpc_urn = "urn:pulumi:prod::psychology-api::aws:ec2/vpc:Vpc::vpc"
    request = analyzer_pb2.AnalyzeStackRequest()
    vpc = request.resources.add(type="aws:ec2/vpc:Vpc", urn=vpc_urn, name="vpc")
    json_format.ParseDict({"cidrBlock": "10.0.0.0/16", "id": UNKNOWN_STRING_VALUE}, vpc.properties)
    flow = request.resources.add(type="aws:ec2/flowLog:FlowLog", urn=vpc_urn.replace("vpc:Vpc::vpc", "flowLog:FlowLog::fl"),
                                 name="fl")
    json_format.ParseDict({"vpcId": UNKNOWN_STRING_VALUE, "trafficType": "ALL"}, flow.properties)
    flow.propertyDependencies["vpcId"].urns.append(vpc_urn)
    names = {d.policyName for d in analyzer.AnalyzeStack(request, None).diagnostics}
    assert "vpc-flow-logs" not in names
    assert "default-security-group-closed" in names  # no DefaultSecurityGroup for this VPC

    del flow.propertyDependencies["vpcId"]
    names = {d.policyName for d in analyzer.AnalyzeStack(request, None).diagnostics}
    assert "vpc-flow-logs" in names


def test_plain_unwraps_policy_sdk_proxies() -> None:
    props = unknown_checking_proxy({"a": UNKNOWN_STRING_VALUE, "b": [1.0, {"c": UNKNOWN_STRING_VALUE}], "d": "x"})
    assert plain(props) == {"a": UNKNOWN, "b": [1, {"c": UNKNOWN}], "d": "x"}


def test_stack_rules_and_resource_rules_are_both_present() -> None:
    assert any(isinstance(r, StackRule) for r in RULES) and any(isinstance(r, ResourceRule) for r in RULES)
    assert evaluate(RULES, []) == []


# --- the offline plan's --policy flag ----------------------------------------------------------

def test_plan_policy_flag_passes_on_prod() -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.plan", "--stack", "prod", "--policy", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["policy"] == {"rules": len(RULES), "violations": [], "mandatory_violations": 0}
    assert "PASS: planned" in result.stderr and "0 mandatory violation(s)" in result.stderr


def test_plan_policy_flag_fails_on_a_violation(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def bad_plan(stack: str, config_file: object = None) -> Plan:
        return run_program(stack, program=synthetic_program(stack))

    monkeypatch.setattr(scripts.plan, "run_program", bad_plan)
    assert scripts.plan.main(["--stack", "prod", "--policy", "--json"]) == 1
    captured = capsys.readouterr()
    violations = json.loads(captured.out)["policy"]["violations"]
    assert {"rule": "rds-force-ssl", "resource": "bad-db-force-ssl-off", "control": "CKV2_AWS_69"}.items() <= next(
        v for v in violations if v["resource"] == "bad-db-force-ssl-off").items()
    assert "FAIL: planned" in captured.err

    assert scripts.plan.main(["--stack", "prod", "--policy"]) == 1
    human = capsys.readouterr().out
    assert "[mandatory] rds-force-ssl  aws:rds/instance:Instance  bad-db-force-ssl-off" in human
    assert "(CKV2_AWS_69)" in human


def test_plan_without_policy_flag_ignores_the_rules(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(scripts.plan, "run_program",
                        lambda stack, config_file=None: run_program(stack, program=synthetic_program(stack)))
    assert scripts.plan.main(["--stack", "staging", "--json"]) == 0
    assert "policy" not in json.loads(capsys.readouterr().out)


# --- docs/policy.md ------------------------------------------------------------------------------

def test_the_policy_page_lists_every_rule() -> None:
    page = (ROOT / "docs" / "policy.md").read_text()
    assert rules_markdown() in page, "regenerate the table: python -m scripts.docs"
    for rule in RULES:
        assert f"`{rule.name}`" in page
